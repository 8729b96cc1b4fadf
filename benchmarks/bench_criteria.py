"""Layer-importance criteria (sls_fast.method.criteria) against SLS's own t-SNE criterion, same
run, same features.

    pytest benchmarks/bench_criteria.py --benchmark-only --benchmark-json=out.json
    python benchmarks/ratios.py out.json --baseline sls   # each criterion against "sls"

Groups:
* ``criteria 16x1077`` -- the default task's features: EfficientNet-Lite0 (bundled ImageNet
  weights) on the digits training split at 64 px, 16 blocks of widths 16-320 (extracted once);
* ``criteria 12x10000x768`` -- synthetic ViT-B-sized features, 12 layers of 10,000 points x 768
  (``SLS_FAST_BENCH_BIG=1``: minutes on a 2-core CPU; the t-SNE there runs 250 iterations,
  said in the row's name).

Baseline ``sls``: t-SNE of all layers (``backend="auto"``) + silhouette + the alpha walk.
"""
import os

import numpy as np
import pytest
import torch

import sls_fast
from sls_fast.method.criteria import CRITERIA, apply_criterion
from utils import machine

OTHERS = [c for c in CRITERIA if c != "sls"]
BIG = os.environ.get("SLS_FAST_BENCH_BIG") == "1"


@pytest.fixture(scope="module")
def lite0_digits():
    m = sls_fast.models.load("efficientnet_lite0")
    data = sls_fast.data.digits("train", image_size=64, model=m)
    return sls_fast.extract_features(m, data, progress=False)


@pytest.fixture(scope="module")
def synthetic_big():
    rng = np.random.default_rng(0)
    y = np.arange(10_000) % 10
    means = rng.normal(size=(10, 768)).astype(np.float32)
    X = np.stack([rng.normal(size=(10_000, 768)).astype(np.float32) + (i / 12) * means[y]
                  for i in range(1, 13)])
    from sls_fast.method.extract import LayerFeatures

    return LayerFeatures(torch.from_numpy(X), torch.from_numpy(y), [f"b{i}" for i in range(12)],
                         [768] * 12)


def _sls(feats, max_iter):
    return sls_fast.score_features(feats, progress=False, max_iter=max_iter).depth


def _time(benchmark, group, feats, criterion, *, sls_iters, rounds):
    """One criterion's depth on ``feats``, timed (``sls``: the t-SNE criterion)."""
    benchmark.group = group
    benchmark.extra_info.update(method=criterion, **machine())
    if criterion == "sls":
        benchmark.extra_info["note"] = f"t-SNE {sls_iters} iterations"
        depth = benchmark.pedantic(_sls, args=(feats, sls_iters), rounds=rounds, iterations=1)
    else:
        depth = benchmark.pedantic(lambda: apply_criterion(criterion, feats, feats.labels)[1],
                                   rounds=rounds, iterations=1)
    benchmark.extra_info["depth"] = int(depth)


@pytest.mark.parametrize("criterion", ["sls"] + OTHERS)
def test_criteria_lite0_digits(benchmark, lite0_digits, criterion):
    _time(benchmark, "criteria 16x1077", lite0_digits, criterion, sls_iters=1000, rounds=3)


@pytest.mark.skipif(not BIG, reason="set SLS_FAST_BENCH_BIG=1 (minutes on a 2-core CPU)")
@pytest.mark.parametrize("criterion", ["sls"] + OTHERS)
def test_criteria_12x10000x768(benchmark, synthetic_big, criterion):
    _time(benchmark, "criteria 12x10000x768", synthetic_big, criterion, sls_iters=250, rounds=1)
