"""The command line as a user runs it: score -> prune -> bench chains (a ViT at a non-default
image size, EfficientNet-Lite0, a folder of images with a ResNet), the authors' adapter
checkpoints, and every bad input ending in one line on stderr and exit code 2."""
import json
import warnings

import numpy as np
import pytest
import timm
import torch

import sls_fast
from _helpers import assert_valid
from sls_fast.cli import main
from sls_fast.harness.tasks import NoAdaptersWarning
from sls_fast.io.artifacts import read_pruned_metadata

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--tsne-iter", "250", "--json", "--no-progress", "--quiet"]
RUN = ["--json", "--no-progress", "--quiet"]


def _write_folder(root, rng, classes=3, per_class=14, size=20):
    from PIL import Image

    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), np.uint8)
            base[..., c] = 200  # a class-specific colour plus noise: separable
            img = np.clip(base + rng.integers(0, 40, size=base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def _chain(tmp_path, capsys, score_args, prune_args=(), bench_args=()):
    out = tmp_path / "run"
    assert main(["score", *score_args, "--out", str(out), *QUICK]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert_valid("report", json.loads((out / "report.json").read_text()))
    assert_valid("layers", json.loads((out / "layers.json").read_text()))
    assert main(["prune", "--report", str(out), "--epochs", "1", "--batch-size", "32",
                 *prune_args, *RUN]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert_valid("artifact", read_pruned_metadata(pruned["artifact"]))
    assert main(["bench", "--report", str(out), "--batch-size", "2", "--iters", "2",
                 "--no-compile", *bench_args, *RUN]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert pruned["depth"] == scored["depth"] == bench["depth"]
    assert bench["num_layers"] == scored["num_layers"]
    assert (out / "pruned.safetensors").exists() and (out / "scores.png").exists()
    assert not list(out.glob(".*tmp*")), "a temporary file was left behind"
    meta = read_pruned_metadata(out / "pruned.safetensors")
    assert meta["depth"] == scored["depth"]
    return scored, pruned, bench, meta


@pytest.mark.slow
def test_chain_vit_at_non_default_image_size(tmp_path, capsys):
    with pytest.warns(UserWarning):  # random weights, no adapters: both are said
        scored, pruned, bench, meta = _chain(
            tmp_path, capsys, ["--model", "vit_tiny_patch16_224", "--image-size", "32",
                               "--data", "digits", "--split", "val", "--criterion", "cka"])
    assert scored["num_layers"] == 12
    # cka chose the depth that prune cut and bench timed; SLS's is reported beside it
    layers = json.loads((tmp_path / "run" / "layers.json").read_text())
    assert scored["criterion"] == "cka" == layers["criterion"]
    assert scored["depth"] == layers["meta"]["criteria"]["cka"]["depth"]
    assert "silhouette" in scored["scores"] and "cka" in scored["scores"]
    assert bench["full"]["image_size"] == bench["pruned"]["image_size"] == 32
    assert meta["meta"]["image_size"] == 32 and meta["adapters"]["kind"] == "convpass"


@pytest.mark.slow
def test_chain_lite0(tmp_path, capsys):
    with pytest.warns(NoAdaptersWarning):
        scored, pruned, bench, meta = _chain(
            tmp_path, capsys, ["--model", "efficientnet_lite0", "--image-size", "32",
                               "--data", "lfw"], ["--adapter", "convpass"])
    assert scored["num_layers"] == 16 and meta["num_classes"] == 2
    assert meta["family"] == "efficientnet"


@pytest.mark.slow
def test_chain_folder_resnet(tmp_path, capsys):
    data = _write_folder(tmp_path / "images", np.random.default_rng(0))
    with pytest.warns(UserWarning):
        scored, pruned, bench, meta = _chain(
            tmp_path, capsys, ["--model", "resnet18", "--image-size", "32", "--data",
                               f"folder:{data}", "--split", "all", "--tsne-backend", "sklearn"])
    assert scored["num_layers"] == 8 and meta["family"] == "resnet" and meta["num_classes"] == 3


# --------------------------------------------------------------------------- the authors' checkpoints
class Payload:
    """Any object: an unrestricted unpickle would rebuild it; weights_only refuses it."""


def _their_checkpoint(tmp_path):
    """A ViT with trained-looking Convpass adapters + head, saved in the layout of the authors'
    code (RuiZiHan/SLS utils.save: every parameter whose name holds 'adapter' or 'head', their
    module names adapter_down / adapter_conv / adapter_up), plus the base weights."""
    torch.manual_seed(0)
    base = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    torch.save(base.state_dict(), tmp_path / "base.pth")
    ours = sls_fast.add_adapters(base, "convpass", num_classes=10, scale=0.5)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "adapter" in n or "head" in n:
                p.normal_(0, 0.05)
    theirs = {}
    for n, p in ours.named_parameters():
        if "adapter" in n or "head" in n:
            for a, b in ((".down.", ".adapter_down."), (".conv.", ".adapter_conv."),
                         (".up.", ".adapter_up.")):
                n = n.replace(a, b) if ".adapter" in n else n
            theirs[n] = p.data.clone()
    assert "blocks.0.adapter_attn.adapter_conv.weight" in theirs and "head.weight" in theirs
    torch.save(theirs, tmp_path / "eurosat.pt")
    return ours.eval()


def test_authors_checkpoint_layout_loads_with_weights_only(tmp_path):
    from sls_fast.io.checkpoints import load_adapted

    ours = _their_checkpoint(tmp_path)
    m = load_adapted("vit_tiny_patch16_224", "convpass", checkpoint=tmp_path / "eurosat.pt",
                     base_checkpoint=tmp_path / "base.pth", image_size=32, scale=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), ours(x), rtol=0, atol=0)
    assert m.num_classes == 10
    with pytest.raises(ValueError, match="does not fit"):  # RepAdapter keys are not there
        load_adapted("vit_tiny_patch16_224", "repadapter", checkpoint=tmp_path / "eurosat.pt",
                     base_checkpoint=tmp_path / "base.pth", image_size=32)
    torch.save({"head.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="holds Python objects besides tensors, which sls_fast "
                                         "does not unpickle"):
        load_adapted("vit_tiny_patch16_224", "convpass", checkpoint=tmp_path / "evil.pt",
                     base_checkpoint=tmp_path / "base.pth", image_size=32)


def test_score_the_authors_adapted_model(tmp_path, capsys):
    _their_checkpoint(tmp_path)
    args = ["score", "--model", "vit_tiny_patch16_224", "--image-size", "32", "--data", "digits",
            "--split", "val", "--adapter", "convpass", "--checkpoint", str(tmp_path / "eurosat.pt"),
            "--base-checkpoint", str(tmp_path / "base.pth"), "--adapter-scale", "0.5",
            "--out", str(tmp_path / "s"), "--tsne-backend", "native", *QUICK]
    from sls_fast.models.zoo import RandomWeightsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 0
    # an adapted model with given base weights: neither "no adapters" nor "random weights"
    assert not [w for w in caught if issubclass(w.category, (NoAdaptersWarning, RandomWeightsWarning))]
    report = json.loads(capsys.readouterr().out)
    assert report["num_layers"] == 12
    meta = json.loads((tmp_path / "s" / "layers.json").read_text())["meta"]
    assert meta["adapter"] == "convpass" and meta["adapter_scale"] == 0.5


# --------------------------------------------------------------------------- bad input
def _fails(capsys, args, *needles):
    code = main(args)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("sls-fast ") and "error:" in lines[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


VIT = ["score", "--model", "vit_tiny_patch16_224", "--image-size", "32", "--quiet", "--no-progress"]


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "nope.pth")
    _fails(capsys, [*VIT, "--checkpoint", missing], "nope.pth", "does not exist")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    _fails(capsys, [*VIT, "--checkpoint", str(tmp_path / "junk.pth")], "junk.pth")
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "r18.pth")
    _fails(capsys, [*VIT, "--checkpoint", str(tmp_path / "r18.pth")], "does not match")
    _fails(capsys, [*VIT, "--data", "imagenet"], "unknown data spec")
    _fails(capsys, ["prune", "--report", str(tmp_path / "no_report"), "--quiet"], "not found")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "layers.json").write_text("{not json")
    _fails(capsys, ["prune", "--report", str(tmp_path / "bad"), "--quiet"], "layers.json")
    _fails(capsys, ["score", "--model", "no_such_model_xyz", "--quiet"], "unknown model")
    with pytest.raises(ValueError):  # --debug: the traceback, not the one line
        main([*VIT, "--checkpoint", missing, "--debug"])


def test_unreadable_image_fail_or_skip(tmp_path, capsys):
    data = _write_folder(tmp_path / "images", np.random.default_rng(1))
    bad = data / "class_1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["score", "--model", "resnet18", "--image-size", "32", "--data", f"folder:{data}",
            "--split", "all", "--tsne-backend", "sklearn", "--out", str(tmp_path / "o"), *QUICK]
    with pytest.warns(UserWarning):
        _fails(capsys, args, "broken.png", "--on-bad-image skip")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert main(args + ["--on-bad-image", "skip"]) == 0
    assert json.loads(capsys.readouterr().out)["num_layers"] == 8


def _artifact(tmp_path, name="vit_tiny_patch16_224", **kw):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, **kw)
    p = sls_fast.truncate(sls_fast.add_adapters(m, "convpass", num_classes=3), 2)
    path = tmp_path / f"{name}.safetensors"
    sls_fast.save_pruned(path, p, 2)
    return path


def test_artifact_for_another_base_and_truncated_artifact(tmp_path, capsys):
    lite = _artifact(tmp_path, "efficientnet_lite0")
    _fails(capsys, [*VIT, "--adapter", "convpass", "--checkpoint", str(lite)], "base model")
    vit = _artifact(tmp_path, img_size=32)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(vit.read_bytes()[:-200])
    with pytest.raises(ValueError, match="cut.safetensors"):
        sls_fast.load_pruned(cut, timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                                    img_size=32))
    with pytest.warns(UserWarning):
        _fails(capsys, [*VIT, "--adapter", "convpass", "--checkpoint", str(cut)], "cut.safetensors")
    (tmp_path / "head.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ValueError, match="head.safetensors"):
        sls_fast.io.artifacts.read_pruned_metadata(tmp_path / "head.safetensors")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sls_fast.models.RandomWeightsWarning")
def test_chain_lora_from_a_peft_folder(tmp_path, capsys):
    """A user's peft LoRA folder (get_peft_model + save_pretrained) through score -> prune -> bench."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10)
    user = peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc2"],
                                                  modules_to_save=["head"]))
    user.save_pretrained(tmp_path / "user_lora")
    scored, pruned, bench, meta = _chain(
        tmp_path, capsys, ["--model", "vit_tiny_patch16_224", "--image-size", "32",
                           "--data", "digits", "--split", "val", "--adapter", "lora",
                           "--checkpoint", str(tmp_path / "user_lora"), "--lora-rank", "4",
                           "--lora-alpha", "8"])
    assert meta["adapters"]["kind"] == "lora" and meta["adapters"]["dim"] == 4
    assert meta["adapters"]["targets"] == ["attn.qkv", "mlp.fc2"]
    assert pruned["depth"] == bench["depth"]


def _hf_folder(kind, folder):
    """A tiny transformers model saved as its users hold it: a ViT classifier, a DINOv2 backbone
    (Dinov2Model, like facebook/dinov2-*), a two-tower CLIPModel (like openai/clip-*)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tiny = dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=3, image_size=32,
                patch_size=8)
    if kind == "vit":
        m = transformers.ViTForImageClassification(
            transformers.ViTConfig(intermediate_size=96, num_labels=10, **tiny))
    elif kind == "dinov2":
        m = transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=2, **tiny))
    else:
        m = transformers.CLIPModel(transformers.CLIPConfig(
            vision_config=dict(intermediate_size=96, **tiny),
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2)))
    m.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind,adapter,family", [("vit", "lora", "hf-vit"),
                                                 ("dinov2", "lora", "hf-dinov2"),
                                                 ("clip", "repadapter", "hf-clip")])
@pytest.mark.slow
def test_chain_transformers_from_a_folder(tmp_path, capsys, kind, adapter, family):
    """--model hf:FOLDER (a save_pretrained folder, nothing downloaded) with fresh adapters; a
    backbone-only folder gets a classifier of the data's width."""
    pytest.importorskip("peft")
    folder = _hf_folder(kind, tmp_path / "tiny")
    with pytest.warns(NoAdaptersWarning):
        scored, pruned, bench, meta = _chain(
            tmp_path, capsys, ["--model", f"hf:{folder}", "--data", "digits",
                               "--split", "val", "--adapter", adapter, "--lora-rank", "4"])
    assert scored["num_layers"] == 4 and meta["family"] == family
    assert meta["adapters"]["kind"] == adapter and meta["adapters"]["dim"] == 4
    assert meta["num_classes"] == 10 and bench["full"]["image_size"] == 32
    if adapter == "lora":
        assert meta["adapters"]["targets"]
    if kind == "vit":
        assert main(["score", "--model", "hf:/no/such/folder", "--data", "digits", *QUICK]) == 2
        assert "folder '/no/such/folder' does not exist" in capsys.readouterr().err
