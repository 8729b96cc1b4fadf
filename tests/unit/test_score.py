"""score_layers end to end against the authors' pipeline restated, and LayerReport I/O."""
import json
import os
import warnings

import numpy as np
import pytest
import torch
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score as sk_silhouette
from threadpoolctl import threadpool_limits

import sls_fast
from sls_fast.method.extract import extract_features

pytestmark = pytest.mark.usefixtures("one_thread", "one_openmp_thread")


@pytest.fixture(scope="module")
def one_openmp_thread():
    """scikit-learn's and our OpenMP loops on one thread: small problems, and no spin-waits
    when the 2 cores are shared."""
    with threadpool_limits(1):
        yield


def authors_depth(features, labels, alpha=0.3):
    """The authors' pipeline on the same features: scikit-learn t-SNE per layer (init "pca",
    random_state 0), per-axis min-max, silhouette, the walk down from the last layer."""
    scores = []
    for f in features:
        e = TSNE(n_components=2, init="pca", random_state=0).fit_transform(np.asarray(f))
        e = (e - e.min(0)) / (e.max(0) - e.min(0))
        scores.append(sk_silhouette(e, labels))
    depth, best = None, 0.0
    for i in range(len(scores)):
        layer = len(scores) - i
        if scores[layer - 1] >= alpha * best:
            depth = layer
        else:
            break
        if i == 0:
            best = scores[layer - 1]
    return depth, np.array(scores)


@pytest.fixture(scope="module")
def lite0_digits():
    """The real pre-trained EfficientNet-Lite0 on 240 digits at 64 px (last block scores > 0)."""
    model = sls_fast.models.load("efficientnet_lite0")
    data = sls_fast.data.digits("train", image_size=64, model=model)
    sub = torch.utils.data.Subset(data, list(range(240)))
    return model, sub


@pytest.mark.slow
def test_sklearn_backend_gives_the_authors_depth(lite0_digits):
    """The sklearn backend *is* the authors' pipeline: on one machine, in one process, it gives
    their scores and their depth. (A single run of any other backend is one draw from a
    distribution: that is compared on mean curves in benchmarks/bench_fidelity.py, and on a
    high-margin profile below.)"""
    model, data = lite0_digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sls_fast.score_layers(model, data, tsne_backend="sklearn", progress=False)
    feats = extract_features(model, data, progress=False).to_numpy()
    depth, scores = authors_depth(feats.features, feats.labels)
    assert depth is not None
    # float32 embeddings (as scikit-learn returns them) scored in float32: equal to ~1e-7
    np.testing.assert_allclose(report.scores["silhouette"], scores, rtol=1e-5, atol=1e-6)
    assert report.depth == depth
    assert set(report.scores) == {"silhouette", "calinski_harabasz", "davies_bouldin"}
    assert report.embeddings.shape == (16, 240, 2)
    assert report.embeddings.min() >= 0 and report.embeddings.max() <= 1
    assert set(report.timings) == {"extract", "tsne", "metrics", "select"}


@pytest.mark.slow
def test_native_mean_curve_tracks_the_authors_within_the_measured_spread(lite0_digits):
    """Fidelity as a distribution, on real features (EfficientNet-Lite0, 150 digits, 4 layers):
    the mean silhouette over S runs of the native backend (perturbed starts, one batch) and of
    the authors' pipeline (scikit-learn over S row orders) agree within 5 standard errors,
    the errors measured from the runs themselves. (Measured: |z| < 1.7 on two seeds.)"""
    model, data = lite0_digits
    feats = extract_features(model, torch.utils.data.Subset(data, list(range(150))),
                             progress=False).to_numpy()
    layers = [feats.features[i] for i in (3, 7, 11, 15)]
    S = 5
    curves = {}
    for backend in ("native", "sklearn"):
        emb = sls_fast.tsne(layers, backend=backend, repeats=S, seed=1)
        curves[backend] = sls_fast.silhouette_score(emb.reshape(-1, 150, 2),
                                                    feats.labels).reshape(S, -1)
    a, b = curves["native"], curves["sklearn"]
    se = np.sqrt(a.var(0, ddof=1) / S + b.var(0, ddof=1) / S)
    assert (se > 0).all(), se  # the runs do differ
    z = (a.mean(0) - b.mean(0)) / np.maximum(se, 0.005)
    assert (np.abs(z) < 5).all(), (z, a.mean(0), b.mean(0), se)


def margin_profile():
    """6 layers x 200 points x 32 dims, 8 classes: layers 1-2 pure noise (silhouette ~ 0),
    layers 3-6 well-separated clusters (~0.8). The threshold 0.3 x score[6] ~ 0.25 lies ~0.25
    from every score, many times the run-to-run spread (~0.02): every run of every backend
    keeps 3 layers."""
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(8), 25)
    centres = rng.normal(scale=3.0, size=(8, 32))
    feats = [(sep * centres[labels] + rng.normal(size=(200, 32))).astype(np.float32)
             for sep in (0.0, 0.0, 1.0, 1.0, 1.0, 1.0)]
    return feats, labels


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["native", "torch", "sklearn"])
def test_high_margin_profile_same_depth_every_backend(backend):
    feats, labels = margin_profile()
    emb = sls_fast.tsne(feats, backend=backend, seed=0)
    sil = sls_fast.silhouette_score(emb, labels)
    threshold = 0.3 * sil[-1]
    margin = np.abs(sil - threshold).min()
    assert margin > 0.15, (backend, sil)  # ~0.4 measured; the spread over runs ~0.01
    assert sls_fast.select_depth(sil) == 3, (backend, sil)


