"""Layer-importance criteria (sls_fast.method.criteria) against independent references on
fresh random inputs of odd sizes, on synthetic layer profiles whose answer is known, and
their refusals."""
import math

import numpy as np
import pytest
import torch

from sls_fast.method.criteria import (CRITERIA, apply_criterion, check_criterion,
                                      criterion_curve, criterion_depth)

pytestmark = pytest.mark.usefixtures("one_thread")


def _clusters(rng, L, N, D, C, strength):
    y = np.arange(N) % C
    means = rng.normal(size=(C, D))
    X = np.stack([rng.normal(size=(N, D)) + s * means[y] for s in strength]).astype(np.float32)
    return X, y


def test_knn_matches_scikit_learn_leave_one_out(rng):
    from sklearn.neighbors import NearestNeighbors

    X, y = _clusters(rng, 3, 137, 13, 4, [0.3, 0.8, 1.5])
    k = 7
    ours = criterion_curve("knn", X, y, k=k)
    for layer in range(3):
        nn_ = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute")
        idx = nn_.fit(X[layer].astype(np.float64)).kneighbors(return_distance=False,
                                                               n_neighbors=k)
        # kneighbors() without X leaves each point out of its own neighbours
        pred = np.array([np.bincount(y[row], minlength=4).argmax() for row in idx])
        ref = float((pred == y).mean())
        assert abs(ours[layer] - ref) <= 1.0 / len(y) + 1e-12, (layer, ours[layer], ref)


def test_linear_probe_within_one_point_of_scikit_learn(rng):
    from sklearn.linear_model import LogisticRegression

    from sls_fast.method.criteria import _split

    X, y = _clusters(rng, 2, 611, 9, 3, [0.4, 1.0])
    l2 = 1e-3
    ours = criterion_curve("linear-probe", X, y, l2=l2)
    tr, va = (t.numpy() for t in _split(torch.as_tensor(y), 0.3))
    for layer in range(2):
        x = X[layer].astype(np.float64)
        mu, sd = x[tr].mean(0), x[tr].std(0, ddof=1)
        z = (x - mu) / sd
        # ours: mean cross-entropy + l2 / 2 |W|^2  ==  sklearn's C sum CE + 1/2 |W|^2, C = 1/(l2 n)
        clf = LogisticRegression(C=1.0 / (l2 * len(tr)), max_iter=2000, tol=1e-8)
        ref = clf.fit(z[tr], y[tr]).score(z[va], y[va])
        assert abs(ours[layer] - ref) <= 0.01, (layer, ours[layer], ref)


def test_cka_matches_the_gram_matrix_form_in_float64(rng):
    X = [rng.normal(size=(83, d)).astype(np.float32) for d in (5, 11, 7)]
    X[1][:, :5] += 2 * X[2][:, :5]  # some shared structure with the last layer
    ours = criterion_curve("cka", X)

    def hsic(K, L):
        n = len(K)
        H = np.eye(n) - 1.0 / n
        return np.trace(K @ H @ L @ H)

    last = X[-1].astype(np.float64)
    Ly = last @ last.T
    for i, x in enumerate(X):
        Kx = x.astype(np.float64) @ x.astype(np.float64).T
        ref = hsic(Kx, Ly) / math.sqrt(hsic(Kx, Kx) * hsic(Ly, Ly))
        assert abs(ours[i] - ref) <= 1e-9, (i, ours[i], ref)
    assert abs(ours[-1] - 1.0) <= 1e-12


