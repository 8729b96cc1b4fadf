"""score_layers end to end against the authors' pipeline restated, and LayerReport I/O."""
import os
import warnings

import numpy as np
import pytest
import torch
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score as sk_silhouette

import sls_fast
from sls_fast.extract import extract_features

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_sklearn_backend_gives_the_authors_depth(lite0_digits):
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
    # the fast backend picks a depth within one layer of the authors'
    fast = sls_fast.score_layers(model, data, tsne_backend="native", progress=False,
                                 metrics=("silhouette",))
    assert abs(fast.depth - depth) <= 1, (fast.depth, depth, fast.scores["silhouette"], scores)


def test_report_json_round_trip_and_plots(tmp_path, lite0_digits):
    model, data = lite0_digits
    rep = sls_fast.score_layers(model, torch.utils.data.Subset(data, list(range(120))),
                                tsne_backend="native", max_iter=300, progress=False)
    path = tmp_path / "layers.json"
    rep.to_json(str(path))
    back = sls_fast.LayerReport.from_json(str(path))
    assert back.depth == rep.depth and back.layer_names == rep.layer_names
    for k in rep.scores:
        np.testing.assert_allclose(back.scores[k], rep.scores[k])
    np.testing.assert_allclose(back.embeddings, rep.embeddings, atol=1e-6)
    paths = back.plot(str(tmp_path / "plots"))
    assert [os.path.basename(p) for p in paths] == ["scores.png", "tsne_layers.png"]
    assert all(os.path.getsize(p) > 10_000 for p in paths)
    assert "kept depth K" in rep.summary()
