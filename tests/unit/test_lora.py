"""LoRA through peft on timm ViT / Swin: adapt, score, cut, artifact round trip, exact merge,
peft's folder format loaded by peft, and a model the user wrapped with peft."""
import copy
import json
import os

import numpy as np
import pytest
import timm
import torch

import sls_fast
from sls_fast.models.adapters import adapter_modules, trainable_parameters

peft = pytest.importorskip("peft")


def _vit(seed=0, classes=10):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=4,
                             num_classes=classes).eval()


def _perturb(model, seed=3):
    """LoRA starts as an exact zero update; give lora_A / lora_B and the head trained-like values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_lora_adapts_frozen_backbone_and_starts_equal(x):
    base = _vit()
    m = sls_fast.add_adapters(_vit(), "lora", rank=4, lora_alpha=8, num_classes=10)
    with torch.no_grad():
        base.head.load_state_dict(m.head.state_dict())
        assert torch.equal(m(x), base(x))  # lora_B = 0
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "blocks.3.mlp.fc2.lora_B.default.weight"} <= trainable
    counts = trainable_parameters(m)
    # 4 blocks x 4 linears, each r * (in + out): qkv 192->576, proj 192->192, fc1 192->768, fc2 768->192
    assert counts["adapters"] == 4 * 4 * ((192 + 576) + (192 + 192) + (192 + 768) + (768 + 192))
    assert counts["trainable"] == counts["adapters"] + counts["head"]
    assert sls_fast.models.state.base_checksum(m) == sls_fast.models.state.base_checksum(base)


def test_lora_targets_layers_and_errors():
    m = sls_fast.add_adapters(_vit(), "lora", dim=2, layers=[1, 3], targets=["attn.qkv"])
    assert sorted(adapter_modules(m)) == ["blocks.1.attn.qkv.lora_A", "blocks.1.attn.qkv.lora_B",
                                          "blocks.3.attn.qkv.lora_A", "blocks.3.attn.qkv.lora_B"]
    with pytest.raises(ValueError, match="does not exist"):
        sls_fast.add_adapters(_vit(), "lora", targets=["attn.nope"])
    with pytest.raises(TypeError, match="nn.Linear"):
        sls_fast.add_adapters(_vit(), "lora", targets=["attn"])
    with pytest.raises(ValueError, match="LoRA option"):
        sls_fast.add_adapters(_vit(), "convpass", targets=["attn.qkv"])
    r18 = timm.create_model("resnet18", pretrained=False)
    with pytest.raises(ValueError, match="lora adapters do not exist for resnet"):
        sls_fast.add_adapters(r18, "lora")


def test_lora_truncate_artifact_merge_and_peft_format(tmp_path, x):
    m = sls_fast.add_adapters(_vit(), "lora", rank=4, lora_alpha=8, num_classes=10)
    _perturb(m)
    p = sls_fast.truncate(m, 2)
    assert len(p.blocks) == 2 and p.sls_state.adapters.layers == [0, 1]
    # the kept blocks' LoRA is the trained one
    for k, v in p.state_dict().items():
        if ".lora_" in k:
            assert torch.equal(v, m.state_dict()[k])
    with torch.no_grad():
        ref = p(x)

    # our artifact: index + kept blocks' LoRA + head, nothing else
    path = tmp_path / "task.safetensors"
    sls_fast.save_pruned(path, p, 2)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert keys == {k for k in p.state_dict() if ".lora_" in k or k.startswith("head.")}
    assert all(k.startswith(("blocks.0.", "blocks.1.", "head.")) for k in keys)
    q = sls_fast.load_pruned(path, _vit())
    with torch.no_grad():
        assert torch.equal(q(x), ref)
    rep = sls_fast.storage_report(path, p, m)
    assert rep["ratio_pruned"] < 0.05 and rep["ratio_full"] < rep["ratio_pruned"]

    # exact merge through peft: no LoRA left, the base layer names back
    merged = sls_fast.merge_adapters(copy.deepcopy(p))
    assert not adapter_modules(merged)
    assert not any(".lora_" in k or "base_layer" in k for k in merged.state_dict())
    assert set(merged.state_dict()) == set(sls_fast.truncate(_vit(), 2).state_dict())
    with torch.no_grad():
        err = (merged(x) - ref).abs().max().item()
    assert err < 1e-5, err
    assert merged.sls_state.adapters.merged

    # peft's own format, loaded by peft onto a cut fresh base
    folder = tmp_path / "peft"
    info = sls_fast.save_pruned(folder, p, 2, format="peft")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert all(t.startswith(("blocks.0.", "blocks.1.")) for t in cfg["target_modules"])
    assert sls_fast.io.artifacts.read_pruned_metadata(folder / "adapter_model.safetensors")["depth"] == 2
    assert any(f.endswith("adapter_model.safetensors") for f in info["files"])
    loaded = peft.PeftModel.from_pretrained(sls_fast.truncate(_vit(classes=10), 2), str(folder)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    with pytest.raises(ValueError, match="format='peft'"):
        sls_fast.save_pruned(tmp_path / "cp", sls_fast.truncate(
            sls_fast.add_adapters(_vit(), "convpass"), 2), 2, format="peft")


def test_user_wrapped_peft_model_taken_as_is(tmp_path, x):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc1"], modules_to_save=["head"])
    u = peft.get_peft_model(_vit(), cfg)
    _perturb(u)
    with torch.no_grad():
        ref_full = u(x)
    assert sls_fast.models.families.family_of(u).name == "vit"
    assert len(sls_fast.models.families.find_blocks(u)) == 4
    data = torch.utils.data.TensorDataset(x, torch.arange(len(x)))
    through = sls_fast.extract_features(u, data, progress=False)
    inside = sls_fast.extract_features(u.get_base_model(), data, progress=False)
    assert all(torch.equal(torch.as_tensor(through[i]), torch.as_tensor(inside[i])) for i in range(4))
    with pytest.raises(ValueError, match="already wrapped by peft"):
        sls_fast.add_adapters(u, "lora")
    full = sls_fast.truncate(u, 4)
    with torch.no_grad():
        assert torch.equal(full(x), ref_full)
    assert full.sls_state.adapters.targets == ["attn.qkv", "mlp.fc1"]
    p = sls_fast.truncate(u, 3)
    with torch.no_grad():
        ref = p(x)
    sls_fast.save_pruned(tmp_path / "t.safetensors", p, 3)
    q = sls_fast.load_pruned(tmp_path / "t.safetensors", _vit())
    with torch.no_grad():
        assert torch.equal(q(x), ref)
    sls_fast.save_pruned(tmp_path / "w.safetensors", u, 4)  # the user's wrapper is left as it is
    assert type(u.base_model.model.head).__name__ == "ModulesToSaveWrapper"
    with torch.no_grad():
        assert torch.equal(u(x), ref_full)
    two = peft.get_peft_model(_vit(), peft.LoraConfig(r=2, target_modules=["qkv"]),
                              adapter_name="other")
    with pytest.raises(ValueError, match="named 'other'"):
        sls_fast.truncate(two, 2)


@pytest.mark.filterwarnings("ignore:the last layer's score")
def test_lora_scoring_and_swin(x):
    m = sls_fast.add_adapters(_vit(), "lora", rank=2, num_classes=10)
    _perturb(m)
    rng = np.random.default_rng(0)
    data = torch.utils.data.TensorDataset(torch.randn(40, 3, 32, 32), torch.tensor(rng.integers(0, 4, 40)))
    rep = sls_fast.score_layers(m, data, max_iter=250, progress=False, perplexity=5.0)
    assert len(rep.scores["silhouette"]) == 4
    sw = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56,
                           embed_dim=24, depths=(1, 2), num_heads=(1, 2), num_classes=5).eval()
    xs = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        base = sw(xs)
    sls_fast.add_adapters(sw, "lora", rank=2)
    with torch.no_grad():
        assert torch.equal(sw(xs), base)
    assert "layers.1.blocks.1.attn.qkv.lora_A" in adapter_modules(sw)
    _perturb(sw)
    cut = sls_fast.truncate(sw, 2, num_classes=5)
    assert cut.sls_state.adapters.layers == [0, 1]
    assert "layers.1.blocks.0.mlp.fc2.lora_B" in adapter_modules(cut)
    assert cut(xs).shape == (2, 5)


@pytest.mark.slow
def test_core_import_needs_neither_peft_nor_transformers(tmp_path):
    import subprocess
    import sys

    code = ("import sys, sls_fast, timm; sls_fast.add_adapters(timm.create_model("
            "'vit_tiny_patch16_224', pretrained=False, img_size=32, depth=1), 'convpass'); "
            "print('peft' in sys.modules, 'transformers' in sys.modules)")
    # cwd outside the checkout: there `import sls_fast` would find the unbuilt sources
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_old_alpha_keyword_still_works_with_a_deprecation_warning():
    """``alpha=`` was LoRA's alpha in add_adapters; it is lora_alpha= now (alpha is SLS's
    threshold elsewhere) and the old name is accepted for one version."""
    with pytest.warns(DeprecationWarning, match="lora_alpha"):
        old = sls_fast.add_adapters(_vit(), "lora", rank=4, alpha=8, num_classes=10)
    new = sls_fast.add_adapters(_vit(), "lora", rank=4, lora_alpha=8, num_classes=10)
    assert old.sls_state.adapters == new.sls_state.adapters
    assert old.sls_state.adapters.scale == 8.0


def test_train_from_scratch_resets_lora(x):
    """TFS on a LoRA model re-initialises its LoRA layers as peft creates them (B zero: the
    model computes its base again) before training; it failed on peft's ModuleDicts."""
    from sls_fast.models.petl.lora import lora_layers, reset_lora
    from sls_fast.models.train import finetune

    m = sls_fast.add_adapters(_vit(), "lora", num_classes=3)
    _perturb(m)
    with torch.no_grad():
        base = _vit().forward_features(x)  # the same backbone without LoRA
        assert not torch.allclose(m.eval().forward_features(x), base, atol=1e-5)
        assert reset_lora(m) == len(lora_layers(m)) > 0
        torch.testing.assert_close(m.forward_features(x), base, atol=1e-6, rtol=1e-6)
    data = torch.utils.data.TensorDataset(x, torch.arange(len(x)) % 3)
    fit = finetune(m, data, data, strategy="TFS", epochs=1, batch_size=4, progress=False)
    assert fit["strategy"] == "TFS" and len(fit["history"]) == 1
