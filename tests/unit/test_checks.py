"""One validation convention (sls_fast.common.checks): a wrong type is a TypeError, a value out
of range a ValueError, both worded "NAME must be WHAT, got VALUE"; NumPy scalars are numbers."""
import numpy as np
import pytest

import sls_fast
from sls_fast.common.checks import check_choice, check_number


def test_check_number_types_ranges_and_numpy_scalars():
    assert check_number(np.float32(0.25), "alpha", low=0) == 0.25
    assert type(check_number(np.int64(3), "k", integer=True, low=1)) is int
    assert check_number(None, "k", integer=True, allow_none=True) is None
    with pytest.raises(TypeError, match=r"k must be an integer >= 1, got 2.5 \(float\)"):
        check_number(2.5, "k", integer=True, low=1)
    with pytest.raises(TypeError, match="got True"):
        check_number(True, "alpha", low=0)  # a bool is not a number here
    with pytest.raises(ValueError, match="lr must be a number > 0, got 0"):
        check_number(0, "lr", low=0, low_open=True)
    with pytest.raises(ValueError, match="finite"):
        check_number(float("inf"), "alpha", low=0)
    with pytest.raises(ValueError, match="p must be a number >= 0 and <= 1, got 1.5"):
        check_number(1.5, "p", low=0, high=1)


def test_check_choice():
    assert check_choice("pca", "init", ("pca", "random")) == "pca"
    with pytest.raises(ValueError, match=r"init must be one of \('pca', 'random'\), got 'x'"):
        check_choice("x", "init", ("pca", "random"))
    with pytest.raises(TypeError, match="got an array of shape"):
        check_choice(np.zeros((3, 2)), "init", ("pca", "random"))


def test_the_api_follows_it():
    """select_depth took only Python floats; tsne raised TypeError for a negative seed."""
    scores = np.array([0.1, 0.5, 0.6])
    assert sls_fast.select_depth(scores, alpha=np.float32(0.3)) == sls_fast.select_depth(scores, 0.3)
    with pytest.raises(ValueError, match="alpha must be a number >= 0, got -0.1"):
        sls_fast.select_depth(scores, alpha=-0.1)
    with pytest.raises(TypeError, match="alpha must be a number"):
        sls_fast.select_depth(scores, alpha="0.3")
    x = np.random.default_rng(0).normal(size=(1, 40, 3))
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        sls_fast.tsne(x, seed=-1, perplexity=5.0)
    with pytest.raises(TypeError, match="perplexity must be a number > 0"):
        sls_fast.tsne(x, perplexity="5")
    with pytest.raises(ValueError, match=r"alpha must be a number > 0 and <= 1, got -1"):
        sls_fast.TaskSettings(alpha=-1)
    with pytest.raises(TypeError, match="epochs must be an integer >= 1"):
        sls_fast.TaskSettings(epochs=1.5)
