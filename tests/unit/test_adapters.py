"""Adapters: Convpass / RepAdapter start as the identity, RepAdapter merges exactly, conv Convpass,
frozen backbone (batch-norm statistics included)."""
import copy

import pytest
import timm
import torch

from sls_fast.models.adapters import (
    Convpass,
    ConvpassConv,
    RepAdapter,
    adapter_modules,
    add_adapters,
    merge_adapters,
    trainable_parameters,
)
from sls_fast.models.families import find_blocks


pytestmark = pytest.mark.usefixtures("one_thread")


def _vit(**kw):
    torch.manual_seed(0)
    kw.setdefault("img_size", 32)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()


def _swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=2,
                             embed_dim=24, num_heads=(1, 1, 1, 1)).eval()


def _randomize(model, std=0.05):
    """Give every adapter non-trivial weights (they start as an exact identity)."""
    with torch.no_grad():
        for a in adapter_modules(model).values():
            for p in a.parameters():
                p.normal_(0, std)


@pytest.mark.parametrize("make,size", [(_vit, 32), (lambda: _vit(img_size=(32, 48)), None),
                                       (lambda: _vit(reg_tokens=3), 32), (_swin, 64)])
def test_convpass_identity_at_init(make, size):
    base = make()
    hw = (32, 48) if size is None else (size, size)
    x = torch.randn(2, 3, *hw)
    ref = base(x)
    m = add_adapters(copy.deepcopy(base), "convpass", dim=8, scale=0.5).eval()
    assert len(adapter_modules(m)) == 2 * len(find_blocks(m))
    torch.testing.assert_close(m(x), ref, rtol=0, atol=0)
    _randomize(m)
    y = m(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert (y - ref).abs().max() > 1e-4  # the adapters now do something


def test_convpass_token_layout_matches_reference():
    """Patch tokens go through the 3x3 conv on the (H, W) grid, each prefix token alone as a 1x1 map."""
    torch.manual_seed(0)
    a = Convpass(16, dim=4, num_prefix_tokens=2, grid_size=(2, 3), dropout=0.0)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    x = torch.randn(3, 2 + 6, 16)
    h = a.act(a.down(x))
    grid = a.conv(h[:, 2:].reshape(3, 2, 3, 4).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(3, 6, 4)
    pre = torch.nn.functional.linear(h[:, :2], a.conv.weight[:, :, 1, 1], a.conv.bias)
    want = a.up(a.act(torch.cat([pre, grid], 1)))
    torch.testing.assert_close(a(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="grid"):
        a(torch.randn(1, 2 + 7, 16))


@pytest.mark.parametrize("make,size", [(_vit, 32), (_swin, 64)])
def test_repadapter_identity_merge_exact(make, size):
    base = make()
    n_base = sum(p.numel() for p in base.parameters())
    x = torch.randn(2, 3, size, size)
    ref = base(x)
    m = add_adapters(copy.deepcopy(base), "repadapter", dim=8, scale=2.0).eval()
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)  # x + 0, other memory layout
    _randomize(m, 0.1)
    y = m(x)
    assert (y - ref).abs().max() > 1e-3
    merge_adapters(m)
    assert not adapter_modules(m)
    assert sum(p.numel() for p in m.parameters()) == n_base
    assert [type(b.module) for b in find_blocks(m)] == [type(b.module) for b in find_blocks(base)]
    torch.testing.assert_close(m(x), y, rtol=1e-4, atol=1e-4)
    assert set(m.state_dict()) == set(base.state_dict())


def test_repadapter_grouped_affine():
    torch.manual_seed(0)
    a = RepAdapter(12, dim=8, groups=2, scale=0.7).eval()
    with torch.no_grad():
        a.conv_B.weight.normal_()
        a.conv_B.bias.normal_()
    x = torch.randn(2, 5, 12)
    M, c = a.as_affine()
    torch.testing.assert_close(a(x).double(), x.double() @ M.T + c, rtol=1e-5, atol=1e-5)


def test_conv_convpass_efficientnet_starts_equal_and_is_parallel():
    torch.manual_seed(0)
    base = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = base(x)
    m = add_adapters(copy.deepcopy(base), "convpass", dim=8, scale=0.5).eval()
    blocks = find_blocks(m)
    assert len(blocks) == 16
    assert all(isinstance(b.module.adapter, ConvpassConv) for b in blocks)
    strides = [b.module.adapter.stride for b in blocks]
    assert sorted(set(strides)) == [1, 2] and strides.count(2) == 4
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    _randomize(m)
    assert torch.isfinite(m(x)).all()
    # block(x) + s * bottleneck(x): forward() is the bare block (hooks run only through __call__)
    b = blocks[3].module
    a = b.adapter
    assert type(b).__module__.startswith("timm.") and a.scale == 0.5
    xi = torch.randn(1, a.in_channels, 16, 16)
    bottleneck = a.up(a.act(a.conv(a.act(a.down(xi)))))
    torch.testing.assert_close(b(xi), b.forward(xi) + 0.5 * bottleneck)


def test_conv_convpass_convnext():
    torch.manual_seed(0)
    base = timm.create_model("convnext_atto", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = base(x)
    m = add_adapters(copy.deepcopy(base), "convpass").eval()
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_only_adapters_and_head_train_and_bn_frozen():
    torch.manual_seed(0)
    m = timm.create_model("efficientnet_lite0", pretrained=False)
    add_adapters(m, "convpass", num_classes=10)
    counts = trainable_parameters(m)
    assert counts["trainable"] == counts["adapters"] + counts["head"]
    assert counts["head"] == 1280 * 10 + 10
    assert 20_000 < counts["adapters"] < 60_000
    names = {n.split(".adapter")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert names <= {b.name for b in find_blocks(m)} | {"classifier.weight", "classifier.bias"}
    stats = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    assert stats
    m.train()
    m(torch.randn(4, 3, 32, 32)).sum().backward()
    for k, v in m.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, stats[k], rtol=0, atol=0)
    assert all(p.grad is None for n, p in m.named_parameters() if not p.requires_grad)


def test_layers_subset_and_errors():
    m = add_adapters(_vit(), "convpass", layers=[0, -1])
    assert sorted(adapter_modules(m)) == ["blocks.0.adapter_attn", "blocks.0.adapter_mlp",
                                          "blocks.11.adapter_attn", "blocks.11.adapter_mlp"]
    with pytest.raises(ValueError, match="already"):
        add_adapters(m, "convpass")
    with pytest.raises(ValueError, match="kind"):
        add_adapters(_vit(), "ia3")
    with pytest.raises(ValueError, match="out of range"):
        add_adapters(_vit(), "convpass", layers=[12])
    with pytest.raises(ValueError, match="only RepAdapter"):
        merge_adapters(m)
    with pytest.raises(ValueError, match="no adapters"):
        merge_adapters(_vit())
    eff = timm.create_model("efficientnet_lite0", pretrained=False)
    with pytest.raises(ValueError, match="do not exist for efficientnet"):
        add_adapters(eff, "repadapter")


def test_new_adapters_follow_the_models_mode():
    m = add_adapters(_vit(), "convpass")  # _vit() is in eval mode
    assert not any(a.training for a in adapter_modules(m).values())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)  # no dropout at inference
    t = add_adapters(_vit().train(), "repadapter")
    assert all(a.training for a in adapter_modules(t).values())
