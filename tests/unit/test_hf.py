"""The transformers families (ViT, DINOv2, CLIP vision): one-pass class-token features equal to
the hidden states, truncation to a working classifier with each family's head rule, adapters
(LoRA, Convpass, RepAdapter with its merge), artifacts, and loading from a local folder."""
import pickle

import pytest
import torch

import sls_fast
from sls_fast.models.families import family_of, find_blocks

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=3, image_size=32, patch_size=8)


def _hf(seed=0, labels=5):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(intermediate_size=96, num_labels=labels, **TINY)
    return transformers.ViTForImageClassification(cfg).eval()


def _dinov2(seed=0, labels=5, **kw):
    torch.manual_seed(seed)
    cfg = transformers.Dinov2Config(mlp_ratio=2, num_labels=labels, **TINY, **kw)
    return transformers.Dinov2ForImageClassification(cfg).eval()


def _clip_config(labels=5):
    return transformers.CLIPConfig(
        vision_config=dict(intermediate_size=96, **TINY), num_labels=labels,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2))


def _clip(seed=0, labels=5):
    torch.manual_seed(seed)
    return transformers.CLIPForImageClassification(_clip_config(labels)).eval()


def _clip_vision(seed=0):
    torch.manual_seed(seed)
    return transformers.CLIPVisionModel(_clip_config().vision_config).eval()


# family, builder, final norm (must not run when extraction stops early), and the head rule:
# the logits of the model cut to K blocks, from the full model's hidden_states[K]
def _vit_head(m, h):
    return m.classifier(m.vit.layernorm(h)[:, 0])


def _dinov2_head(m, h):
    h = m.dinov2.layernorm(h)
    return m.classifier(torch.cat([h[:, 0], h[:, 1:].mean(dim=1)], dim=1))


def _clip_head(m, h):
    return m.classifier(h[:, 1:].mean(dim=1))


FAMILIES = {
    "vit": ("hf-vit", _hf, "vit.layernorm", _vit_head),
    "dinov2": ("hf-dinov2", _dinov2, "dinov2.layernorm", _dinov2_head),
    "clip": ("hf-clip", _clip, "vision_model.post_layernorm", _clip_head),
    "clip-vision": ("hf-clip", _clip_vision, "post_layernorm", None),
}


@pytest.fixture(scope="module")
def x():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _data(x):
    return torch.utils.data.TensorDataset(x, torch.arange(len(x)) % 3)


