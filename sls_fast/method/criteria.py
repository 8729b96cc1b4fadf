"""Layer-importance criteria beside SLS's, on the same one-pass features, batched over layers.

Each criterion turns the per-layer features ``[L] x [N, D_l]`` (and the labels) into a curve
``[L]`` and a depth K by its own rule. :data:`CRITERIA` holds each rule, its parameters with
their defaults and its source; :func:`criteria_table` renders them as the README's table (a
test keeps the two equal).

Curves are computed in torch on the features' device (CPU or CUDA), one batched call over
layers where the widths agree (per layer otherwise); k-NN streams row blocks so memory stays
O(block x N). ``sls`` needs the t-SNE and lives in :mod:`sls_fast.method.score`; here it is
only named.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from sls_fast.common.arrays import ArrayLike, as_tensor as _as_tensor_lib
from sls_fast.method.select import ALPHA, select_depth

def as_tensor(x: Any) -> torch.Tensor:
    return _as_tensor_lib(x)[0]


__all__ = ["CRITERIA", "Criterion", "criterion_curve", "criterion_depth", "apply_criterion",
           "check_criterion", "parse_criteria", "parse_criterion_params", "criteria_table",
           "probe_accuracy", "depth_oracle", "probe_oracle", "oracle_report", "plot_oracle"]


@dataclass(frozen=True)
class Criterion:
    """A criterion's name, the kind of its curve, its parameters' defaults and its source."""

    name: str
    kind: str  # "separation" (alpha walk), "accuracy", "similarity", "distance", "influence", "fixed"
    defaults: Mapping[str, float]
    rule: str
    source: str


CRITERIA: Dict[str, Criterion] = {c.name: c for c in (
    Criterion("sls", "separation", {"alpha": ALPHA},
              "silhouette of each layer's t-SNE embedding; from L down, keep while the score "
              "stays >= alpha x the last layer's", "Han & Tang, ECCV 2024"),
    Criterion("silhouette-raw", "separation", {"alpha": ALPHA},
              "silhouette of the raw features (no t-SNE, the ablation); the same alpha walk",
              "Han & Tang's criterion without its t-SNE"),
    Criterion("knn", "accuracy", {"k": 10, "tolerance": 0.01},
              "leave-one-out k-NN accuracy, cosine distance, majority vote; the smallest K "
              "within tolerance of the best layer", "k-NN probing of representations"),
    Criterion("linear-probe", "accuracy", {"tolerance": 0.01, "val_share": 0.3, "l2": 1e-3},
              "accuracy of a logistic regression per layer (standardised features, L2 on the "
              "mean loss) on a stratified held-out share; the smallest K within tolerance of "
              "the best", "P3B, arXiv 2506.23675"),
    Criterion("cka", "similarity", {"threshold": 0.9},
              "linear CKA of each layer with the last; the smallest K at or above the threshold",
              "Kornblith et al. 2019; arXiv 2405.17081"),
    Criterion("block-influence", "influence", {"fraction": 0.1},
              "1 - mean cos(h_{l-1}, h_l) (undefined for layer 1 and at width changes: never "
              "dropped); from L down, drop layers while below fraction x the largest",
              "ShortGPT, arXiv 2403.03853"),
    Criterion("angular", "distance", {"threshold": 0.2},
              "mean arccos(cos(h_l, h_L)) / pi (undefined at another width than the last's); "
              "the smallest K at or below the threshold", "Gromov et al., arXiv 2403.17887"),
    Criterion("last-fraction", "fixed", {"fraction": 0.25},
              "keep the first round((1 - fraction) L) layers, whatever the features",
              "Reassessing Layer Pruning, arXiv 2411.15558"),
)}

_RANGES = {"alpha": (0.0, 1.0), "tolerance": (0.0, 1.0), "val_share": (0.0, 1.0),
           "threshold": (0.0, 1.0), "fraction": (0.0, 1.0), "l2": (0.0, math.inf),
           "k": (1, math.inf)}


def check_criterion(name: str, params: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
    """The criterion's parameters: its defaults updated by ``params``, each checked.
    ValueError for an unknown criterion (naming the known ones) or parameter, or a value out
    of range."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; known: {', '.join(CRITERIA)}")
    out = dict(CRITERIA[name].defaults)
    for key, value in dict(params or {}).items():
        if key not in out:
            raise ValueError(f"criterion {name!r} has no parameter {key!r}; it takes "
                             f"{', '.join(out) or 'none'}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"criterion {name!r}: {key} must be a number, got {value!r}") from None
        low, high = _RANGES[key]
        if not (low < v <= high) or math.isnan(v):
            raise ValueError(f"criterion {name!r}: {key} must be in ({low:g}, {high:g}], got {v:g}")
        if key == "k" and v != int(v):
            raise ValueError(f"criterion {name!r}: k must be an integer, got {v:g}")
        out[key] = int(v) if key == "k" else v
    return out


def _layers(features: Any) -> List[torch.Tensor]:
    """``[L]`` tensors ``[N, D_l]`` from a LayerFeatures, an ``[L, N, D]`` array or a list."""
    feats = getattr(features, "features", features)
    if isinstance(feats, (list, tuple)):
        out = [as_tensor(f) for f in feats]
    else:
        t = as_tensor(feats)
        if t.ndim != 3:
            raise ValueError(f"features must be [L, N, D] or a list of [N, D], got shape "
                             f"{tuple(t.shape)}")
        out = list(t.unbind(0))
    if not out:
        raise ValueError("no layers")
    n = out[0].shape[0]
    for i, f in enumerate(out):
        if f.ndim != 2 or f.shape[0] != n:
            raise ValueError(f"layer {i} has shape {tuple(f.shape)}; every layer must be [N, D] "
                             f"with N = {n}")
        if not torch.isfinite(f).all():
            raise ValueError(f"layer {i} has NaN or infinite features")
    return [f.float() for f in out]


def _labels(labels: Optional[ArrayLike], n: int, device: torch.device) -> torch.Tensor:
    if labels is None:
        raise ValueError("this criterion needs the class labels")
    y = as_tensor(labels).reshape(-1).to(device)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} points")
    _, y = torch.unique(y, return_inverse=True)
    if int(y.max()) < 1:
        raise ValueError("the labels hold one class; criteria compare at least 2")
    return y.long()


