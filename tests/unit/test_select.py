"""select_depth against the authors' walk on hand-made and random profiles."""
import warnings

import numpy as np
import pytest
import torch

import sls_fast


def authors_walk(scores, alpha):
    """The authors' loop (prune.py), restated: top layer first with best_score = 0, then a
    threshold of alpha * score[L]; the last written target wins; None if none was written."""
    target = None
    best = 0.0
    L = len(scores)
    for i in range(L):
        layer = L - i
        s = scores[layer - 1]
        if s >= alpha * best:
            target = layer
        else:
            break
        if i == 0:
            best = s
    return target


@pytest.mark.parametrize("scores,alpha,expected", [
    ([0.1, 0.2, 0.3, 0.4], 0.3, 2),  # T = 0.12: layer 1 (0.1) is below it
    ([0.15, 0.2, 0.3, 0.4], 0.3, 1),  # monotone and all above T = 0.12
    ([-0.1, 0.05, 0.2, 0.3, 0.5, 0.45], 0.3, 3),
    ([0.5, 0.6, 0.01, 0.4, 0.5], 0.3, 4),  # a dip in the middle stops the walk
    ([0.5, 0.6, 0.01, 0.4, 0.5], 0.0, 1),  # alpha 0: everything >= 0 is kept
    ([0.3], 0.3, 1),  # one layer
    ([0.2, 0.8, 0.1, 0.9], 0.3, 4),  # layer L-1 already below the threshold
    ([0.27, 0.9], 0.3, 1),  # exactly at the threshold is kept
])
def test_hand_made_profiles(scores, alpha, expected):
    assert sls_fast.select_depth(scores, alpha) == expected
    assert authors_walk(scores, alpha) == expected


@pytest.mark.parametrize("last", [-0.2, -1e-12])
def test_last_score_negative_keeps_everything(last):
    """The authors' loop writes no target (documented deviation: we keep all and warn)."""
    scores = [0.1, 0.2, 0.3, 0.4, last]
    assert authors_walk(scores, 0.3) is None
    with pytest.warns(UserWarning, match="keeping all 5 layers"):
        assert sls_fast.select_depth(scores) == 5


@pytest.mark.parametrize("scores,expected", [
    ([0.1, -0.05, 0.2, 0.0], 3),  # threshold 0: kept while >= 0, stops at -0.05
    ([0.1, 0.2, 0.0], 1),
    ([0.0, 0.0], 1),
    ([0.3, -0.01, 0.0], 3),
])
def test_last_score_exactly_zero_walks_on_like_the_authors(scores, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: this is the authors' own behaviour
        for alpha in (0.0, 0.3, 1.5):
            assert sls_fast.select_depth(scores, alpha) == expected == authors_walk(scores, alpha)


def test_random_profiles_equal_authors_walk():
    rng = np.random.default_rng(123)
    for _ in range(2000):
        L = int(rng.integers(1, 30))
        s = rng.normal(0.2, 0.3, size=L)
        alpha = float(rng.choice([0.0, 0.1, 0.3, 0.5, 1.0, 1.5]))
        if rng.random() < 0.1:
            s[-1] = 0.0  # the threshold-0 case, walked like the authors
        if s[-1] < 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert sls_fast.select_depth(s, alpha) == L
            continue
        assert sls_fast.select_depth(s, alpha) == authors_walk(s.tolist(), alpha)


def test_array_libraries():
    s = [0.1, 0.05, 0.3, 0.4]
    assert sls_fast.select_depth(np.array(s)) == 3
    assert sls_fast.select_depth(torch.tensor(s)) == 3


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        sls_fast.select_depth([0.1, float("nan"), 0.3])
    with pytest.raises(ValueError, match=r"NaN or infinity at layers \[3\]"):
        sls_fast.select_depth([0.1, 0.2, float("nan")])
    with pytest.raises(ValueError, match="infinity"):
        sls_fast.select_depth([float("inf"), 0.2])
    with pytest.raises(ValueError, match="1-D"):
        sls_fast.select_depth([[0.1, 0.2]])
    with pytest.raises(ValueError, match="1-D"):
        sls_fast.select_depth([])
    with pytest.raises(ValueError, match="alpha"):
        sls_fast.select_depth([0.1, 0.2], alpha=-0.1)
