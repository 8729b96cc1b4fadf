"""truncate(): blocks 1..K kept, the rest deleted, heads of the right width, plain forward."""

import pytest
import timm
import torch

from sls_fast.models.adapters import add_adapters, trainable_parameters
from sls_fast.models.families import find_blocks
from sls_fast.models.prune import truncate


pytestmark = pytest.mark.usefixtures("one_thread")


def _n(m):
    return sum(p.numel() for p in m.parameters())


def _swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=2,
                             embed_dim=24, num_heads=(1, 1, 1, 1)).eval()


def test_vit_truncate_matches_first_k_blocks():
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    n0 = _n(m)
    p = truncate(m, 5, num_classes=10).eval()
    assert len(p.blocks) == 5 and len(m.blocks) == 12  # a copy by default
    per_block = _n(m.blocks[0])
    assert _n(p) == n0 - 7 * per_block - (192 * 1000 + 1000) + (192 * 10 + 10)
    assert p(x).shape == (2, 10)
    # forward_features of the pruned model == the full model's block-5 output, final norm applied
    outs = {}
    h = m.blocks[4].register_forward_hook(lambda mod, i, o: outs.setdefault("b5", o))
    m(x)
    h.remove()
    torch.testing.assert_close(p.forward_features(x), m.norm(outs["b5"]), rtol=0, atol=0)
    st = p.sls_state
    assert (st.depth, st.num_blocks, st.num_classes, st.family) == (5, 12, 10, "vit")
    assert st.head_fresh


def test_vit_truncate_keeps_head_when_classes_unchanged():
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=7)
    p = truncate(m, 3)
    torch.testing.assert_close(p.head.weight, m.head.weight)
    assert not p.sls_state.head_fresh
    full = truncate(m, 12)
    assert _n(full) == _n(m)


@pytest.mark.parametrize("depth,stage,kept,width", [
    (3, 1, [2, 1], 48),            # inside stage 2
    (4, 1, [2, 2], 48),            # end of stage 2
    (7, 2, [2, 2, 3], 96),         # inside stage 3
    (11, 3, [2, 2, 6, 1], 192),    # inside stage 4 (last): norm and head kept
])
def test_swin_truncate_cuts_inside_stages(depth, stage, kept, width):
    m = _swin()
    # this small Swin: depths (2, 2, 6, 2), widths 24, 48, 96, 192
    assert [len(s.blocks) for s in m.layers] == [2, 2, 6, 2]
    x = torch.randn(2, 3, 64, 64)
    p = truncate(m, depth, num_classes=5).eval()
    assert [len(s.blocks) for s in p.layers] == kept
    assert len(find_blocks(p)) == depth
    assert p.norm.normalized_shape == (width,)
    assert p.head.fc.in_features == width and p.num_features == width
    assert p(x).shape == (2, 5)
    assert _n(p) < _n(m)
    assert ("norm" in p.sls_state.new_modules) == (stage < 3)
    outs = {}
    blk = find_blocks(m)[depth - 1].module
    h = blk.register_forward_hook(lambda mod, i, o: outs.setdefault("b", o))
    m(x)
    h.remove()
    if stage == 3:  # final norm kept: features equal the full model's block output, normalised
        torch.testing.assert_close(p.forward_features(x), m.norm(outs["b"]), rtol=1e-6, atol=1e-6)


def test_efficientnet_truncate_block_granularity():
    torch.manual_seed(0)
    m = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    blocks = find_blocks(m)
    assert len(blocks) == 16
    p = truncate(m, 6, num_classes=10).eval()
    assert [len(s) for s in p.blocks] == [1, 2, 2, 1]  # lite0 stages (1, 2, 2, 3, 3, 4, 1), cut in stage 4
    assert isinstance(p.conv_head, torch.nn.Identity) and isinstance(p.bn2, torch.nn.Identity)
    assert p.classifier.in_features == 80 and p.num_features == 80
    assert p(x).shape == (2, 10)
    assert _n(p) < 0.05 * _n(m)
    outs = {}
    h = blocks[5].module.register_forward_hook(lambda mod, i, o: outs.setdefault("b", o))
    m(x)
    h.remove()
    torch.testing.assert_close(p.forward_head(p.forward_features(x), pre_logits=True),
                               outs["b"].mean((2, 3)), rtol=1e-5, atol=1e-6)
    full = truncate(m, 16)
    assert _n(full) == _n(m)


def test_convnext_truncate_new_head():
    torch.manual_seed(0)
    m = timm.create_model("convnext_atto", pretrained=False).eval()
    p = truncate(m, 4, num_classes=3).eval()  # atto depths (2, 2, 6, 2): cut in stage 2
    assert [len(s.blocks) for s in p.stages] == [2, 2]
    assert p.head.fc.in_features == 80 and "head" in p.sls_state.new_modules
    assert p(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_truncate_adapted_model_keeps_adapters_trainable():
    torch.manual_seed(0)
    m = add_adapters(timm.create_model("efficientnet_lite0", pretrained=False), "convpass", num_classes=10)
    p = truncate(m, 6)
    assert p.sls_state.adapters.layers == list(range(6))
    c = trainable_parameters(p)
    assert c["trainable"] == c["adapters"] + c["head"] and c["head"] == 80 * 10 + 10
    sw = add_adapters(_swin(), "convpass", num_classes=4)
    q = truncate(sw, 3)
    assert all(pp.requires_grad for pp in q.norm.parameters())  # the new norm trains with the head


def test_truncate_errors():
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    for bad in (0, 13):
        with pytest.raises(ValueError, match="depth must be in 1..12"):
            truncate(m, bad)
    with pytest.raises(TypeError):
        truncate(m, 2.0)
    with pytest.raises(TypeError):
        truncate("model", 2)
