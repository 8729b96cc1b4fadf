"""t-SNE of a ViT-B-like feature set (L = 12 layers, N = 1,000 images, D = 768, 10 classes):
scikit-learn layer by layer (the reference), openTSNE layer by layer, sls_fast's batched
"native" t-SNE (the whole optimisation in one C++ call) and the "auto" path (= "native" on a CPU), in the same run, with the mean trustworthiness (n_neighbors=10) of each beside its time.

    pytest benchmarks/bench_tsne.py --benchmark-only -q

Ratios against scikit-learn (measured in the same run) are written to each row's
``extra_info`` and printed at the end. The batched torch backend runs here only on CUDA (its
exact O(L N^2) iterations take minutes on a 2-core CPU; set ``SLS_BENCH_TORCH_CPU=1`` to time
it anyway); ``benchmarks/gpu_tsne.py`` times it on a GPU. ``SLS_BENCH_ROUNDS`` sets the rounds
of the fast rows (default 3; the scikit-learn baseline runs once: it is deterministic and slow).
"""
import importlib.util
import os

import numpy as np
import pytest
import torch

import sls_fast.method.embed as embed
from sls_fast.method.embed import tsne
from utils import machine, mean_trustworthiness, vit_like_features

L, N, D, CLASSES = 12, 1000, 768, 10
ROUNDS = int(os.environ.get("SLS_BENCH_ROUNDS", "3"))
HAS_OPENTSNE = importlib.util.find_spec("openTSNE") is not None
_RESULTS = {}


@pytest.fixture(scope="module")
def features():
    """``[12, 1000, 768]`` float32 features of the shared ViT-B-like problem, NumPy."""
    x, labels = vit_like_features(N, layers=L, dim=D, classes=CLASSES)
    return x.numpy(), labels.numpy()


def _record(benchmark, name, x, emb):
    trust = mean_trustworthiness(x, emb)
    if benchmark.stats is None:  # --benchmark-disable: nothing was timed
        return trust
    median = benchmark.stats.stats.median
    _RESULTS[name] = (median, trust)
    info = benchmark.extra_info
    benchmark.group = f"tsne L={L} N={N} D={D}"
    info.update(method=name, trustworthiness=round(trust, 4), L=L, N=N, D=D, **machine())
    if "sklearn" in _RESULTS and name != "sklearn":
        base_t, base_trust = _RESULTS["sklearn"]
        info["speedup_vs_sklearn"] = round(base_t / median, 2)
        info["trust_minus_sklearn"] = round(trust - base_trust, 4)
    return trust


def test_sklearn_serial(benchmark, features):
    x, _ = features
    emb = benchmark.pedantic(lambda: tsne(x, backend="sklearn", normalize=None), rounds=1,
                             iterations=1)
    _record(benchmark, "sklearn", x, emb)


@pytest.mark.skipif(not HAS_OPENTSNE, reason="openTSNE not installed")
def test_opentsne_serial(benchmark, features):
    x, _ = features
    emb = benchmark.pedantic(lambda: tsne(x, backend="opentsne", normalize=None), rounds=ROUNDS,
                             iterations=1, warmup_rounds=0)
    _record(benchmark, "opentsne", x, emb)


def test_native_batched(benchmark, features):
    """Ours on the CPU: all 12 layers at once, one C++/OpenMP optimiser call."""
    x, _ = features
    emb = benchmark.pedantic(lambda: tsne(x, backend="native", normalize=None), rounds=ROUNDS,
                             iterations=1, warmup_rounds=0)
    trust = _record(benchmark, "native", x, emb)
    if "sklearn" in _RESULTS:
        assert trust >= _RESULTS["sklearn"][1] - 0.02, "native loses > 0.02 trustworthiness"


def test_auto(benchmark, features):
    x, _ = features
    chosen = embed._resolve("auto", torch.device("cpu"), N)
    benchmark.extra_info["backend"] = chosen
    emb = benchmark.pedantic(lambda: tsne(x, normalize=None), rounds=ROUNDS, iterations=1,
                             warmup_rounds=0)
    trust = _record(benchmark, "auto", x, emb)
    if "sklearn" in _RESULTS:
        assert trust >= _RESULTS["sklearn"][1] - 0.02, "auto path loses > 0.02 trustworthiness"


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("SLS_BENCH_TORCH_CPU") != "1",
                    reason="batched exact t-SNE on CPU takes minutes; runs on CUDA "
                           "(or set SLS_BENCH_TORCH_CPU=1)")
