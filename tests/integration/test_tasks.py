"""score_task -> prune_task -> bench_task as a front end calls them: typed results, files that
validate against the schemas, what a scored folder carries to the next job (the model, its size,
its adapters, the bad-image policy), and clear errors."""
import json
import os

import numpy as np
import pytest

from _helpers import assert_valid
from sls_fast.harness.reports import BenchResult, PruneResult, ScoreResult
from sls_fast.harness.tasks import (ModelSpec, NoAdaptersWarning, bench_task, prune_task,
                                    read_scored, score_task)
from sls_fast.io.artifacts import read_pruned_metadata
from sls_fast.io.imagefiles import BadImagesWarning

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = ModelSpec("test_vit", image_size=32, adapter="convpass", adapter_dim=4)


def _image_folder(root, classes=3, per_class=12, size=20, seed=0):
    """A folder of class-coloured noisy images, and one unreadable file among them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.zeros((size, size, 3), np.uint8)
            img[..., c] = 200
            img = np.clip(img + rng.integers(0, 40, size=img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    (root / "class_0" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    data = f"folder:{_image_folder(root / 'images')}"
    out = root / "scored"
    with pytest.warns(NoAdaptersWarning), pytest.warns(BadImagesWarning):
        result = score_task(SPEC, data, str(out), split="all", tsne_iter=250, seed=3,
                            device="cpu", on_bad_image="skip", progress=False)
    return out, data, result


@pytest.fixture(scope="module")
def pruned(scored):
    out, _, _ = scored
    with pytest.warns(BadImagesWarning):  # the folder's policy carries: skip, not fail
        return prune_task(str(out), epochs=1, batch_size=16, device="cpu", progress=False)


def test_score_task_writes_what_it_returns(scored):
    out, data, result = scored
    assert isinstance(result, ScoreResult)
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(result.to_dict(), default=float))
    assert_valid("report", report)
    assert_valid("layers", json.loads((out / "layers.json").read_text()))
    assert report["kind"] == "score" and report["split"] == "all" and report["dataset"] == data
    assert 1 <= result.depth <= result.num_layers == 6  # test_vit has 6 blocks
    assert all(os.path.isfile(p) for p in result.files["plots"])
    assert report["files"] == dict(report="report.json", layers="layers.json",
                                   plots=["scores.png", "tsne_layers.png"])  # relative
    meta = read_scored(str(out)).meta
    assert {k: meta[k] for k in ("model", "image_size", "adapter", "adapter_dim")} == \
        dict(model="test_vit", image_size=32, adapter="convpass", adapter_dim=4)
    assert meta["on_bad_image"] == "skip" and meta["seed"] == 3
    assert meta["class_names"] == ["class_0", "class_1", "class_2"]  # the t-SNE grid's legend
    assert "kept depth K" in result.summary()


def test_prune_task_rebuilds_the_scored_model(scored, pruned):
    out, data, result = scored
    assert isinstance(pruned, PruneResult)
    assert pruned.depth == result.depth and pruned.method == "convpass"
    assert pruned.artifact == str(out / "pruned.safetensors")
    meta = read_pruned_metadata(pruned.artifact)
    assert_valid("artifact", meta)
    assert meta["depth"] == result.depth and meta["meta"]["image_size"] == 32
    assert meta["adapters"]["kind"] == "convpass" and meta["adapters"]["dim"] == 4
    assert 0 <= pruned.accuracy["pruned"] <= 1 and pruned.storage["artifact_bytes"] > 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o644}, modes  # the artifact too (safetensors wrote 0600)
    assert json.loads(json.dumps(pruned.to_dict(), default=float))["dataset"] == data


def test_bench_task_times_the_stored_cut(scored, pruned):
    out, _, _ = scored
    result = bench_task(str(out), batch_size=2, iters=2, compile=False, device="cpu")
    assert isinstance(result, BenchResult)
    assert result.depth == pruned.depth and result.num_layers == 6
    assert result.full["image_size"] == result.pruned["image_size"] == 32
    cut = bench_task(spec=dict(model="test_vit", image_size=32), depth=1, batch_size=2,
                     iters=2, compile=False, device="cpu")
    assert cut.depth == 1 and "speed-up" in cut.summary()


def test_prune_task_refuses_what_does_not_fit(tmp_path, scored):
    out, _, result = scored
    with pytest.raises(ValueError, match="depth must be an integer >= 1 and <= 6"):
        prune_task(str(out), depth=7)
    with pytest.raises(TypeError, match="unknown model setting"):
        prune_task(str(out), spec=dict(colour="red"))
    with pytest.raises(ValueError, match="layers.json not found"):
        prune_task(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="on_bad_image must be one of"):
        prune_task(str(out), on_bad_image="ignore")


def test_model_spec_checks_and_resolves():
    meta = dict(model="test_vit", image_size=32, adapter="lora", checkpoint="a.pt")
    spec = ModelSpec.resolve(dict(image_size=48, adapter=None), meta)
    assert spec == ModelSpec("test_vit", image_size=48, adapter="lora", checkpoint="a.pt")
    assert ModelSpec.of("resnet18") == ModelSpec("resnet18")
    assert ModelSpec.of(dict(model="resnet18", image_size=np.int64(40))).image_size == 40
    with pytest.raises(ValueError, match="no model"):
        ModelSpec.resolve({})
    with pytest.raises(ValueError, match="adapter must be one of"):
        ModelSpec("test_vit", adapter="ia3")
    with pytest.raises(ValueError, match="adapter_dim must be an integer >= 1"):
        ModelSpec("test_vit", adapter_dim=0)
    with pytest.raises(TypeError, match="image_size must be an integer"):
        ModelSpec("test_vit", image_size="big")
    with pytest.raises(TypeError, match="a model spec must be"):
        ModelSpec.of(3)


def test_score_uses_the_data_sources_default_size_and_records_it(tmp_path):
    """score on digits runs at 64 px as run does (it ran at the model's 224), and records the
    size used: layers.json never says null, so prune rebuilds the same model."""
    with pytest.warns(NoAdaptersWarning):
        result = score_task(ModelSpec("test_vit"), "digits", str(tmp_path), split="val",
                            tsne_iter=250, device="cpu", progress=False)
    assert read_scored(str(tmp_path)).meta["image_size"] == 64
    assert result.layers.meta["image_size"] == 64
