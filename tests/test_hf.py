"""transformers ViT as a family: one-pass class-token features equal to the hidden states,
truncation to a working classifier, LoRA, artifacts, and loading from a local folder."""
import pytest
import torch

import sls_fast
from sls_fast.families import family_of, find_blocks

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def _hf(seed=0, labels=5):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(hidden_size=48, num_hidden_layers=4, num_attention_heads=3,
                                 intermediate_size=96, image_size=32, patch_size=8,
                                 num_labels=labels)
    return transformers.ViTForImageClassification(cfg).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _data(x):
    return torch.utils.data.TensorDataset(x, torch.arange(len(x)) % 3)


def test_features_equal_hidden_states_in_one_pass_stopping_early(x):
    m = _hf()
    assert family_of(m).name == "hf-vit"
    names = [b.name for b in find_blocks(m)]
    assert len(names) == 4 and all(m.get_submodule(n) is b.module for n, b in zip(names, find_blocks(m)))
    with torch.no_grad():
        hs = m(x, output_hidden_states=True).hidden_states
    f = sls_fast.extract_features(m, _data(x), progress=False)
    for i in range(4):
        err = (torch.as_tensor(f[i]) - hs[i + 1][:, 0]).abs().max().item()
        assert err <= 1e-5, (i, err)
    calls = []
    last = find_blocks(m)[3].module.register_forward_hook(lambda *a: calls.append(1))
    fin = m.vit.layernorm.register_forward_hook(lambda *a: calls.append(2))
    try:
        g = sls_fast.extract_features(m, _data(x), layers=names[:2], progress=False)
    finally:
        last.remove(), fin.remove()
    assert calls == [], "the forward ran past the last requested layer"
    assert torch.equal(torch.as_tensor(g[1]), torch.as_tensor(f[1]))


def test_truncate_slices_layers_config_and_head(x):
    m = _hf()
    with torch.no_grad():
        hs = m(x, output_hidden_states=True).hidden_states
        want = m.classifier(m.vit.layernorm(hs[2])[:, 0])
    p = sls_fast.truncate(m, 2)
    assert len(find_blocks(p)) == 2 and p.config.num_hidden_layers == 2
    assert len(find_blocks(m)) == 4 and m.config.num_hidden_layers == 4  # a copy was cut
    with torch.no_grad():
        assert (p(x).logits - want).abs().max().item() <= 1e-5
    q = sls_fast.truncate(m, 3, num_classes=7)
    assert q(x).logits.shape == (6, 7) and q.config.num_labels == 7 and q.sls_state.head_fresh
    acc = sls_fast.evaluate(q, _data(x), progress=False)
    assert acc * 6 == round(acc * 6)
    with pytest.raises(ValueError, match="depth must be in 1..4"):
        sls_fast.truncate(m, 5)


def _perturb_trainable(model, seed, std=0.05):
    """Move every trainable tensor off its (identity) start, reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p_ in model.parameters():
            if p_.requires_grad:
                p_.add_(torch.randn(p_.shape, generator=g) * std)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_hf_lora_artifact_and_peft_format(tmp_path, x):
    m = sls_fast.add_adapters(_hf(), "lora", rank=2, alpha=4, num_classes=3)
    assert "vit.layers.0.attention.q_proj.lora_A" in sls_fast.adapters.adapter_modules(m) or \
        "vit.encoder.layer.0.attention.attention.query.lora_A" in sls_fast.adapters.adapter_modules(m)
    _perturb_trainable(m, 4)
    p = sls_fast.truncate(m, 2)
    with torch.no_grad():
        ref = p(x).logits
    sls_fast.save_pruned(tmp_path / "a.safetensors", p, 2)
    q = sls_fast.load_pruned(tmp_path / "a.safetensors", _hf())
    with torch.no_grad():
        assert torch.equal(q(x).logits, ref)
    sls_fast.save_pruned(tmp_path / "peft", p, 2, format="peft")
    r = peft.PeftModel.from_pretrained(sls_fast.truncate(_hf(), 2, num_classes=3),
                                       str(tmp_path / "peft")).eval()
    with torch.no_grad():
        assert torch.equal(r(x).logits, ref)
    merged = sls_fast.merge_adapters(p)
    with torch.no_grad():
        assert (merged(x).logits - ref).abs().max().item() <= 1e-5


def test_load_from_local_folder_only(tmp_path, x):
    m = _hf()
    m.save_pretrained(tmp_path / "tiny")
    got = sls_fast.models.load(f"hf:{tmp_path / 'tiny'}")
    with torch.no_grad():
        assert torch.equal(got(x).logits, m(x).logits)
    assert sls_fast.models.load(f"hf:{tmp_path / 'tiny'}", num_classes=2)(x).logits.shape == (6, 2)
    (tmp_path / "tiny" / "preprocessor_config.json").write_text(
        '{"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}')
    cfg = sls_fast.data.data_config(sls_fast.models.load(f"hf:{tmp_path / 'tiny'}"))
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == (0.1, 0.2, 0.3)
    assert cfg["std"] == (0.4, 0.5, 0.6)
    with pytest.raises(ValueError, match="local folder"):
        sls_fast.models.load("hf:google/vit-base-patch16-224-in21k")


@pytest.mark.parametrize("kind", ["convpass", "repadapter"])
def test_hf_convpass_and_repadapter(tmp_path, x, kind):
    import pickle

    if not hasattr(_hf().vit, "layers"):  # transformers 4.x: vit.encoder.layer
        pytest.skip("Convpass / RepAdapter need transformers 5's ViTLayer")
    base = _hf(labels=3)
    m = sls_fast.add_adapters(_hf(labels=3), kind, dim=4, scale=0.5)
    with torch.no_grad():
        assert (m(x).logits - base(x).logits).abs().max().item() <= 1e-6  # identity at start
    _perturb_trainable(m, 5)
    p = sls_fast.truncate(m, 3)
    with torch.no_grad():
        ref = p(x).logits
        assert (ref - base(x).logits[:, :3]).abs().max().item() > 1e-3  # the adapters act
    assert torch.equal(pickle.loads(pickle.dumps(p))(x).logits, ref)
    sls_fast.save_pruned(tmp_path / "a.safetensors", p, 3)
    q = sls_fast.load_pruned(tmp_path / "a.safetensors", _hf(labels=3))
    with torch.no_grad():
        assert torch.equal(q(x).logits, ref)
    if kind == "repadapter":
        merged = sls_fast.merge_adapters(p)
        assert not sls_fast.adapters.adapter_modules(merged)
        with torch.no_grad():
            assert (merged(x).logits - ref).abs().max().item() <= 1e-5
