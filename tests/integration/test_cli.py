"""The sls-fast command line: --help everywhere, the reduced main job end to end, and bench.
The chains score -> prune -> bench and every bad input are in test_cli_chains.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _helpers import assert_valid
from sls_fast.cli import main

SUBCOMMANDS = ["run", "score", "prune", "bench", "sweep"]


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
    assert "--json" in out and "--device" in out and "--seed" in out and "--debug" in out


@pytest.mark.slow
def test_console_script_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "sls-fast")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "sls_fast"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, check=True)
    assert "usage: sls-fast" in out.stdout


@pytest.mark.slow
def test_run_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--quick", "--out", str(out), "--json", "--no-progress", "--quiet",
                 "--repeats", "2", "--criteria", "knn,block-influence", "--oracle"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert printed["depth"] == report["depth"]
    assert_valid("report", report)
    for key in ("model", "dataset", "num_layers", "depth", "alpha", "layer_names", "scores",
                "runs", "spread", "run_depths", "confidence", "repeats",
                "accuracy", "throughput", "storage", "timings", "versions", "device"):
        assert key in report, key
    L = report["num_layers"]
    assert report["repeats"] == 2 and len(report["run_depths"]) == 2
    assert np.array(report["runs"]["silhouette"]).shape == (2, L)
    assert report["confidence"] == np.mean(np.array(report["run_depths"]) == report["depth"])
    tp = report["throughput"]  # --quick times 3 batches: never a clean speed-up
    if report["depth"] == L:
        assert tp["status"] == "not pruned" and tp["speedup"] is None
    else:
        assert tp["status"] in ("noisy", "measurement error") and tp["noisy"]
    assert report["model"] == "efficientnet_lite0" and L == 16
    assert 1 <= report["depth"] <= L
    for metric in ("silhouette", "calinski_harabasz", "davies_bouldin", "knn"):
        assert len(report["scores"][metric]) == L
        assert np.isfinite(report["scores"][metric]).all()
    assert report["scores"]["block-influence"][0] is None  # undefined for the first layer
    oracle = report["oracle"]  # --oracle: every depth's probe accuracy, each criterion's regret
    assert oracle["kind"] == "probe" and len(oracle["accuracy"]) == L
    assert set(oracle["criteria"]) == {"sls", "knn", "block-influence"}
    assert oracle["criteria"]["sls"]["depth"] == report["depth"]
    assert (out / "oracle.png").is_file() and "oracle.png" in " ".join(report["files"]["plots"])
    n_test = 360  # digits test split
    for k in ("full", "pruned"):  # accuracies are counts over the test split
        assert report["accuracy"][k] * n_test == pytest.approx(round(report["accuracy"][k] * n_test))
        assert report["throughput"][k] == report["throughput"][f"{k}_details"]["images_per_s"]
    assert 0 < report["storage"]["artifact_bytes"] < report["storage"]["full_model_bytes"]
    assert (out / "scores.png").stat().st_size > 0
    assert (out / "tsne_layers.png").stat().st_size > 0
    assert (out / "pruned.safetensors").exists()


@pytest.mark.slow
def test_run_with_another_criterion_and_the_full_oracle(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--quick", "--out", str(out), "--json", "--no-progress", "--quiet",
                 "--criterion", "linear-probe", "--oracle", "full"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert_valid("report", report)
    layers = json.loads((out / "layers.json").read_text())
    assert_valid("layers", layers)
    chosen = layers["meta"]["criteria"]["linear-probe"]["depth"]
    assert report["criterion"] == layers["criterion"] == "linear-probe"
    assert report["depth"] == layers["depth"] == chosen
    assert report["confidence"] == 1.0 and "silhouette" in report["scores"]
    oracle = report["oracle"]  # every depth cut and retrained: the run's own retrain among them
    L = report["num_layers"]
    assert oracle["kind"] == "full" and oracle["split"] == "test"
    assert sorted(map(int, oracle["accuracy"])) == list(range(1, L + 1))
    assert oracle["full_accuracy"] == report["accuracy"]["full"]
    assert oracle["accuracy"][str(chosen)] == report["accuracy"]["pruned"]
    assert report["cache"]["retrain"] == "oracle"  # not trained twice
    assert set(oracle["criteria"]) == {"sls", "linear-probe"}
    assert (out / "oracle.png").stat().st_size > 10_000


def test_bench_json(capsys):
    args = ["bench", "--model", "vit_tiny_patch16_224", "--image-size", "32", "--depth", "3",
            "--batch-size", "4", "--no-compile", "--iters", "3", "--json", "--quiet"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["depth"] == 3 and res["num_layers"] == 12
    assert res["full"]["image_size"] == res["pruned"]["image_size"] == 32
    assert res["measured_speedup"] == pytest.approx(
        res["pruned"]["images_per_s"] / res["full"]["images_per_s"])
    # 3 timed batches: never a clean result; which verdict depends on the machine's load
    assert res["noisy"] and res["status"] in ("noisy", "measurement error")
    assert res["speedup"] == (res["measured_speedup"] if res["status"] == "noisy" else None)


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