def test_torch_batched(benchmark, features):
    x, _ = features
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t = torch.from_numpy(x).to(dev)

    def run():
        out = tsne(t, backend="torch", normalize=None)
        if out.is_cuda:
            torch.cuda.synchronize()
        return out

    emb = benchmark.pedantic(run, rounds=1 if dev == "cpu" else ROUNDS, iterations=1,
                             warmup_rounds=0 if dev == "cpu" else 1)
    benchmark.extra_info["device"] = dev
    _record(benchmark, f"torch ({dev})", x, emb)


# ------------------------------------------------------------------------------------------------
# The default run's scoring problem: EfficientNet-Lite0 (real ImageNet weights) features of the
# 1,077 digits of the training split at 64 px, 16 layers of widths 16..320.
# ------------------------------------------------------------------------------------------------
_DEFAULT = {}


@pytest.fixture(scope="module")
def default_problem():
    import sls_fast

    torch.manual_seed(0)
    model = sls_fast.models.load("efficientnet_lite0")
    train = sls_fast.data.digits("train", image_size=64, model=model)
    lf = sls_fast.extract_features(model, train, progress=False)
    feats = [np.ascontiguousarray(f, dtype=np.float32) for f in lf.to_numpy().features]
    return model, train, feats


def _record_default(benchmark, name, feats, emb):
    trust = mean_trustworthiness(feats, emb)
    if benchmark.stats is None:
        return trust
    median = benchmark.stats.stats.median
    _DEFAULT[name] = (median, trust)
    benchmark.group = "tsne default run: Lite0 16 layers x 1077 digits"
    benchmark.extra_info.update(method=name, trustworthiness=round(trust, 4),
                                **machine())
    if "sklearn" in _DEFAULT and name != "sklearn":
        benchmark.extra_info["speedup_vs_sklearn"] = round(_DEFAULT["sklearn"][0] / median, 2)
        benchmark.extra_info["trust_minus_sklearn"] = round(trust - _DEFAULT["sklearn"][1], 4)
    return trust


def test_default_sklearn_serial(benchmark, default_problem):
    _, _, feats = default_problem
    emb = benchmark.pedantic(lambda: tsne(feats, backend="sklearn", normalize=None), rounds=1,
                             iterations=1)
    _record_default(benchmark, "sklearn", feats, emb)


def test_default_native(benchmark, default_problem):
    """Ours: all 16 layers in one problem; the phases are timed once more, apart."""
    import time

    from sls_fast.kernels import tsne as K

    _, _, feats = default_problem
    emb = benchmark.pedantic(lambda: tsne(feats, backend="native", normalize=None),
                             rounds=ROUNDS, iterations=1, warmup_rounds=0)
    trust = _record_default(benchmark, "native", feats, emb)
    layers = [torch.from_numpy(f) for f in feats]
    t0 = time.perf_counter()
    y0 = K.initial_embedding(K.reduce_layers(layers, 0, 2), "pca", 0)
    t1 = time.perf_counter()
    aff = K.affinities_by_width(layers, 30.0, None)
    t2 = time.perf_counter()
    K.tsne_optimize(y0, aff, forces="native")
    t3 = time.perf_counter()
    benchmark.extra_info.update(phase_init_s=round(t1 - t0, 3), phase_affinities_s=round(t2 - t1, 3),
                                phase_optimise_s=round(t3 - t2, 3))
    if "sklearn" in _DEFAULT:
        assert trust >= _DEFAULT["sklearn"][1] - 0.005, "native loses > 0.005 trustworthiness"


def test_default_score_layers_repeats8(benchmark, default_problem):
    """``score_layers(repeats=8)`` end to end on the default data (extraction included)."""
    import sls_fast

    model, train, _ = default_problem
    rep = benchmark.pedantic(lambda: sls_fast.score_layers(model, train, repeats=8,
                                                           progress=False),
                             rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "score_layers repeats=8: Lite0 16 layers x 1077 digits"
    benchmark.extra_info.update(depth=rep.depth, run_depths=list(rep.run_depths),
                                confidence=rep.confidence,
                                timings={k: round(v, 3) for k, v in rep.timings.items()})
    _DEFAULT["score_layers repeats=8"] = (benchmark.stats.stats.median if benchmark.stats else 0,
                                          float("nan"))


def teardown_module(module):  # both problems' tables
    for title, res in (("t-SNE of 12 x 1000 x 768", _RESULTS),
                       ("default run: Lite0 16 layers x 1077 digits", _DEFAULT)):
        if not res:
            continue
        base = res.get("sklearn")
        print(f"\n{title} (median seconds, mean trustworthiness):")
        for name, (sec, trust) in res.items():
            comparable = base and name != "sklearn" and trust == trust  # repeats=8: no ratio
            ratio = f"  {base[0] / sec:5.2f}x vs sklearn" if comparable else ""
            print(f"  {name:<24} {sec:8.2f} s  trust {trust:.4f}{ratio}")