def _groups(layers: List[torch.Tensor]) -> List[List[int]]:
    """Layer indices grouped by width, in order (one batched call per group)."""
    groups: Dict[int, List[int]] = {}
    for i, f in enumerate(layers):
        groups.setdefault(int(f.shape[1]), []).append(i)
    return list(groups.values())


# --------------------------------------------------------------------------- curves
def _knn(layers, y, k: int, block: int = 1024) -> np.ndarray:
    """Leave-one-out k-NN accuracy with cosine distance, majority vote (ties: the smaller
    label, as scikit-learn), row blocks of ``block`` points against all."""
    n = y.shape[0]
    if k >= n:
        raise ValueError(f"knn: k = {k} needs more than {k} points, got {n}")
    classes = int(y.max()) + 1
    out = np.zeros(len(layers))
    for group in _groups(layers):
        x = torch.nn.functional.normalize(torch.stack([layers[i] for i in group]), dim=-1)
        correct = torch.zeros(len(group), device=x.device)
        for s in range(0, n, block):
            e = min(n, s + block)
            sim = x[:, s:e] @ x.transpose(1, 2)  # [G, b, N]
            sim[:, torch.arange(e - s), torch.arange(s, e)] = -math.inf  # leave one out
            idx = sim.topk(k, dim=-1).indices  # [G, b, k]
            votes = torch.zeros(len(group), e - s, classes, device=x.device)
            votes.scatter_add_(2, y[idx], torch.ones_like(idx, dtype=votes.dtype))
            correct += (votes.argmax(-1) == y[s:e]).float().sum(-1)
        out[group] = (correct / n).cpu().numpy()
    return out