def test_report_json_round_trip_and_plots(tmp_path, lite0_digits):
    model, data = lite0_digits
    rep = sls_fast.score_layers(model, torch.utils.data.Subset(data, list(range(120))),
                                tsne_backend="native", max_iter=300, progress=False, repeats=3)
    S, L = 3, 16
    assert rep.repeats == S and len(rep.run_depths) == S
    assert {k: v.shape for k, v in rep.runs.items()} == {k: (S, L) for k in rep.scores}
    for k in rep.scores:
        np.testing.assert_allclose(rep.scores[k], rep.runs[k].mean(0))
    np.testing.assert_allclose(rep.spread, rep.runs["silhouette"].std(0, ddof=1))
    assert rep.depth == sls_fast.select_depth(rep.scores["silhouette"])
    assert rep.run_depths == [sls_fast.select_depth(r) for r in rep.runs["silhouette"]]
    assert rep.confidence == np.mean(np.array(rep.run_depths) == rep.depth)
    assert rep.embeddings.shape == (L, 120, 2)
    path = tmp_path / "layers.json"
    rep.to_json(str(path))
    back = sls_fast.LayerReport.from_json(str(path))
    assert back.depth == rep.depth and back.layer_names == rep.layer_names
    assert back.run_depths == rep.run_depths and back.confidence == rep.confidence
    for k in rep.scores:
        np.testing.assert_array_equal(back.scores[k], rep.scores[k])
        np.testing.assert_array_equal(back.runs[k], rep.runs[k])
    np.testing.assert_array_equal(back.spread, rep.spread)
    np.testing.assert_allclose(back.embeddings, rep.embeddings, atol=1e-6)
    paths = back.plot(str(tmp_path / "plots"))
    assert [os.path.basename(p) for p in paths] == ["scores.png", "tsne_layers.png"]
    assert all(os.path.getsize(p) > 10_000 for p in paths)
    text = rep.summary()
    assert "kept depth K" in text and "per-run depths: " + " ".join(map(str, rep.run_depths)) \
        in text and "confidence" in text
    # run 0 of the repeats is the single run with the same seed
    one = sls_fast.score_layers(model, torch.utils.data.Subset(data, list(range(120))),
                                tsne_backend="native", max_iter=300, progress=False,
                                metrics=("silhouette",))
    np.testing.assert_array_equal(one.runs["silhouette"][0], rep.runs["silhouette"][0])
    assert one.repeats == 1 and one.confidence == 1.0 and one.run_depths == [one.depth]
    assert not one.spread.any()


def test_single_run_report_without_repeat_fields_loads():
    """A report written before repeats existed (no runs / spread / confidence) still loads."""
    d = dict(depth=2, alpha=0.3, layer_names=["a", "b", "c"],
             scores={"silhouette": [0.1, 0.3, 0.4]})
    rep = sls_fast.LayerReport.from_json(json.dumps(d))
    assert rep.repeats == 1 and rep.run_depths == [2] and rep.confidence == 1.0
    np.testing.assert_array_equal(rep.runs["silhouette"], [[0.1, 0.3, 0.4]])


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_repeats(bad, lite0_digits):
    model, data = lite0_digits
    with pytest.raises(ValueError, match="repeats"):
        sls_fast.score_layers(model, data, repeats=bad, progress=False)


def test_class_palette_is_distinct_up_to_20_and_tab10_first():
    """One colour per class index: 4 classes get tab10's first four (blue, orange, green, red),
    not four points spread over a colour map (blue / red / pink / cyan)."""
    from matplotlib import colormaps

    from sls_fast.method.score import class_palette

    assert class_palette(4) == [colormaps["tab10"](k) for k in range(4)]
    assert len(set(class_palette(20))) == 20
    assert class_palette(21)[20] == class_palette(21)[0]  # beyond 20 they repeat


def test_scores_plot_says_when_the_bands_are_thinner_than_the_line():
    from sls_fast.method.score import band_note

    flat = np.tile(np.linspace(0.1, 0.5, 6), (8, 1)) + 1e-5 * np.arange(8)[:, None]
    assert band_note(flat, axis_span=0.45) == \
        "the 8 runs differ by < 7e-05: bands thinner than the line"
    spread = flat + np.random.default_rng(0).normal(0, 0.03, flat.shape)
    assert band_note(spread, axis_span=0.45) is None  # visible bands need no words
    assert band_note(flat[:1], axis_span=0.45) is None  # one run has no band


def test_tsne_legend_names_only_labels_that_index_them():
    """Class names label the legend only when the labels index them; labels {1, 3} with two
    names keep their values (the names cannot be told apart from a misalignment)."""
    from sls_fast.method.score import legend_labels

    assert legend_labels(np.array([0, 1]), ["cat", "dog"]) == ["cat", "dog"]
    assert legend_labels(np.array([0, 2]), ["cat", "dog", "bird"]) == ["cat", "bird"]
    assert legend_labels(np.array([1, 3]), ["a", "b"]) == ["1", "3"]
    assert legend_labels(np.array([0, 1]), []) == ["0", "1"]