def test_block_influence_and_angular_match_direct_formulas(rng):
    X = [rng.normal(size=(51, 6)).astype(np.float32) for _ in range(3)] + \
        [rng.normal(size=(51, 4)).astype(np.float32)] + [rng.normal(size=(51, 4)).astype(np.float32)]

    def cos(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    bi = criterion_curve("block-influence", X)
    assert np.isnan(bi[0]) and np.isnan(bi[3])  # layer 1 and the width change: undefined
    for i in (1, 2, 4):
        assert abs(bi[i] - (1 - cos(X[i - 1], X[i]).mean())) <= 1e-9
    ang = criterion_curve("angular", X)
    assert np.isnan(ang[:3]).all()  # widths other than the last's
    for i in (3, 4):  # arccos is steep at 1: a layer with itself is 0 only to ~sqrt(eps)
        assert abs(ang[i] - (np.arccos(np.clip(cos(X[i], X[-1]), -1, 1)) / np.pi).mean()) <= 1e-6


def test_silhouette_raw_matches_scikit_learn(rng):
    from sklearn.metrics import silhouette_score

    X, y = _clusters(rng, 2, 97, 7, 3, [0.5, 2.0])
    ours = criterion_curve("silhouette-raw", X, y)
    for i in range(2):
        assert abs(ours[i] - silhouette_score(X[i].astype(np.float64), y)) <= 1e-5


def _rise_then_flat(rng, L=10, top=5, N=300, C=4, D=16):
    """Class separation rises until layer ``top`` and stays flat after it."""
    y = np.arange(N) % C
    means = rng.normal(size=(C, D))
    X = np.stack([rng.normal(size=(N, D)) + min(i, top) / top * means[y]
                  for i in range(1, L + 1)]).astype(np.float32)
    for i in range(top, L):
        X[i] = X[top - 1]  # flat: later layers carry the same features
    return X, y


@pytest.mark.parametrize("name", ["knn", "linear-probe", "cka"])
def test_a_rise_then_plateau_is_cut_at_the_plateau(name, rng):
    X, y = _rise_then_flat(rng)
    _, depth = apply_criterion(name, X, y)
    assert abs(depth - 5) <= 1, depth


@pytest.mark.parametrize("name", ["knn", "linear-probe"])
def test_a_sagging_top_is_not_cut_below_the_sag(name, rng):
    """Separation rises to layer 6 and sags over layers 7-10: the depth is the one the same
    rise would get with a flat top (the sag moves nothing), and never inside the sag."""
    N, C, D = 300, 4, 16
    y = np.arange(N) % C
    means = rng.normal(size=(C, D))
    noise = rng.normal(size=(10, N, D))
    strength = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 0.7, 0.5, 0.4, 0.3]
    sag = np.stack([noise[i] + s * means[y] for i, s in enumerate(strength)]).astype(np.float32)
    flat = sag.copy()
    flat[6:] = sag[5]  # the same rise, then the peak layer's features kept
    _, depth = apply_criterion(name, sag, y)
    _, depth_flat = apply_criterion(name, flat, y)
    assert depth == depth_flat and depth <= 6, (depth, depth_flat)


def test_block_influence_drops_layers_that_do_little():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8)).astype(np.float32)
    X = [rng.normal(size=(40, 8)).astype(np.float32) for _ in range(4)]
    X += [X[-1] + 1e-3 * rng.normal(size=(40, 8)).astype(np.float32) for _ in range(3)]
    X[0] = base
    curve, depth = apply_criterion("block-influence", X)
    assert depth == 4, (depth, curve)


def test_last_fraction_and_the_rules_on_given_curves():
    assert criterion_depth("last-fraction", np.zeros(12)) == 9
    assert criterion_depth("last-fraction", np.zeros(12), fraction=0.5) == 6
    assert criterion_depth("knn", [0.2, 0.5, 0.895, 0.9, 0.88]) == 3
    assert criterion_depth("cka", [0.1, 0.95, 0.5, 1.0]) == 2
    assert criterion_depth("angular", [0.5, 0.3, 0.1, 0.0]) == 3
    assert criterion_depth("silhouette-raw", [0.1, 0.2, 0.05, 0.3], alpha=0.3) == 4