def _out(model, x):
    """Logits of a classifier, the last hidden state of a head-less model."""
    o = model(x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


@pytest.mark.parametrize("fam", FAMILIES)
def test_features_equal_hidden_states_in_one_pass_stopping_early(x, fam):
    name, build, final_norm, _ = FAMILIES[fam]
    m = build()
    assert family_of(m).name == name
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
    fin = m.get_submodule(final_norm).register_forward_hook(lambda *a: calls.append(2))
    try:
        g = sls_fast.extract_features(m, _data(x), layers=names[:2], progress=False)
    finally:
        last.remove(), fin.remove()
    assert calls == [], "the forward ran past the last requested layer"
    assert torch.equal(torch.as_tensor(g[1]), torch.as_tensor(f[1]))


@pytest.mark.parametrize("fam", FAMILIES)
def test_truncate_slices_layers_config_and_head(x, fam):
    _, build, _, head = FAMILIES[fam]
    m = build()
    backbone = family_of(m).backbone(m)[0]
    with torch.no_grad():
        hs = m(x, output_hidden_states=True).hidden_states
    with pytest.raises(ValueError, match="depth must be in 1..4"):
        sls_fast.truncate(m, 5)
    if head is None:  # a head-less backbone: cutting needs a head, and the error says where one is
        with pytest.raises(ValueError, match="num_classes"):
            sls_fast.truncate(m, 2)
        with pytest.raises(TypeError, match="CLIPForImageClassification"):
            sls_fast.truncate(m, 2, num_classes=3)
        return
    p = sls_fast.truncate(m, 2)
    pb = family_of(p).backbone(p)[0]
    assert len(find_blocks(p)) == 2 and pb.config.num_hidden_layers == 2
    assert getattr(p.config, "vision_config", p.config).num_hidden_layers == 2
    assert len(find_blocks(m)) == 4 and backbone.config.num_hidden_layers == 4  # a copy was cut
    with torch.no_grad():
        assert (p(x).logits - head(m, hs[2])).abs().max().item() <= 1e-5
    q = sls_fast.truncate(m, 3, num_classes=7)
    assert q(x).logits.shape == (6, 7) and q.config.num_labels == 7 and q.sls_state.head_fresh
    assert q.classifier.in_features == family_of(q).head_width(q) == m.classifier.in_features
    with torch.no_grad():
        assert torch.equal(family_of(q).pre_logits(q, x) @ q.classifier.weight.T
                           + q.classifier.bias, q(x).logits)
    acc = sls_fast.evaluate(q, _data(x), progress=False)
    assert acc * 6 == round(acc * 6)


def _perturb_trainable(model, seed, std=0.05):
    """Move every trainable tensor off its (identity) start, reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p_ in model.parameters():
            if p_.requires_grad:
                p_.add_(torch.randn(p_.shape, generator=g) * std)


def _lora_cut_round_trip(m, build, x, tmp_path):
    """Move m's LoRA and head off their start, cut to 2 layers, and check that the artifact
    reloads onto a fresh ``build()`` with equal outputs; returns the cut model and its logits."""
    _perturb_trainable(m, 4)
    p = sls_fast.truncate(m, 2)
    with torch.no_grad():
        ref = p(x).logits
    sls_fast.save_pruned(tmp_path / "a.safetensors", p, 2)
    q = sls_fast.load_pruned(tmp_path / "a.safetensors", build())
    with torch.no_grad():
        assert torch.equal(q(x).logits, ref)
    return p, ref


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_hf_lora_artifact_and_peft_format(tmp_path, x):
    m = sls_fast.add_adapters(_hf(), "lora", rank=2, lora_alpha=4, num_classes=3)
    assert "vit.layers.0.attention.q_proj.lora_A" in sls_fast.models.adapters.adapter_modules(m) or \
        "vit.encoder.layer.0.attention.attention.query.lora_A" in sls_fast.models.adapters.adapter_modules(m)
    p, ref = _lora_cut_round_trip(m, _hf, x, tmp_path)
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
    m.vit.save_pretrained(tmp_path / "backbone")  # a ViTModel folder (the paper's in21k backbone)
    got = sls_fast.models.load(f"hf:{tmp_path / 'backbone'}", num_classes=3)
    assert type(got).__name__ == "ViTForImageClassification" and got(x).logits.shape == (6, 3)
    with torch.no_grad():
        assert torch.equal(got.vit(x).last_hidden_state, m.vit(x).last_hidden_state)
    (tmp_path / "tiny" / "preprocessor_config.json").write_text(
        '{"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}')
    cfg = sls_fast.data.data_config(sls_fast.models.load(f"hf:{tmp_path / 'tiny'}"))
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == (0.1, 0.2, 0.3)
    assert cfg["std"] == (0.4, 0.5, 0.6)
    with pytest.raises(ValueError, match="local folder"):
        sls_fast.models.load("hf:google/vit-base-patch16-224-in21k")



@pytest.mark.parametrize("fam,kind", [("vit", "convpass"), ("vit", "repadapter"),
                                      ("dinov2", "convpass"), ("dinov2", "repadapter"),
                                      ("clip", "convpass"), ("clip", "repadapter")])
def test_convpass_and_repadapter(tmp_path, x, fam, kind):
    _, build, _, _ = FAMILIES[fam]
    base = build(labels=3)
    m = sls_fast.add_adapters(build(labels=3), kind, dim=4, scale=0.5)
    with torch.no_grad():
        assert (m(x).logits - base(x).logits).abs().max().item() <= 1e-6  # identity at start
    _perturb_trainable(m, 5)
    p = sls_fast.truncate(m, 3)
    with torch.no_grad():
        ref = p(x).logits
        assert (ref - base(x).logits[:, :3]).abs().max().item() > 1e-3  # the adapters act
    assert torch.equal(pickle.loads(pickle.dumps(p))(x).logits, ref)
    sls_fast.save_pruned(tmp_path / "a.safetensors", p, 3)
    q = sls_fast.load_pruned(tmp_path / "a.safetensors", build(labels=3))
    with torch.no_grad():
        assert torch.equal(q(x).logits, ref)
    if kind == "repadapter":
        merged = sls_fast.merge_adapters(p)
        assert not sls_fast.models.adapters.adapter_modules(merged)
        with torch.no_grad():
            assert (merged(x).logits - ref).abs().max().item() <= 1e-5


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("fam", ["dinov2", "clip"])
def test_lora_artifact_and_merge(tmp_path, x, fam):
    _, build, _, _ = FAMILIES[fam]
    m = sls_fast.add_adapters(build(), "lora", rank=2, lora_alpha=4, num_classes=3)
    want = set(family_of(m).lora_candidates[0])
    assert set(m.sls_state.adapters.targets) == want
    blk = find_blocks(m)[0].name
    assert {k for k in sls_fast.models.adapters.adapter_modules(m) if k.startswith(blk + ".")} == \
        {f"{blk}.{t}.{ab}" for t in want for ab in ("lora_A", "lora_B")}
    p, ref = _lora_cut_round_trip(m, build, x, tmp_path)
    with torch.no_grad():
        assert (sls_fast.merge_adapters(p)(x).logits - ref).abs().max().item() <= 1e-5


def test_dinov2_swiglu_targets_and_merge(x):
    """The SwiGLU MLP (dinov2-giant's): LoRA's default targets follow the layer's own names, and
    RepAdapter folds into both of the MLP's input linears."""
    m = sls_fast.add_adapters(_dinov2(use_swiglu_ffn=True), "lora", rank=2)
    assert "mlp.gate_proj" in m.sls_state.adapters.targets
    r = sls_fast.add_adapters(_dinov2(use_swiglu_ffn=True, labels=3), "repadapter", dim=4)
    _perturb_trainable(r, 6)
    with torch.no_grad():
        ref = r(x).logits
        assert (sls_fast.merge_adapters(r)(x).logits - ref).abs().max().item() <= 1e-5


def test_adapters_refuse_other_layer_layouts(x):
    """Convpass / RepAdapter need the layer's transformers-5 layout; a layer of another layout (a
    user's subclass, transformers 4.x) gets a TypeError naming it, LoRA still works."""
    m = _dinov2()
    blk = find_blocks(m)[1].module
    blk.__class__ = type("MyLayer", (type(blk),), {})
    with pytest.raises(TypeError, match="MyLayer"):
        sls_fast.add_adapters(m, "convpass")
    assert not sls_fast.models.adapters.adapter_modules(m)  # refused before anything was added
    sls_fast.add_adapters(m, "lora", rank=2)
    assert "dinov2.encoder.layer.1.attention.q_proj.lora_A" in sls_fast.models.adapters.adapter_modules(m)
    with pytest.raises(ValueError, match="no.such' does not exist"):
        sls_fast.add_adapters(_clip_vision(), "lora", targets=["no.such"])


def test_load_dinov2_and_clip_folders(tmp_path, x):
    d = _dinov2()
    d.dinov2.save_pretrained(tmp_path / "dino")  # a Dinov2Model folder (facebook/dinov2-*)
    got = sls_fast.models.load(f"hf:{tmp_path / 'dino'}", num_classes=4)
    assert type(got).__name__ == "Dinov2ForImageClassification" and family_of(got).name == "hf-dinov2"
    assert got.classifier.in_features == 96 and got(x).logits.shape == (6, 4)
    with torch.no_grad():
        assert torch.equal(got.dinov2(x).last_hidden_state, d.dinov2(x).last_hidden_state)
    d.save_pretrained(tmp_path / "dino_cls")
    with torch.no_grad():
        assert torch.equal(sls_fast.models.load(f"hf:{tmp_path / 'dino_cls'}")(x).logits, d(x).logits)
    cfg = sls_fast.data.data_config(got)
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == (0.485, 0.456, 0.406)

    torch.manual_seed(1)  # a two-tower CLIPModel folder (openai/clip-*): its vision tower
    full = transformers.CLIPModel(_clip_config()).eval()
    full.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(
        '{"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 40}}')
    c = sls_fast.models.load(f"hf:{tmp_path / 'clip'}", num_classes=3)
    assert type(c).__name__ == "CLIPForImageClassification" and c(x).logits.shape == (6, 3)
    with torch.no_grad():
        want = full.vision_model(x, output_hidden_states=True).hidden_states
    f = sls_fast.extract_features(c, _data(x), progress=False)
    assert max((torch.as_tensor(f[i]) - want[i + 1][:, 0]).abs().max().item() for i in range(4)) <= 1e-5
    assert sls_fast.data.data_config(c)["input_size"] == (3, 32, 32)  # the crop, not the resize
    assert sls_fast.data.data_config(c)["mean"][0] == pytest.approx(0.48145466)
    full.vision_model.save_pretrained(tmp_path / "tower")  # vision tower only: no head
    v = sls_fast.models.load(f"hf:{tmp_path / 'tower'}")
    assert type(v).__name__ == "CLIPVisionModel" and family_of(v).name == "hf-clip"
    with pytest.raises(TypeError, match="CLIPForImageClassification"):
        sls_fast.add_adapters(v, "lora", num_classes=3)  # the vision tower has no head to replace
    with pytest.raises(ValueError, match="vision-tower"):
        sls_fast.models.load(f"hf:{tmp_path / 'tower'}", num_classes=3)
    (tmp_path / "bert").mkdir()
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model.*dinov2"):
        sls_fast.models.load(f"hf:{tmp_path / 'bert'}")
    with pytest.raises(ValueError, match="no recognisable blocks"):
        family_of(full)  # the two-tower model itself is not an image model