def _split(y: torch.Tensor, share: float, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A stratified split: (train indices, val indices), ``share`` of each class to val."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    yc = y.cpu()
    for c in torch.unique(yc):
        idx = (yc == c).nonzero().reshape(-1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        m = int(round(share * len(idx))) if len(idx) > 1 else 0
        val.append(idx[:m])
        train.append(idx[m:])
    return torch.cat(train).to(y.device), torch.cat(val).to(y.device)


def _probe(layers, y, *, val_share: float, l2: float, max_iter: int = 200) -> np.ndarray:
    """Held-out accuracy of a multinomial logistic regression per layer (standardised
    features, L2 ``l2`` on the mean loss) on a stratified ``val_share`` of the points."""
    tr, va = _split(y, val_share)
    if len(va) == 0 or len(tr) == 0:
        raise ValueError("linear-probe: too few points per class for a held-out share")
    return probe_accuracy([f[tr] for f in layers], y[tr], [f[va] for f in layers], y[va],
                          l2=l2, max_iter=max_iter)


def probe_accuracy(train: List[torch.Tensor], y_train: torch.Tensor, val: List[torch.Tensor],
                   y_val: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 200) -> np.ndarray:
    """Accuracy on ``val`` of a logistic regression per layer fitted on ``train`` (features
    standardised by the train split's mean and sd, L2 ``l2`` on the mean loss), all layers of
    one width as one full-batch L-BFGS problem."""
    from sls_fast.models.train import fit_logistic

    classes = int(max(int(y_train.max()), int(y_val.max()))) + 1
    out = np.zeros(len(train))
    for group in _groups(train):
        x = torch.stack([train[i] for i in group]).double()  # [G, n, D]
        v = torch.stack([val[i] for i in group]).double().to(x.device)
        mu = x.mean(1, keepdim=True)
        sd = x.std(1, keepdim=True).clamp_min(1e-6)
        z, zv = (x - mu) / sd, (v - mu) / sd
        w, b = fit_logistic(z, y_train.to(z.device), classes, l2=l2, max_iter=max_iter)
        with torch.no_grad():
            pred = (zv @ w + b).argmax(-1)
            out[group] = (pred == y_val.to(z.device)).double().mean(-1).cpu().numpy()
    return out


def depth_oracle(train: Any, val: Any, depths: Mapping[str, int], *,
                 l2: float = 1e-3) -> Dict[str, Any]:
    """The cheap accuracy-vs-depth oracle: for every depth K, the val accuracy of a linear probe
    of block K trained on the train split (``train`` and ``val``: LayerFeatures of the same
    model), with each criterion's depth in ``depths`` judged by :func:`oracle_report`."""
    return oracle_report(probe_oracle(train, val, l2=l2), depths, kind="probe", split="val")


def probe_oracle(train: Any, val: Any, *, l2: float = 1e-3) -> np.ndarray:
    """``[L]``: the val accuracy of a linear probe of each block trained on the train split."""
    tr, va = _layers(train), _layers(val)
    if len(tr) != len(va):
        raise ValueError(f"train has {len(tr)} layers, val {len(va)}")
    ytr = _labels(getattr(train, "labels", None), tr[0].shape[0], tr[0].device)
    yva = as_tensor(getattr(val, "labels", None)).reshape(-1).long()
    return probe_accuracy(tr, ytr, va, yva.to(tr[0].device), l2=l2)


def oracle_report(accuracy: ArrayLike, depths: Mapping[str, int], *, kind: str, split: str,
                  full_accuracy: Optional[float] = None) -> Dict[str, Any]:
    """The report's ``oracle`` object from the accuracy at every depth K = 1..L (``kind``
    "probe": a linear probe of block K; "full": the model cut at K with its adapters and head
    retrained; measured on ``split``): for each criterion's depth in ``depths`` the accuracy
    there, its regret against the full model (``full_accuracy``, default the accuracy at
    depth L) and against the best depth <= K (positive: accuracy lost)."""
    acc = np.asarray(accuracy, np.float64).reshape(-1)
    full = float(acc[-1] if full_accuracy is None else full_accuracy)
    crit = {}
    for name, k in depths.items():
        k = int(k)
        if not 1 <= k <= len(acc):
            raise ValueError(f"{name}: depth {k} outside 1..{len(acc)}")
        crit[name] = dict(depth=k, accuracy_at_depth=float(acc[k - 1]),
                          regret_full=float(full - acc[k - 1]),
                          regret_best=float(acc[:k].max() - acc[k - 1]))
    return dict(kind=kind, split=split, full_accuracy=full,
                accuracy={str(i + 1): float(a) for i, a in enumerate(acc)}, criteria=crit)


def plot_oracle(oracle: Mapping[str, Any], path: str, *, title: str = "") -> str:
    """``oracle.png``: accuracy against depth, the full model's as a line, and each criterion's
    chosen depth marked on the curve."""
    from matplotlib.figure import Figure

    from sls_fast.common.utils import atomic_path

    ks = sorted(int(k) for k in oracle["accuracy"])
    acc = [oracle["accuracy"][str(k)] for k in ks]
    full = float(oracle.get("full_accuracy", acc[-1]))
    split = oracle.get("split", "val")
    fig = Figure(figsize=(11, 5))
    ax = fig.subplots()
    what = ("the model cut at K, adapters + head retrained" if oracle["kind"] == "full" else
            "a linear probe of block K")
    ax.plot(ks, acc, "o-", color="0.3", lw=1.5, ms=4, label=f"{what} ({split})")
    ax.axhline(full, color="tab:blue", ls="--", lw=1,
               label=f"the full model, all {ks[-1]} blocks ({full:.3f})")
    markers = "s^vD<>ph*"
    by_depth: Dict[int, int] = {}
    for i, (name, c) in enumerate(oracle["criteria"].items()):
        k = int(c["depth"])
        lift = 0.03 * by_depth.get(k, 0) * (max(acc) - min(acc) or 1)  # stacked, not hidden
        by_depth[k] = by_depth.get(k, 0) + 1
        ax.plot([k], [c["accuracy_at_depth"] + lift], markers[i % len(markers)], ms=9,
                label=f"{name}: K = {k}, regret {c['regret_full']:+.3f}")
    ax.set_xlabel("depth K (blocks kept)")
    ax.set_ylabel("accuracy")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.set_title(title or "accuracy vs depth, and each criterion's choice")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def _cka(layers) -> np.ndarray:
    """Linear CKA of each layer with the last: ||Y'X||^2 / (||X'X|| ||Y'Y||), centred."""
    def centred(t):
        t = t.double()
        return t - t.mean(0, keepdim=True)

    last = centred(layers[-1])
    yy = torch.linalg.matrix_norm(last.T @ last)
    out = []
    for f in layers:
        x = centred(f)
        xy = torch.linalg.matrix_norm(last.T @ x) ** 2
        xx = torch.linalg.matrix_norm(x.T @ x)
        out.append(float(xy / (xx * yy).clamp_min(1e-300)))
    return np.asarray(out)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12)


def _block_influence(layers) -> np.ndarray:
    out = np.full(len(layers), np.nan)
    for i in range(1, len(layers)):
        if layers[i].shape[1] == layers[i - 1].shape[1]:
            out[i] = float(1.0 - _cos(layers[i - 1], layers[i]).mean())
    return out


def _angular(layers) -> np.ndarray:
    last = layers[-1]
    out = np.full(len(layers), np.nan)
    for i, f in enumerate(layers):
        if f.shape[1] == last.shape[1]:
            out[i] = float((torch.arccos(_cos(f, last).clamp(-1, 1)) / math.pi).mean())
    return out


def criterion_curve(name: str, features: Any, labels: Optional[ArrayLike] = None,
                    **params: Any) -> np.ndarray:
    """The per-layer curve ``[L]`` (float64) of criterion ``name`` (not ``sls``: its curve
    needs the t-SNE, :func:`sls_fast.score_features`)."""
    p = check_criterion(name, params)
    if name == "sls":
        raise ValueError("the sls curve is the silhouette of the t-SNE: use "
                         "sls_fast.score_features (criterion='sls')")
    layers = _layers(features)
    if name == "last-fraction":
        keep = criterion_depth(name, np.zeros(len(layers)), **p)
        return (np.arange(1, len(layers) + 1) <= keep).astype(np.float64)
    if name in ("cka", "block-influence", "angular"):
        return {"cka": _cka, "block-influence": _block_influence, "angular": _angular}[name](layers)
    y = _labels(labels, layers[0].shape[0], layers[0].device)
    if name == "knn":
        return _knn(layers, y, int(p["k"]))
    if name == "linear-probe":
        return _probe(layers, y, val_share=p["val_share"], l2=p["l2"])
    from sls_fast.method.metrics import silhouette_score

    out = np.zeros(len(layers))
    for group in _groups(layers):  # one batched call per width (C++ on the CPU, Triton on CUDA)
        scores = silhouette_score(torch.stack([layers[i] for i in group]), y)
        out[group] = as_tensor(scores).double().cpu().numpy()
    return out


def criterion_depth(name: str, curve: ArrayLike, **params: Any) -> int:
    """The depth K (1..L) criterion ``name`` chooses on its ``curve`` (see the module's table)."""
    p = check_criterion(name, params)
    c = as_tensor(curve).double().cpu().numpy().reshape(-1)
    L = len(c)
    if L == 0:
        raise ValueError("an empty curve")
    kind = CRITERIA[name].kind
    if kind == "separation":
        return select_depth(c, p["alpha"])
    if kind == "fixed":
        return max(1, min(L, int(round((1.0 - p["fraction"]) * L))))
    if kind == "accuracy":
        best = np.nanmax(c)
        return int(np.flatnonzero(c >= best - p["tolerance"])[0]) + 1
    if kind == "similarity":
        hits = np.flatnonzero(c >= p["threshold"])
        return int(hits[0]) + 1 if len(hits) else L
    if kind == "distance":
        hits = np.flatnonzero(c <= p["threshold"])
        return int(hits[0]) + 1 if len(hits) else L
    # influence: from the top, drop layers while their influence stays small
    top = np.nanmax(c) if np.isfinite(c).any() else 0.0
    k = L
    while k > 1 and np.isfinite(c[k - 1]) and c[k - 1] < p["fraction"] * top:
        k -= 1
    return k


def apply_criterion(name: str, features: Any, labels: Optional[ArrayLike] = None,
                    **params: Any) -> Tuple[np.ndarray, int]:
    """``(curve, depth)`` of criterion ``name`` on the features (see the module's table).

    Example:
        >>> import numpy as np, sls_fast
        >>> rng = np.random.default_rng(0); y = np.arange(120) % 3
        >>> X = rng.normal(size=(6, 120, 8)) + np.linspace(0, 3, 6)[:, None, None] * np.eye(8)[y]
        >>> curve, depth = apply_criterion("knn", X.astype(np.float32), y)
        >>> curve.shape, 1 <= depth <= 6
        ((6,), True)
    """
    curve = criterion_curve(name, features, labels, **params)
    return curve, criterion_depth(name, curve, **params)


def parse_criteria(text: str) -> List[str]:
    """Criteria named on the command line: ``"knn,cka"``, ``"all"`` (every one but ``sls``) or
    ``""`` (none). ValueError for an unknown name (naming the known ones)."""
    names = [t.strip() for t in str(text or "").split(",") if t.strip()]
    if names == ["all"]:
        return [c for c in CRITERIA if c != "sls"]
    for n in names:
        check_criterion(n)
    return list(dict.fromkeys(n for n in names if n != "sls"))


def parse_criterion_params(text: str) -> Dict[str, Dict[str, float]]:
    """``"knn.k=5,cka.threshold=0.8"`` as ``{"knn": {"k": 5}, "cka": {"threshold": 0.8}}``,
    each value checked (:func:`check_criterion`)."""
    out: Dict[str, Dict[str, Any]] = {}
    for item in (t.strip() for t in str(text or "").split(",")):
        if not item:
            continue
        name, dot, rest = item.partition(".")
        key, eq, value = rest.partition("=")
        if not (dot and eq and key and value):
            raise ValueError(f"criterion parameter {item!r}: write NAME.PARAM=VALUE "
                             "(e.g. knn.k=5)")
        out.setdefault(name.strip(), {})[key.strip()] = value.strip()
    return {name: {k: v for k, v in check_criterion(name, params).items() if k in params}
            for name, params in out.items()}


def criteria_table() -> str:
    """The README's criteria table (Markdown), one row per criterion of :data:`CRITERIA`."""
    rows = ["| criterion | curve and depth rule | parameters (default) | source |",
            "|---|---|---|---|"]
    for c in CRITERIA.values():
        params = ", ".join(f"`{k}` ({v:g})" for k, v in c.defaults.items())
        rows.append(f"| `{c.name}` | {c.rule} | {params} | {c.source} |")
    return "\n".join(rows)
