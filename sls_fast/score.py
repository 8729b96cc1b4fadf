"""Steps 1-4 of SLS in one call: extract (one pass) -> t-SNE of all layers -> all metrics in one
batched pass -> depth. :class:`LayerReport` holds the result, serialises to JSON and plots."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ._arrays import to_numpy
from ._utils import atomic_path, write_text
from .metrics import METRICS, cluster_scores
from .select import select_depth

__all__ = ["LayerReport", "score_layers", "SELECTION_METRIC"]

SELECTION_METRIC = "silhouette"  # the paper's; the others are reported


@dataclass
class LayerReport:
    """Per-layer scores of a model on a task and the depth SLS keeps.

    Attributes:
        scores: ``{metric: float64 [L]}`` (silhouette selects the depth; the others are reported).
        depth: K, the number of blocks kept (1..L).
        alpha: threshold fraction used by :func:`sls_fast.select_depth`.
        layer_names: module path of each block, ``[L]``.
        embeddings: float32 ``[L, N, 2]`` normalised t-SNE embedding of each layer.
        labels: int64 ``[N]`` class labels of the embedded points.
        timings: wall seconds per stage (``extract``, ``tsne``, ``metrics``, ``select``).
        meta: free-form facts (model name, backends, N, ...).
    """

    scores: Dict[str, np.ndarray]
    depth: int
    alpha: float
    layer_names: List[str]
    embeddings: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    timings: Dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def threshold(self) -> float:
        return float(self.alpha * self.scores[SELECTION_METRIC][-1])

    def to_dict(self, *, include_embeddings: bool = True) -> dict:
        d = dict(num_layers=self.num_layers, depth=int(self.depth), alpha=float(self.alpha),
                 selection_metric=SELECTION_METRIC, layer_names=list(self.layer_names),
                 scores={k: [float(v) for v in np.asarray(s)] for k, s in self.scores.items()},
                 timings={k: float(v) for k, v in self.timings.items()}, meta=self.meta)
        if include_embeddings and self.embeddings is not None:
            d["embeddings"] = np.round(np.asarray(self.embeddings, np.float64), 6).tolist()
            d["labels"] = np.asarray(self.labels).astype(int).tolist()
        return d

    def to_json(self, path: Optional[str] = None, *, include_embeddings: bool = True) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(include_embeddings=include_embeddings), indent=1)
        if path is not None:
            write_text(path, text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str) -> "LayerReport":
        """Inverse of :meth:`to_json` (accepts the JSON text or a file path)."""
        if os.path.exists(text_or_path):
            with open(text_or_path) as f:
                text_or_path = f.read()
        d = json.loads(text_or_path)
        emb = d.get("embeddings")
        return cls(scores={k: np.asarray(v, np.float64) for k, v in d["scores"].items()},
                   depth=int(d["depth"]), alpha=float(d["alpha"]), layer_names=d["layer_names"],
                   embeddings=None if emb is None else np.asarray(emb, np.float32),
                   labels=None if d.get("labels") is None else np.asarray(d["labels"], np.int64),
                   timings=d.get("timings", {}), meta=d.get("meta", {}))

    def plot(self, directory: str) -> List[str]:
        """Write ``scores.png`` (each metric per layer; silhouette with the threshold and the
        chosen depth) and ``tsne_layers.png`` (per-layer t-SNE scatter plots coloured by label)
        into ``directory`` (atomically; matplotlib's object API, the caller's backend untouched);
        returns their paths."""
        from matplotlib.figure import Figure

        def subplots(nrows, ncols, figsize):
            fig = Figure(figsize=figsize)
            return fig, fig.subplots(nrows, ncols, squeeze=False)

        def save(fig, path, dpi):
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=dpi, format="png")

        os.makedirs(directory, exist_ok=True)
        paths = []
        layers = np.arange(1, self.num_layers + 1)
        names = list(self.scores)
        fig, axes = subplots(1, len(names), (5 * len(names), 3.6))
        for ax, name in zip(axes[0], names):
            ax.plot(layers, self.scores[name], "o-", lw=1.5, ms=4)
            ax.set_xlabel("layer (block)")
            ax.set_title(name.replace("_", "-"))
            ax.grid(alpha=0.3)
            if name == SELECTION_METRIC:
                ax.axhline(self.threshold, color="tab:red", ls="--",
                           label=f"threshold = {self.alpha:g} x score[L]")
                ax.axvline(self.depth, color="tab:green", ls=":", label=f"kept depth K = {self.depth}")
                ax.axvspan(self.depth + 0.5, self.num_layers + 0.5, color="0.85", alpha=0.5,
                           label="removed")
                ax.legend(fontsize=8, loc="best")
        fig.suptitle(self.meta.get("title", "SLS layer scores"))
        fig.tight_layout()
        p = os.path.join(directory, "scores.png")
        save(fig, p, 110)
        paths.append(p)
        if self.embeddings is not None:
            L = self.num_layers
            cols = min(6, L)
            rows = -(-L // cols)
            fig, axes = subplots(rows, cols, (2.4 * cols, 2.4 * rows))
            sil = self.scores.get(SELECTION_METRIC)
            for i in range(rows * cols):
                ax = axes[i // cols][i % cols]
                ax.set_xticks([])
                ax.set_yticks([])
                if i >= L:
                    ax.axis("off")
                    continue
                e = self.embeddings[i]
                ax.scatter(e[:, 0], e[:, 1], c=self.labels, s=2, cmap="tab10" if
                           len(np.unique(self.labels)) <= 10 else "tab20", linewidths=0)
                title = f"{i + 1}" + (f": {sil[i]:.2f}" if sil is not None else "")
                ax.set_title(title, fontsize=8, color="black" if i < self.depth else "0.5")
            fig.suptitle("t-SNE of each layer (title: layer: silhouette; grey = removed)", fontsize=9)
            fig.tight_layout()
            p = os.path.join(directory, "tsne_layers.png")
            save(fig, p, 100)
            paths.append(p)
        return paths

    def summary(self) -> str:
        """A short text table: one line per layer."""
        lines = [f"{'layer':>5}  {'name':<24}" + "".join(f"{m[:12]:>14}" for m in self.scores)]
        for i, name in enumerate(self.layer_names):
            mark = " " if i < self.depth else "x"
            lines.append(f"{i + 1:>4}{mark}  {name:<24}" +
                         "".join(f"{float(self.scores[m][i]):>14.4f}" for m in self.scores))
        lines.append(f"kept depth K = {self.depth} of {self.num_layers} (alpha = {self.alpha:g}, "
                     f"threshold = {self.threshold:.4f}); x = removed")
        return "\n".join(lines)


def score_layers(model, data, *, metrics=METRICS, tsne_backend: str = "auto",
                 metric_backend: str = "auto", alpha: float = 0.3, seed: int = 0,
                 perplexity: float = 30.0, max_iter: int = 1000, progress: bool = True,
                 **extract_options) -> LayerReport:
    """Score every block of ``model`` on ``data`` and pick the SLS depth.

    extract (one forward pass per batch, all blocks) -> t-SNE of all layers (normalised per
    axis to [0, 1], as the reference) -> all ``metrics`` in one batched pass -> depth from the
    silhouette by :func:`sls_fast.select_depth`.

    Args:
        model: a timm-style model (see :func:`sls_fast.extract_features`).
        data: a DataLoader or a Dataset of ``(image, label)``.
        metrics: which scores to compute (silhouette is always computed: it selects the depth).
        tsne_backend, metric_backend: see :func:`sls_fast.tsne` and :func:`sls_fast.cluster_scores`.
        alpha: threshold fraction.
        extract_options: passed to :func:`sls_fast.extract_features` (``device``, ``batch_size``,
            ``pool``, ``dtype``, ``amp``, ``layers``, ...).

    Returns:
        :class:`LayerReport`.

    Example:
        >>> import timm, sls_fast
        >>> model = sls_fast.models.load("efficientnet_lite0")      # real weights, offline
        >>> data = sls_fast.data.digits("train", image_size=64)
        >>> report = sls_fast.score_layers(model, data)              # doctest: +SKIP
        >>> report.depth, report.plot("out")                         # doctest: +SKIP
    """
    from .embed import tsne
    from .extract import extract_features

    metrics = tuple(metrics)
    if SELECTION_METRIC not in metrics:
        metrics = (SELECTION_METRIC,) + metrics
    timings = {}
    t0 = time.perf_counter()
    feats = extract_features(model, data, progress=progress, **extract_options)
    timings["extract"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    emb = tsne(feats.features, backend=tsne_backend, perplexity=perplexity, max_iter=max_iter,
               seed=seed, normalize="minmax", progress=progress)
    timings["tsne"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    labels = feats.labels
    scores = cluster_scores(emb, labels, metrics, backend=metric_backend)
    scores = {k: to_numpy(v).astype(np.float64) for k, v in scores.items()}
    timings["metrics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    depth = select_depth(scores[SELECTION_METRIC], alpha)
    timings["select"] = time.perf_counter() - t0

    emb_np = to_numpy(emb).astype(np.float32)
    meta = dict(num_points=int(emb_np.shape[1]), tsne_backend=tsne_backend,
                metric_backend=metric_backend, perplexity=perplexity, max_iter=max_iter, seed=seed,
                model=getattr(getattr(model, "pretrained_cfg", None) or {}, "get", lambda k: None)(
                    "architecture") or type(model).__name__)
    return LayerReport(scores=scores, depth=depth, alpha=alpha, layer_names=list(feats.layer_names),
                       embeddings=emb_np, labels=to_numpy(labels).astype(np.int64), timings=timings,
                       meta=meta)
