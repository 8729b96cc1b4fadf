"""sls_fast.harness.pipeline.run_task and its stage cache (no Ray: the function every sweep cell runs)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from sls_fast.harness.cache import StageCache, cache_key, data_fingerprint, weights_checksum
from sls_fast.io.datasets import digits
from _helpers import assert_valid

from sls_fast.cli import main
from sls_fast.harness.pipeline import run_task
from sls_fast.harness.reports import TaskResult
from sls_fast.io.artifacts import read_pruned_metadata
from sls_fast.harness.settings import TaskSettings

TINY = dict(model="test_vit", image_size=32, tsne_iter=250, score_points=150, device="cpu")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    cache = StageCache(str(root / "cache"))
    settings = TaskSettings.quick(method="lora", **TINY)
    return root, cache, settings, run_task(settings, str(root / "first"), progress=False,
                                           cache=cache)


@pytest.mark.slow
def test_lora_task_end_to_end(lora_run):
    root, _, settings, r = lora_run
    assert isinstance(r, TaskResult) and r.cache == dict(adapt="miss", scores="miss",
                                                         features="miss", retrain="miss")
    report = json.loads((root / "first" / "report.json").read_text())
    assert report == json.loads(json.dumps(r.to_dict(), default=float))
    assert_valid("report", report)
    assert_valid("layers", json.loads((root / "first" / "layers.json").read_text()))
    assert_valid("artifact", read_pruned_metadata(str(root / "first" / "pruned.safetensors")))
    assert report["method"] == "lora" and report["settings"] == settings.to_dict()
    assert 1 <= report["depth"] <= report["num_layers"] == 6
    assert 0 < report["storage"]["artifact_bytes"] < report["storage"]["full_model_bytes"]
    from safetensors import safe_open

    with safe_open(str(root / "first" / "pruned.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)
    assert "SLS on test_vit / digits (lora)" in r.summary()


@pytest.mark.slow
def test_a_cached_stage_gives_what_computing_it_gives(lora_run):
    """Only the adapted weights come from the cache: features and t-SNE are recomputed from them
    and must equal the first run's bit for bit (same process, same inputs)."""
    root, cache, settings, first = lora_run
    partial = StageCache(str(root / "partial"))
    shutil.copytree(os.path.join(cache.root, "adapt"), os.path.join(partial.root, "adapt"))
    again = run_task(settings, str(root / "again"), progress=False, cache=partial)
    assert again.cache["adapt"] == "hit" and again.cache["scores"] == "miss"
    for k, v in first.layers.runs.items():
        np.testing.assert_array_equal(again.layers.runs[k], v)
    assert again.accuracy["full"] == first.accuracy["full"]
    # everything from the cache, another alpha: the depth is re-selected on the same scores
    other = run_task(TaskSettings.quick(method="lora", alpha=0.9, **TINY), str(root / "alpha"),
                     progress=False, cache=cache)
    assert other.cache["adapt"] == "hit" and other.cache["scores"] == "hit"
    np.testing.assert_array_equal(other.layers.scores["silhouette"],
                                  first.layers.scores["silhouette"])
    assert other.layers.alpha == 0.9 and other.depth >= first.depth


def test_settings_are_validated():
    with pytest.raises(ValueError, match="method must be one of"):
        TaskSettings(method="ia3")
    with pytest.raises(ValueError, match="alpha"):
        TaskSettings(alpha=-0.1)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        TaskSettings(epochs=0)
    with pytest.raises(TypeError, match="image_size must be an integer >= 8 and <= 4096 or None, got 2.5"):
        TaskSettings(image_size=2.5)
    s = TaskSettings(alpha=np.float32(0.5), epochs=np.int64(3))  # NumPy scalars are numbers
    assert (s.alpha, s.epochs) == (0.5, 3) and type(s.epochs) is int
    with pytest.raises(ValueError, match=r"unknown task setting\(s\) \['alhpa'\]"):
        TaskSettings.from_dict(dict(alhpa=0.3))
    with pytest.raises(TypeError, match="TaskSettings"):
        run_task(dict(model="x"), "out")
    s = TaskSettings.quick(alpha=0.5)
    assert TaskSettings.from_dict(s.to_dict()) == s and s.epochs == 1 and s.alpha == 0.5


def test_fingerprints_and_keys_follow_content():
    a, b = digits("train", image_size=16), digits("train", image_size=16)
    assert data_fingerprint(a) == data_fingerprint(b)
    assert data_fingerprint(digits("train", image_size=24)) != data_fingerprint(a)
    assert data_fingerprint(digits("train", image_size=16, seed=1)) != data_fingerprint(a)
    sub = torch.utils.data.Subset(a, [0, 1, 2])
    assert data_fingerprint(sub) != data_fingerprint(torch.utils.data.Subset(a, [0, 1, 3]))
    m = torch.nn.Linear(3, 2)
    before = weights_checksum(m)
    with torch.no_grad():
        m.bias[0] += 1
    assert weights_checksum(m) != before
    assert cache_key("s", x=1, y=[1, 2]) == cache_key("s", y=[1, 2], x=1) != cache_key("s", x=2)


def test_cache_ignores_an_unreadable_entry(tmp_path):
    cache = StageCache(str(tmp_path))
    cache.put("k", "stage", {"x": torch.arange(4.0)}, {"n": 4})
    path = tmp_path / "stage" / "k.safetensors"
    path.write_bytes(path.read_bytes()[:20])  # truncated by a disk fault
    assert cache.get("k", "stage") is None and cache.misses == {"stage": 1}


@pytest.mark.slow
def test_prune_on_a_run_folder_keeps_the_runs_method_and_size(lora_run, capsys):
    """'sls-fast prune --report RUN' rebuilds the run's model: its method (LoRA here, not the
    default Convpass), its image size and adapter width, from the run's layers.json."""
    root, _, settings, r = lora_run
    folder = root / "first"
    assert main(["prune", "--report", str(folder), "--epochs", "1", "--json", "--no-progress",
                 "--quiet", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    meta = read_pruned_metadata(out["artifact"])
    assert meta["adapters"]["kind"] == "lora" and meta["adapters"]["dim"] == settings.adapter_dim
    assert meta["depth"] == r.depth and meta["meta"]["image_size"] == settings.image_size

