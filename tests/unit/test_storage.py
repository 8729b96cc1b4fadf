"""Per-task artifacts: adapters of kept blocks + head + metadata; exact reload; refusal of other bases."""
import timm
import pytest
import torch

from sls_fast.models.adapters import add_adapters
from sls_fast.models.prune import truncate
from sls_fast.io.artifacts import load_pruned, read_pruned_metadata, save_pruned, storage_report


pytestmark = pytest.mark.usefixtures("one_thread")


def _vit(seed=0, name="vit_tiny_patch16_224"):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, img_size=32)


def _train_like(model, seed=1):
    """Stand-in for training: random values in every trainable tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_vit_tiny_cut_to_5_convpass_artifact(tmp_path):
    full = _vit()
    n_full = sum(p.numel() for p in full.parameters())
    m = add_adapters(_vit(), "convpass", dim=8, num_classes=10)
    pruned = truncate(_train_like(m), 5).eval()
    x = torch.randn(3, 3, 32, 32)
    y = pruned(x)
    path = tmp_path / "task.safetensors"
    info = save_pruned(path, pruned, 5, dataset="digits")
    assert info["depth"] == 5 and info["num_classes"] == 10 and info["base_model"] == "vit_tiny_patch16_224"
    assert info["adapters"]["kind"] == "convpass" and info["adapters"]["layers"] == [0, 1, 2, 3, 4]
    assert read_pruned_metadata(path)["meta"] == {"dataset": "digits"}
    rep = storage_report(path, pruned, full)
    assert rep["full_model_bytes"] == 4 * n_full
    assert rep["ratio_full"] < 0.05 and rep["ratio_pruned"] < 0.05
    q = load_pruned(path, _vit()).eval()
    assert len(q.blocks) == 5
    assert sum(p.numel() for p in q.parameters()) == sum(p.numel() for p in pruned.parameters())
    torch.testing.assert_close(q(x), y, rtol=0, atol=1e-6)


def test_refuses_other_weights_and_architectures(tmp_path):
    pruned = truncate(_train_like(add_adapters(_vit(), "repadapter", num_classes=10)), 4)
    path = tmp_path / "a.safetensors"
    save_pruned(path, pruned, 4)
    with pytest.raises(ValueError, match="frozen weights differ"):
        load_pruned(path, _vit(seed=123))
    with pytest.raises(ValueError, match="base model"):
        load_pruned(path, _vit(name="deit_tiny_patch16_224"))
    with pytest.raises(ValueError, match="base model"):
        load_pruned(path, timm.create_model("efficientnet_lite0", pretrained=False))
    with pytest.raises(ValueError, match="fresh base model"):
        load_pruned(path, add_adapters(_vit(), "convpass"))
    with pytest.raises(ValueError, match="runs 4 blocks"):
        save_pruned(path, pruned, 5)
    with pytest.raises(ValueError, match="not an sls_fast artifact"):
        from safetensors.torch import save_file
        save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
        load_pruned(tmp_path / "plain.safetensors", _vit())


@pytest.mark.parametrize("name,kw,depth,size", [
    ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=2, embed_dim=24, num_heads=(1, 1, 1, 1)), 3, 64),
    ("efficientnet_lite0", {}, 6, 64),
    ("convnext_atto", {}, 4, 64),
])
def test_round_trip_other_families(tmp_path, name, kw, depth, size):
    def make():
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, **kw)

    pruned = truncate(_train_like(add_adapters(make(), "convpass", num_classes=7)), depth).eval()
    x = torch.randn(2, 3, size, size)
    y = pruned(x)
    path = tmp_path / "t.safetensors"
    save_pruned(path, pruned, depth)
    q = load_pruned(path, make()).eval()
    torch.testing.assert_close(q(x), y, rtol=0, atol=1e-6)
    assert storage_report(path, pruned)["ratio_pruned"] < 0.2