def test_bad_criteria_and_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown criterion 'tsne'; known: sls, silhouette-raw"):
        check_criterion("tsne")
    with pytest.raises(ValueError, match="has no parameter 'kk'; it takes k, tolerance"):
        check_criterion("knn", {"kk": 3})
    with pytest.raises(ValueError, match="tolerance must be in"):
        check_criterion("knn", {"tolerance": 2})
    with pytest.raises(ValueError, match="k must be an integer"):
        check_criterion("knn", {"k": 2.5})
    X = np.zeros((2, 10, 3), np.float32)
    with pytest.raises(ValueError, match="k = 10 needs more than 10 points"):
        criterion_curve("knn", X + np.arange(3), np.arange(10) % 2)
    with pytest.raises(ValueError, match="one class"):
        criterion_curve("knn", X, np.zeros(10), k=3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        criterion_curve("cka", X * np.nan)
    with pytest.raises(ValueError, match="the sls curve is the silhouette of the t-SNE"):
        criterion_curve("sls", X)
    assert list(CRITERIA)[0] == "sls" and len(CRITERIA) == 8


def test_criteria_beside_sls_in_the_report_and_back(rng, tmp_path):
    import json

    import jsonschema

    import sls_fast
    from sls_fast.common.schema import schema
    from sls_fast.method.extract import LayerFeatures
    from sls_fast.method.score import LayerReport

    X, y = _clusters(rng, 5, 90, 6, 3, [0.2, 0.6, 1.2, 2.0, 2.0])
    feats = LayerFeatures(torch.from_numpy(X), torch.from_numpy(y), [f"b{i}" for i in range(5)],
                          [6] * 5)
    r = sls_fast.score_features(feats, progress=False, max_iter=250, perplexity=10,
                                criteria=["knn", "block-influence", "sls"],
                                criterion_params={"knn": {"k": 5}})
    depths = r.criterion_depths()
    assert set(depths) == {"sls", "knn", "block-influence"} and depths["sls"] == r.depth
    assert r.meta["criteria"]["knn"]["params"]["k"] == 5
    np.testing.assert_allclose(r.scores["knn"], criterion_curve("knn", X, y, k=5))
    path = tmp_path / "layers.json"
    r.to_json(str(path))
    d = json.loads(path.read_text())
    assert d["scores"]["block-influence"][0] is None  # undefined: strict JSON null, not NaN
    jsonschema.validate(d, schema("layers"))
    back = LayerReport.from_json(str(path))
    assert back.criterion_depths() == depths and np.isnan(back.scores["block-influence"][0])
    assert "other criteria would keep: knn" in back.summary()
    assert any(p.endswith("scores.png") for p in back.plot(str(tmp_path)))
    with pytest.raises(ValueError, match="criterion_params for \\['cka'\\]"):
        sls_fast.score_features(feats, progress=False, max_iter=250, perplexity=10,
                                criteria=["knn"], criterion_params={"cka": {"threshold": 0.5}})


def test_cli_names_a_bad_criterion_in_one_line(tmp_path, capsys):
    from sls_fast.cli import main

    out = tmp_path / "o"
    for argv, match in ((["--criteria", "knn,tsne"], "unknown criterion 'tsne'"),
                        (["--criteria", "knn", "--criterion-params", "knn.k=0.5"],
                         "k must be in"),
                        (["--criterion-params", "knn:k=3"], "write NAME.PARAM=VALUE")):
        code = main(["run", "--out", str(out), "--no-progress", "--quiet", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and match in err[0], err
        assert not out.exists()


def test_readme_criteria_table_is_generated():
    import pathlib
    import re

    from sls_fast.method.criteria import criteria_table

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    m = re.search(r"<!-- criteria-table:start -->\n(.*?)\n<!-- criteria-table:end -->", readme,
                  re.S)
    assert m, "README.md lacks the criteria-table markers"
    assert m.group(1).strip() == criteria_table().strip(), (
        "README criteria table is out of date; paste sls_fast.method.criteria.criteria_table()")


def test_the_oracle_measures_every_depth_and_each_criterions_regret(rng, tmp_path):
    from sls_fast.method.criteria import depth_oracle, plot_oracle, probe_accuracy
    from sls_fast.method.extract import LayerFeatures

    def feats(n):
        X, y = _clusters(np.random.default_rng(7 + n), 6, n, 8, 3,
                         [0.1, 0.5, 1.0, 2.0, 1.2, 0.6])  # best at layer 4, sagging after
        return LayerFeatures(torch.from_numpy(X), torch.from_numpy(y),
                             [f"b{i}" for i in range(6)], [8] * 6)

    train, val = feats(240), feats(121)
    o = depth_oracle(train, val, {"sls": 2, "knn": 4, "last-fraction": 6})
    acc = np.array([o["accuracy"][str(k)] for k in range(1, 7)])
    ref = probe_accuracy(list(train.features.unbind(0)), train.labels,
                         list(val.features.unbind(0)), val.labels)
    np.testing.assert_allclose(acc, ref)
    assert acc.argmax() == 3 and acc[3] > acc[0] + 0.2
    for name, k in (("sls", 2), ("knn", 4), ("last-fraction", 6)):
        c = o["criteria"][name]
        assert c["depth"] == k and c["accuracy_at_depth"] == acc[k - 1]
        assert c["regret_full"] == pytest.approx(acc[-1] - acc[k - 1])
        assert c["regret_best"] == pytest.approx(acc[:k].max() - acc[k - 1]) and c["regret_best"] >= 0
    assert o["criteria"]["knn"]["regret_full"] < 0  # the peak beats the sagging full depth
    path = plot_oracle(o, str(tmp_path / "oracle.png"))
    assert (tmp_path / "oracle.png").stat().st_size > 10_000 and path.endswith("oracle.png")


def test_a_criterion_decides_the_depth_and_sls_is_still_reported(rng, tmp_path):
    import jsonschema

    import sls_fast
    from sls_fast.common.schema import schema
    from sls_fast.method.extract import LayerFeatures
    from sls_fast.method.score import LayerReport

    X, y = _clusters(rng, 7, 93, 6, 3, [0.1, 0.4, 2.0, 2.0, 2.0, 2.0, 2.0])  # flat from layer 3
    feats = LayerFeatures(torch.from_numpy(X), torch.from_numpy(y), [f"b{i}" for i in range(7)],
                          [6] * 7)
    r = sls_fast.score_features(feats, progress=False, max_iter=250, perplexity=10,
                                criterion="knn", criterion_params={"knn": {"k": 5}}, repeats=2)
    curve, k = apply_criterion("knn", X, y, k=5)
    assert r.criterion == "knn" and r.depth == k and r.selection_metric == "knn"
    np.testing.assert_allclose(r.scores["knn"], curve)
    assert r.run_depths == [k, k] and r.confidence == 1.0  # knn has no t-SNE spread
    assert "silhouette" in r.scores and set(r.criterion_depths()) == {"sls", "knn"}
    text = r.summary()
    assert f"kept depth K = {k} of 7, chosen by knn (k = 5" in text
    assert f"SLS on the mean of 2 runs (alpha = 0.3) would keep {r.criterion_depths()['sls']}" \
        in text and "per-run depths" not in text
    d = r.to_dict()
    assert d["criterion"] == "knn" and d["selection_metric"] == "knn"
    jsonschema.validate(d, schema("layers"))
    back = LayerReport.from_json(r.to_json())
    assert back.criterion == "knn" and back.depth == k and back.run_depths == [k, k]
    # re-selection: SLS again (its own depth and runs), or another criterion scored
    sls = back.select("sls")
    assert sls.depth == r.criterion_depths()["sls"] and sls.criterion == "sls"
    assert sls.select("knn").depth == k and back.select("knn", alpha=0.9).depth == k
    with pytest.raises(ValueError, match="criterion 'cka' was not scored"):
        back.select("cka")
    assert any(p.endswith("scores.png") for p in back.plot(str(tmp_path)))
    # the depth-kept criterion is scored even when criteria= does not name it
    with pytest.raises(ValueError, match="unknown criterion 'tsne'; known: sls, silhouette-raw"):
        sls_fast.score_features(feats, progress=False, criterion="tsne")
    with pytest.raises(ValueError, match="give SLS's alpha once"):
        sls_fast.score_features(feats, progress=False, max_iter=250, perplexity=10,
                                criterion_params={"sls": {"alpha": 0.5}})
    with pytest.raises(TypeError, match="list of names"):
        sls_fast.score_features(feats, progress=False, criteria="knn")


def test_the_full_oracle_judges_against_the_full_models_accuracy():
    from sls_fast.method.criteria import oracle_report

    o = oracle_report([0.5, 0.8, 0.9, 0.85], {"sls": 2, "knn": 4}, kind="full", split="test",
                      full_accuracy=0.88)
    assert o["kind"] == "full" and o["split"] == "test" and o["full_accuracy"] == 0.88
    assert o["criteria"]["sls"] == dict(depth=2, accuracy_at_depth=0.8,
                                        regret_full=pytest.approx(0.08), regret_best=0.0)
    assert o["criteria"]["knn"]["regret_best"] == pytest.approx(0.05)
    assert oracle_report([0.5, 0.7], {"sls": 1}, kind="probe", split="val")["full_accuracy"] == 0.7
    with pytest.raises(ValueError, match="depth 3 outside 1..2"):
        oracle_report([0.5, 0.7], {"sls": 3}, kind="probe", split="val")
