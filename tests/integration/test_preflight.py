"""Mistakes caught before any compute (sls_fast.harness.preflight): each ends in one line on
stderr and exit code 2 (no traceback, never "internal error"), in seconds, with nothing
written; the API raises a ValueError naming the problem."""
import json

import numpy as np
import pytest
import timm
import torch

from sls_fast.cli import main
from sls_fast.harness.preflight import check_first_batch, check_out, first_batch_bytes
from sls_fast.models.throughput import forward_costs
from sls_fast.harness.settings import TaskSettings

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = ["--no-progress", "--quiet"]


def _refused(capsys, argv, match, out=None):
    code = main(argv + QUIET)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "error:" in err[0] and match in err[0], err
    assert "Traceback" not in err[0] and "internal error" not in err[0]
    if out is not None:
        assert not out.exists(), "a refused run wrote its folder"
    return err[0]


def _folder(root, classes, per_class, size=16):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / f"c{c}" / f"{i}.png")
    return f"folder:{root}"


def test_settings_a_user_gets_wrong(tmp_path, capsys):
    out = tmp_path / "run"
    _refused(capsys, ["run", "--alpha", "1.5", "--out", str(out)],
             "alpha must be a number > 0 and <= 1, got 1.5", out)
    _refused(capsys, ["run", "--alpha", "-1", "--out", str(out)], "alpha must be", out)
    _refused(capsys, ["run", "--image-size", "100000", "--out", str(out)],
             "image_size must be an integer >= 8 and <= 4096", out)
    _refused(capsys, ["run", "--perplexity", "0.5", "--out", str(out)], "perplexity must be", out)
    _refused(capsys, ["score", "--model", "vit_tiny_patch16_224", "--alpha", "1.5",
                      "--out", str(out)], "alpha must be", out)


def test_model_names_and_weights(tmp_path, capsys):
    out = tmp_path / "run"
    line = _refused(capsys, ["run", "--model", "vit_tiny_patch16_22", "--out", str(out)],
                    "unknown model 'vit_tiny_patch16_22'", out)
    assert "did you mean vit_tiny_patch16_224" in line and "sls-fast models" in line
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    line = _refused(capsys, ["score", "--model", "vit_tiny_patch16_224", "--checkpoint",
                             str(text), "--out", str(out)], "is not a readable weights file", out)
    assert "it is not a torch file" in line and "weights_only" not in line and len(line) < 300
    _refused(capsys, ["run", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(out)],
             "does not exist", out)


def test_where_it_runs(tmp_path, capsys):
    _refused(capsys, ["run", "--out", "/proc/sls-fast-test/run"], "is not writable")
    (tmp_path / "a_file").write_text("x")
    _refused(capsys, ["run", "--out", str(tmp_path / "a_file")], "is a file")
    if not torch.cuda.is_available():
        out = tmp_path / "run"
        _refused(capsys, ["run", "--device", "cuda", "--out", str(out)], "no CUDA device", out)
        _refused(capsys, ["bench", "--model", "resnet18", "--device", "cuda"], "no CUDA device")
    _refused(capsys, ["sweep", "--models", "vit_tiny_patch16_22", "--out",
                      str(tmp_path / "sweep")], "did you mean", tmp_path / "sweep")


def test_data_that_cannot_be_scored(tmp_path, capsys):
    out = tmp_path / "run"
    one = _folder(tmp_path / "one", classes=1, per_class=40)
    _refused(capsys, ["run", "--quick", "--data", one, "--out", str(out)],
             "1 class(es)", out)
    few = _folder(tmp_path / "few", classes=2, per_class=20)  # 60/20/20: 24 training images
    _refused(capsys, ["run", "--quick", "--data", few, "--out", str(out)],
             "24 scored images is too few for perplexity 30", out)
    assert main(["run", "--quick", "--data", few, "--perplexity", "5", "--out", str(out),
                 "--json", "--epochs", "1", "--tsne-iter", "250", *QUIET]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["perplexity"] == 5


def test_a_first_batch_that_cannot_fit_is_refused():
    model = timm.create_model("resnet18", pretrained=False).eval()
    need = check_first_batch(model, batch_size=2, image_size=64, device=torch.device("cpu"))
    assert need is not None and need > 0
    with pytest.raises(ValueError, match=r"image size 4096 at batch size 4096 needs at least .* "
                                         r"of activations"):
        check_first_batch(model, batch_size=4096, image_size=4096, device=torch.device("cpu"))


def test_the_first_batch_estimate_is_a_lower_bound_traced_at_the_real_size():
    """A fixed-size model (a ViT built for its size) is traced at that size on fake tensors:
    the estimate lies between the largest single activation and the sum of all of them."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96).eval()
    one = first_batch_bytes(model, 96)
    tokens, hidden = (96 // 16) ** 2 + 1, 4 * 192
    assert one is not None and one >= 2 * tokens * hidden * 4  # fc1's output and GELU's
    total = forward_costs(model, torch.zeros(1, 3, 96, 96))["activation_bytes"]
    assert total is not None and one < total
    assert first_batch_bytes(model, 64) is None  # a size the model refuses: no estimate


def test_a_fixed_size_model_too_large_for_memory_is_refused_before_compute(tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, ["run", "--model", "vit_tiny_patch16_224", "--image-size", "4096",
                      "--batch-size", "512", "--data", "digits", "--out", str(out)],
             "image size 4096 at batch size 512 needs at least", out)


def test_api_refusals():
    with pytest.raises(ValueError, match="alpha must be"):
        TaskSettings(alpha=1.5)
    with pytest.raises(ValueError, match="is a file"):
        check_out(__file__)


def test_version_and_models(capsys):
    import sls_fast

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"sls-fast {sls_fast.__version__}"
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"vit", "swin", "efficientnet", "convnext", "resnet"} <= \
        {f["family"] for f in listed["families"]}
    assert "efficientnet_lite0" in listed["bundled_weights"]


def test_help_explains_every_option_and_no_empty_default(capsys):
    """Every option of every command has a help text; no '(default: None)', no default
    printed for a flag, and no default printed twice."""
    from sls_fast.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"sls-fast {name} {action.option_strings[0]} has no help"
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for bad in ("(default: None)", "(default: True)", "(default: False)"):
            assert bad not in text, f"sls-fast {name} --help says {bad}"
        assert text.count("(default: 64) (default: 64)") == 0
