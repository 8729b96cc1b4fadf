"""The sls-fast command line: --help everywhere, the reduced main job end to end, score on a
folder of images built here, bench."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sls_fast.cli import main

SUBCOMMANDS = ["run", "score", "prune", "bench"]


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for sub in SUBCOMMANDS:
        assert sub in out
    assert "examples:" in out


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_subcommand_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out and "--device" in out and "--seed" in out


def test_console_script_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "sls-fast")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "sls_fast.cli"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, check=True)
    assert "usage: sls-fast" in out.stdout


def test_run_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--quick", "--out", str(out), "--json", "--no-progress", "--quiet",
                 "--repeats", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert printed["depth"] == report["depth"]
    for key in ("model", "dataset", "num_layers", "depth", "alpha", "layer_names", "scores",
                "runs", "spread", "run_depths", "confidence", "repeats",
                "accuracy", "throughput", "storage", "timings", "versions", "device"):
        assert key in report, key
    L = report["num_layers"]
    assert report["repeats"] == 2 and len(report["run_depths"]) == 2
    assert np.array(report["runs"]["silhouette"]).shape == (2, L)
    assert report["confidence"] == np.mean(np.array(report["run_depths"]) == report["depth"])
    assert report["model"] == "efficientnet_lite0" and L == 16
    assert 1 <= report["depth"] <= L
    for metric in ("silhouette", "calinski_harabasz", "davies_bouldin"):
        assert len(report["scores"][metric]) == L
        assert np.isfinite(report["scores"][metric]).all()
    for k in ("full", "pruned"):
        assert 0.0 <= report["accuracy"][k] <= 1.0
        assert report["throughput"][k] > 0
    assert 0 < report["storage"]["artifact_bytes"] < report["storage"]["full_model_bytes"]
    assert (out / "scores.png").stat().st_size > 0
    assert (out / "tsne_layers.png").stat().st_size > 0
    assert (out / "pruned.safetensors").exists()


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


def test_score_on_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "images"
    _write_folder(data, rng)
    out = tmp_path / "score"
    args = ["score", "--model", "vit_tiny_patch16_224", "--data", f"folder:{data}", "--split", "all",
            "--image-size", "32", "--out", str(out), "--tsne-backend", "sklearn",
            "--tsne-iter", "250", "--json", "--no-progress", "--quiet"]
    with pytest.warns(UserWarning):  # random weights: scores carry no signal, and it says so
        assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_layers"] == 12 and len(report["scores"]["silhouette"]) == 12
    assert (out / "scores.png").exists() and (out / "layers.json").exists()


def test_bench_json(capsys):
    args = ["bench", "--model", "vit_tiny_patch16_224", "--image-size", "32", "--depth", "3",
            "--batch-size", "4", "--no-compile", "--iters", "3", "--json", "--quiet"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["depth"] == 3 and res["num_layers"] == 12
    assert res["speedup"] > 0  # a ratio of timings: asserted in benchmarks, never here


@pytest.mark.parametrize("bad", ["0", "-3", "two"])
def test_bad_repeats_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["score", "--model", "vit_tiny_patch16_224", "--repeats", bad, "--quiet"])
    assert e.value.code == 2
    assert "--repeats: must be a positive integer" in capsys.readouterr().err


def test_bad_data_spec_is_a_clear_error(capsys):
    code = main(["score", "--model", "vit_tiny_patch16_224", "--data", "imagenet", "--quiet"])
    assert code == 2
    assert "unknown data spec" in capsys.readouterr().err
