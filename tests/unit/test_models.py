"""sls_fast.models: offline loading, the EfficientNet-Lite0 weight mapping, strict checkpoints."""
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from sls_fast import models
from sls_fast.models.zoo import (DEFAULT_MODEL, RandomWeightsWarning, _map_in_order,
                             efficientnet_lite0_state_dict, efficientnet_lite0_weights_path)

# ImageNet-1k class indices
TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967


@pytest.fixture(scope="module")
def default_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)  # the default must not be random
        return models.load()


def _photo(img, model):
    """HWC uint8 -> [1, 3, 224, 224], resized bicubically, normalised with the model's config."""
    from sls_fast.io.datasets import data_config

    cfg = data_config(model)
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=cfg["input_size"][-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_default_name():
    assert DEFAULT_MODEL == "efficientnet_lite0"


def test_default_model_classifies_bundled_photos(default_model):
    from skimage import data

    with torch.inference_mode():
        cat = default_model(_photo(data.chelsea(), default_model)).softmax(-1)[0]
        coffee = default_model(_photo(data.coffee(), default_model)).softmax(-1)[0]
    assert int(cat.argmax()) in (EGYPTIAN_CAT, TABBY), cat.topk(3)
    assert cat[[TABBY, TIGER_CAT, EGYPTIAN_CAT]].sum() > 0.8
    assert int(coffee.argmax()) == ESPRESSO, coffee.topk(3)


def test_weight_mapping_is_complete_and_exact():
    target = timm.create_model(DEFAULT_MODEL, pretrained=False)
    mapped = efficientnet_lite0_state_dict(target)
    raw = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert list(mapped) == list(target.state_dict())
    assert len(mapped) == len(raw) == 296
    for (rk, rv), (mk, mv) in zip(raw.items(), mapped.items()):
        assert torch.equal(rv, mv), (rk, mk)
    assert target.load_state_dict(mapped, strict=True)  # all keys matched
    # a few anchors of the order-based mapping
    assert torch.equal(mapped["conv_stem.weight"], raw["_conv_stem.weight"])
    assert torch.equal(mapped["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])
    assert torch.equal(mapped["classifier.bias"], raw["_fc.bias"])


def test_weight_mapping_fails_loudly():
    target = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        _map_in_order(OrderedDict(x=torch.zeros(3, 2), y=torch.zeros(4)), target, "t")
    with pytest.raises(ValueError, match="1 tensors"):
        _map_in_order(OrderedDict(x=torch.zeros(2, 3)), target, "t")
    with pytest.raises(ValueError, match="kinds"):
        _map_in_order(OrderedDict(**{"p.weight": torch.zeros(2, 3), "p.running_var": torch.zeros(4)}),
                      OrderedDict(**{"q.weight": torch.zeros(2, 3), "q.bias": torch.zeros(4)}), "t")


def test_default_with_new_head(default_model):
    m = models.load(num_classes=10)
    assert m.num_classes == 10 and m.get_classifier().out_features == 10
    # the backbone is the pretrained one
    assert torch.equal(m.conv_stem.weight, default_model.conv_stem.weight)
    with pytest.warns(RandomWeightsWarning):
        r = models.load(pretrained_default=False)
    assert not torch.equal(r.conv_stem.weight, default_model.conv_stem.weight)


def test_random_model_warns():
    with pytest.warns(RandomWeightsWarning, match="no signal"):
        m = models.load("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5)
    assert m.num_classes == 5 and not m.training
    with pytest.raises(ValueError, match="unknown model"):
        models.load("no_such_model_xyz")
    with pytest.raises(ValueError, match="never downloads"):
        models.load("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k")


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_checkpoint_roundtrip(tmp_path, ext):
    torch.manual_seed(1)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=7).eval()
    path = tmp_path / f"vit.{ext}"
    if ext == "pth":
        torch.save({"model": src.state_dict()}, path)  # wrapped, as training scripts save it
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        m = models.load("vit_tiny_patch16_224", checkpoint=path, img_size=32, depth=2)
    assert m.num_classes == 7  # the head takes the checkpoint's width
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(m(x), src(x), atol=1e-6)
    m3 = models.load("vit_tiny_patch16_224", checkpoint=path, img_size=32, depth=2, num_classes=3)
    assert m3.num_classes == 3 and torch.equal(m3.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(ValueError, match=r"does not match vit_small.*cls_token"):
        models.load("vit_small_patch16_224", checkpoint=path, img_size=32, depth=2)
    sd = src.state_dict()
    del sd["blocks.1.attn.qkv.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing.*blocks\.1\.attn\.qkv\.weight.*unexpected.*extra\.weight"):
        models.load("vit_tiny_patch16_224", checkpoint=path, img_size=32, depth=2)
    with pytest.raises(ValueError, match="does not exist"):
        models.load("vit_tiny_patch16_224", checkpoint=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"not a readable weights file .*: it is not a torch file"):
        models.load("vit_tiny_patch16_224", checkpoint=tmp_path / "junk.pth", img_size=32, depth=2)
    np.savez(tmp_path / "w.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="does not match"):
        models.load("vit_tiny_patch16_224", checkpoint=tmp_path / "w.npz", img_size=32, depth=2)
    with pytest.raises(ValueError, match="load_pretrained"):
        models.load("resnet18", checkpoint=tmp_path / "w.npz")
