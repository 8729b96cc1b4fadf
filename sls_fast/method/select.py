"""Step 4 of SLS: how many layers to keep, from the per-layer scores."""
from __future__ import annotations

import warnings

from typing import cast

import numpy as np

from sls_fast.common.checks import check_number
from sls_fast.common.arrays import ArrayLike, as_tensor

__all__ = ["select_depth", "ALPHA"]

ALPHA = 0.3  # the paper's threshold fraction


def select_depth(scores: ArrayLike, alpha: float = ALPHA) -> int:
    """The authors' walk from the last layer down: the kept depth K (1-based, 1..L).

    With threshold ``T = alpha * scores[L]``, K is the smallest i such that ``scores[j] >= T``
    for every j in i..L: the walk stops at the first layer below T coming down from the top,
    and layers K+1..L are removed. As in the authors' code the last layer itself is always kept
    (their first step compares it with a threshold of 0), which only matters for alpha > 1.

    Edge cases, against the authors' loop:

    * ``scores[L] == 0``: the threshold is 0 and the walk goes on (kept while scores are
      >= 0), exactly as in their code.
    * ``scores[L] < 0``: their code never writes a target (the last layer already fails its
      first comparison). **Deviation:** we keep all L layers and warn (a negative last score
      means the classes do not separate at the top, so there is nothing to prune against).
    * NaN or infinite scores: ``ValueError`` naming the layers.

    Args:
        scores: ``[L]`` per-layer scores (NumPy, torch or CuPy; the silhouette in SLS).
        alpha: threshold fraction of the last layer's score (0.3 in the paper).

    Returns:
        K as a Python int.

    Example:
        >>> select_depth([-0.1, 0.05, 0.2, 0.3, 0.5, 0.45], alpha=0.3)
        3
    """
    t, _ = as_tensor(scores, "scores")
    s = np.asarray(t.detach().cpu().numpy(), dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array [L], got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores contain NaN or infinity at layers "
                         f"{(np.nonzero(~np.isfinite(s))[0] + 1).tolist()} (1-based)")
    alpha = cast(float, check_number(alpha, "alpha", low=0))
    L = s.size
    if s[-1] < 0:
        warnings.warn(
            f"the last layer's score is {s[-1]:.4g} < 0, so the threshold alpha * score[L] "
            f"is meaningless (the authors' code never writes a pruning target then): keeping "
            f"all {L} layers", UserWarning, stacklevel=2)
        return L
    threshold = alpha * s[-1]
    depth = L
    for j in range(L - 2, -1, -1):  # 0-based index of layers L-1 .. 1
        if s[j] >= threshold:
            depth = j + 1
        else:
            break
    return depth
