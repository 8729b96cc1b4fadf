"""Steps 1-4 of SLS in one call: extract (one pass) -> t-SNE of all layers (S runs each) -> all
metrics in one batched pass -> depth. :class:`LayerReport` holds the result, serialises to JSON
and plots.

A t-SNE run is one draw from a distribution (row order, seed, threads and the CPU's arithmetic
move every layer's score), so ``repeats=S`` scores S runs of every layer, takes the depth on the
mean curve and reports the per-run depths and the share of runs that agree with it."""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import numpy as np

from sls_fast.common.arrays import to_numpy
from sls_fast.common.schema import SCHEMA_VERSION
from sls_fast.common.utils import atomic_path, write_text
from sls_fast.method.metrics import METRICS, cluster_scores
from sls_fast.method.embed import MAX_ITER, PERPLEXITY
from sls_fast.method.select import ALPHA, select_depth

if TYPE_CHECKING:
    import torch.nn as nn
    from torch.utils.data import DataLoader, Dataset

    from sls_fast.method.extract import LayerFeatures

__all__ = ["LayerReport", "score_layers", "score_features", "SELECTION_METRIC"]

SELECTION_METRIC = "silhouette"  # the paper's; the others are reported
MAX_LEGEND_CLASSES = 20  # the t-SNE grid names this many classes, with distinct colours


def band_note(runs: np.ndarray, axis_span: float, *, share: float = 0.01) -> Optional[str]:
    """What scores.png says when the runs' bands (``runs``: ``[S, L]``) are thinner than the
    line on an axis spanning ``axis_span`` (below ``share`` of it); None when they show."""
    widest = float(np.ptp(np.asarray(runs, np.float64), axis=0).max())
    if len(runs) < 2 or widest >= share * axis_span:
        return None
    return f"the {len(runs)} runs differ by < {widest:.2g}: bands thinner than the line"


def legend_labels(classes: np.ndarray, names: List[str]) -> List[str]:
    """The legend's text for each label value in ``classes`` (sorted): its class name when the
    labels index ``names`` (every label below ``len(names)``), else the label itself."""
    values = [int(c) for c in classes]
    if values and max(values) < len(names) and min(values) >= 0:
        return [str(names[c]) for c in values]
    return [str(c) for c in values]


def class_palette(n: int) -> List[tuple]:
    """``n`` qualitative colours, distinct up to 20: tab10, then tab20's lighter tones (one
    colour per class index, never spread over a colour map's range, where 4 classes would pair
    up as blue / cyan and red / pink); beyond 20 they repeat."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # tab10's tones first, then light
    return [tab20(order[k % 20]) for k in range(n)]


def _finite_or_none(values: Any) -> List[Optional[float]]:
    """A curve as JSON numbers, undefined (NaN) entries as null (strict JSON has no NaN)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


@dataclass
class LayerReport:
    """Per-layer scores of a model on a task and the depth SLS keeps.

    Attributes:
        scores: ``{metric: float64 [L]}``, the mean over the S runs (silhouette selects the
            depth; the others are reported), and each other criterion's curve under its name.
            With one run, that run's scores.
        depth: K, the number of blocks kept (1..L): with ``criterion`` "sls" chosen on the
            mean silhouette curve by :func:`sls_fast.select_depth`, else by that criterion's
            rule (:data:`sls_fast.CRITERIA`).
        alpha: threshold fraction used by :func:`sls_fast.select_depth`.
        layer_names: module path of each block, ``[L]``.
        embeddings: float32 ``[L, N, 2]`` normalised t-SNE embedding of each layer (run 0).
        labels: int64 ``[N]`` class labels of the embedded points.
        timings: wall seconds per stage (``extract``, ``tsne``, ``metrics``, ``select``).
        meta: free-form facts (model name, backends, N, ...).
        runs: ``{metric: float64 [S, L]}``, every run's scores.
        spread: float64 ``[L]``, the standard deviation of the silhouette over the runs
            (sample sd, ``ddof=1``; zeros for one run).
        run_depths: the depth each run alone would keep, ``S`` ints.
        confidence: the share of the S runs whose own depth equals ``depth`` (1.0 for one run).
        criterion: the criterion that chose ``depth`` ("sls": the t-SNE silhouette; another
            criterion's curve does not depend on the t-SNE runs, so its runs all agree).
    """

    scores: Dict[str, np.ndarray]
    depth: int
    alpha: float
    layer_names: List[str]
    embeddings: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    timings: Dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    runs: Optional[Dict[str, np.ndarray]] = None
    spread: Optional[np.ndarray] = None
    run_depths: Optional[List[int]] = None
    confidence: Optional[float] = None
    criterion: str = "sls"

    def __post_init__(self) -> None:
        self.scores = {k: np.asarray(v, np.float64) for k, v in self.scores.items()}
        if self.runs is None:  # a single run (or a report written before repeats existed)
            self.runs = {k: v[None, :] for k, v in self.scores.items()}
        self.runs = {k: np.asarray(v, np.float64).reshape(-1, self.num_layers)
                     for k, v in self.runs.items()}
        sil = self.runs[SELECTION_METRIC]
        if self.spread is None:
            self.spread = sil.std(axis=0, ddof=1) if len(sil) > 1 else np.zeros(self.num_layers)
        self.spread = np.asarray(self.spread, np.float64)
        if self.run_depths is None:
            self.run_depths = ([int(self.depth)] * len(sil)
                               if len(sil) == 1 or self.criterion != "sls"
                               else _depths(sil, self.alpha))
        self.run_depths = [int(k) for k in self.run_depths]
        if self.confidence is None:
            self.confidence = float(np.mean(np.asarray(self.run_depths) == self.depth))
        self.confidence = float(self.confidence)

    def _filled(self) -> Tuple[Dict[str, np.ndarray], np.ndarray, List[int]]:
        """``(runs, spread, run_depths)``: optional at construction, set by ``__post_init__``."""
        assert self.runs is not None and self.spread is not None and self.run_depths is not None
        return self.runs, self.spread, self.run_depths

    @property
    def repeats(self) -> int:
        """S, the number of t-SNE runs per layer."""
        return len(self._filled()[2])

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def threshold(self) -> float:
        return float(self.alpha * self.scores[SELECTION_METRIC][-1])

    @property
    def selection_metric(self) -> str:
        """The curve the depth was chosen on: the silhouette (SLS) or the criterion's own."""
        return SELECTION_METRIC if self.criterion == "sls" else self.criterion

    def select(self, criterion: str = "sls", alpha: Optional[float] = None) -> "LayerReport":
        """The same scores with the depth chosen by ``criterion`` (SLS's at ``alpha``, default
        this report's): neither the t-SNE nor the other criteria's curves depend on the choice,
        so cells that differ only in alpha or criterion score once. ValueError for a criterion
        this report did not score."""
        alpha = self.alpha if alpha is None else float(alpha)
        depths = self.criterion_depths(alpha)
        if criterion not in depths:
            raise ValueError(f"criterion {criterion!r} was not scored in this report (it has "
                             f"{', '.join(depths)}); score with criteria=[{criterion!r}]")
        return dataclasses.replace(self, alpha=alpha, depth=depths[criterion],
                                   criterion=criterion, run_depths=None, confidence=None,
                                   timings=dict(self.timings), meta=dict(self.meta))

    def criterion_depths(self, alpha: Optional[float] = None) -> Dict[str, int]:
        """``{criterion: depth}``: SLS's (``"sls"``, on the mean silhouette at ``alpha``,
        default this report's) and every other criterion scored beside it
        (``score_features(criteria=...)``)."""
        alpha = self.alpha if alpha is None else float(alpha)
        with warnings.catch_warnings():  # a last score <= 0 warned when it was scored
            warnings.simplefilter("ignore", UserWarning)
            out = {"sls": int(select_depth(self.scores[SELECTION_METRIC], alpha))}
        out.update({c: int(v["depth"]) for c, v in self.meta.get("criteria", {}).items()})
        return out

    def decision(self) -> dict:
        """The depth decision with its measured stability (the fields of ``report.json``)."""
        runs, spread, run_depths = self._filled()
        return dict(repeats=self.repeats, run_depths=list(run_depths),
                    confidence=self.confidence, spread=[float(x) for x in spread],
                    runs={k: [_finite_or_none(row) for row in np.asarray(v, np.float64)]
                          for k, v in runs.items()})

    def scores_json(self) -> Dict[str, List[Optional[float]]]:
        """``scores`` as strict JSON: undefined layers (NaN) as null."""
        return {k: _finite_or_none(s) for k, s in self.scores.items()}

    def to_dict(self, *, include_embeddings: bool = True) -> dict:
        runs, spread, run_depths = self._filled()
        d = dict(schema_version=SCHEMA_VERSION, num_layers=self.num_layers,
                 depth=int(self.depth), alpha=float(self.alpha), criterion=self.criterion,
                 selection_metric=self.selection_metric, layer_names=list(self.layer_names),
                 scores=self.scores_json(),
                 repeats=self.repeats, confidence=self.confidence,
                 run_depths=list(run_depths), spread=[float(v) for v in spread],
                 runs={k: [_finite_or_none(row) for row in np.asarray(r, np.float64)]
                       for k, r in runs.items()},
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
        runs = d.get("runs")
        if runs is not None:  # null: a criterion's undefined layer (block influence of layer 1)
            runs = {k: np.asarray(v, dtype=np.float64) for k, v in runs.items()}
        return cls(scores={k: np.asarray(v, np.float64) for k, v in d["scores"].items()},
                   depth=int(d["depth"]), alpha=float(d["alpha"]), layer_names=d["layer_names"],
                   embeddings=None if emb is None else np.asarray(emb, np.float32),
                   labels=None if d.get("labels") is None else np.asarray(d["labels"], np.int64),
                   timings=d.get("timings", {}), meta=d.get("meta", {}), runs=runs,
                   spread=d.get("spread"), run_depths=d.get("run_depths"),
                   confidence=d.get("confidence"), criterion=d.get("criterion", "sls"))

    def plot(self, directory: str) -> List[str]:
        """Write ``scores.png`` (each metric per layer; silhouette with the threshold and the
        chosen depth) and ``tsne_layers.png`` (per-layer t-SNE scatter plots coloured by label)
        into ``directory`` (atomically; matplotlib's object API, the caller's backend untouched);
        returns their paths."""
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D

        def subplots(nrows, ncols, figsize):
            fig = Figure(figsize=figsize)
            return fig, fig.subplots(nrows, ncols, squeeze=False)

        def save(fig, path, dpi):
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=dpi, format="png")

        all_runs = self._filled()[0]
        os.makedirs(directory, exist_ok=True)
        paths = []
        layers = np.arange(1, self.num_layers + 1)
        names = list(self.scores)
        ncols = min(4, len(names))  # metrics and criteria: rows of at most 4
        nrows = -(-len(names) // ncols)
        fig, axes = subplots(nrows, ncols, (5 * ncols, 4.8 * nrows))
        for ax in axes.flat[len(names):]:
            ax.set_visible(False)
        S = self.repeats
        depths = self.criterion_depths()
        for ax, name in zip(axes.flat, names):
            mean, runs = self.scores[name], all_runs[name]
            label = "score" if S == 1 else f"mean of {S} runs"
            ax.plot(layers, mean, "o-", lw=1.5, ms=4, label=label)
            if S > 1:
                sd = runs.std(axis=0, ddof=1)
                ax.fill_between(layers, runs.min(0), runs.max(0), color="tab:blue", alpha=0.12,
                                lw=0, label="min-max of runs")
                ax.fill_between(layers, mean - sd, mean + sd, color="tab:blue", alpha=0.25, lw=0,
                                label="mean +- sd")
                low, high = ax.get_ylim()
                note = band_note(runs, high - low)
                if note:
                    ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=7, color="0.3")
            ax.set_xlabel("layer (block)")
            ax.set_xlim(0.5, self.num_layers + 0.5)
            ax.set_title(name.replace("_", "-"))
            ax.grid(alpha=0.3)
            own = "sls" if name == SELECTION_METRIC else name
            if name == SELECTION_METRIC:
                ax.axhline(self.threshold, color="tab:red", ls="--",
                           label=f"threshold = {self.alpha:g} x score[L]")
                if S > 1:  # the threshold moves with the last layer's score: alpha x (mean +- sd)
                    lo, hi = self.threshold_band
                    ax.axhspan(lo, hi, color="tab:red", alpha=0.12, lw=0,
                               label="threshold band (last layer +- sd)")
            if own == self.criterion:  # the criterion that chose the depth kept
                kept = (f"kept depth K = {self.depth}" if S == 1 or own != "sls" else
                        f"K = {self.depth} (mean curve); runs agree {self.confidence:.0%}")
                ax.axvline(self.depth, color="tab:green", ls=":", label=kept)
                ax.axvspan(self.depth + 0.5, self.num_layers + 0.5, color="0.85", alpha=0.5,
                           label="removed")
                ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
            elif own in depths:  # another criterion: the depth it would keep
                k = depths[own]
                ax.axvline(k, color="tab:purple", ls=":", label=f"{own} would keep K = {k}")
                ax.axvspan(k + 0.5, self.num_layers + 0.5, color="0.85", alpha=0.5,
                           label="it would remove")
                ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
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
            sil = all_runs[SELECTION_METRIC][0]  # the run drawn (run 0)
            labels = np.asarray(self.labels)
            classes = np.unique(labels)
            palette = class_palette(len(classes))
            index = {c: k for k, c in enumerate(classes)}  # one colour per class, in order
            point_colours = [palette[index[c]] for c in labels]
            for i in range(rows * cols):
                ax = axes[i // cols][i % cols]
                ax.set_xticks([])
                ax.set_yticks([])
                if i >= L:
                    ax.axis("off")
                    continue
                e = self.embeddings[i]
                ax.scatter(e[:, 0], e[:, 1], c=point_colours, s=2, linewidths=0)
                title = f"{i + 1}" + (f": {sil[i]:.2f}" if sil is not None else "")
                ax.set_title(title, fontsize=8, color="black" if i < self.depth else "0.5")
            shown = legend_labels(classes, self.meta.get("class_names") or [])
            handles = [Line2D([], [], ls="", marker="o", ms=5, color=palette[k], label=text)
                       for k, text in enumerate(shown[:MAX_LEGEND_CLASSES])]
            fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)),
                       fontsize=7, frameon=False, title=None if len(classes) <=
                       MAX_LEGEND_CLASSES else f"first {MAX_LEGEND_CLASSES} of {len(classes)} "
                       "classes (colours repeat)", title_fontsize=7)
            which = "" if self.repeats == 1 else f", run 0 of {self.repeats}"
            fig.suptitle(f"t-SNE of each layer (title: layer: silhouette{which}; grey = removed)",
                         fontsize=9)
            legend_rows = -(-len(handles) // 10)
            fig.tight_layout(rect=(0, 0.04 + 0.035 * legend_rows, 1, 1))
            p = os.path.join(directory, "tsne_layers.png")
            save(fig, p, 100)
            paths.append(p)
        return paths

    @property
    def threshold_band(self) -> tuple:
        """``alpha x (score[L] -+ spread[L])``: where the threshold of a single run falls."""
        last, sd = float(self.scores[SELECTION_METRIC][-1]), float(self._filled()[1][-1])
        return self.alpha * (last - sd), self.alpha * (last + sd)

    def summary(self) -> str:
        """A short text table: one line per layer (mean +- sd of the silhouette with repeats),
        then the depth, the per-run depths and the confidence."""
        _, spread, run_depths = self._filled()
        S = self.repeats
        head = f"{'layer':>5}  {'name':<24}" + "".join(f"{m[:12]:>14}" for m in self.scores)
        lines = [head + (f"{'sd':>9}" if S > 1 else "")]
        for i, name in enumerate(self.layer_names):
            mark = " " if i < self.depth else "x"
            lines.append(f"{i + 1:>4}{mark}  {name:<24}" +
                         "".join(f"{float(self.scores[m][i]):>14.4f}" for m in self.scores) +
                         (f"{float(spread[i]):>9.4f}" if S > 1 else ""))
        what = "" if S == 1 else f" on the mean of {S} runs"
        depths = self.criterion_depths()
        if self.criterion != "sls":  # a deterministic criterion: no run-to-run spread
            lines.append(f"kept depth K = {self.depth} of {self.num_layers}, chosen by "
                         f"{self.criterion} ({_params_text(self.meta, self.criterion)}); x = "
                         f"removed; SLS{what} (alpha = {self.alpha:g}) would keep "
                         f"{depths['sls']}")
        else:
            lines.append(f"kept depth K = {self.depth} of {self.num_layers}{what} (alpha = "
                         f"{self.alpha:g}, threshold = {self.threshold:.4f}); x = removed")
        if S > 1 and self.criterion == "sls":
            lines.append(f"per-run depths: {' '.join(map(str, run_depths))}; confidence "
                         f"{self.confidence:.0%} ({sum(k == self.depth for k in run_depths)} "
                         f"of {S} runs keep {self.depth})")
        elif self.criterion == "sls":
            lines.append("one t-SNE run: its depth is one draw (repeats=8 measures the spread)")
        others = {c: k for c, k in depths.items() if c not in ("sls", self.criterion)}
        if others:
            lines.append("other criteria would keep: " + ", ".join(
                f"{c} {k}" for c, k in others.items()) + " (rules: sls_fast.CRITERIA)")
        return "\n".join(lines)


def _params_text(meta: dict, criterion: str) -> str:
    params = meta.get("criteria", {}).get(criterion, {}).get("params", {})
    return ", ".join(f"{k} = {v:g}" for k, v in params.items()) or "no parameters"


def _depths(silhouette_runs: np.ndarray, alpha: float) -> List[int]:
    """The depth of every run ``[S, L]``; one warning for the runs whose last score is <= 0."""
    out, bad = [], 0
    for run in silhouette_runs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out.append(select_depth(run, alpha))
        bad += any(issubclass(w.category, UserWarning) for w in caught)
    if bad:
        warnings.warn(f"{bad} of {len(silhouette_runs)} runs have a last-layer silhouette < 0: "
                      f"those runs keep all layers", UserWarning, stacklevel=3)
    return out


def score_layers(model: nn.Module, data: Union[DataLoader, Dataset], *,
                 metrics: Iterable[str] = METRICS, tsne_backend: str = "auto",
                 metric_backend: str = "auto", alpha: float = ALPHA, seed: int = 0,
                 perplexity: float = PERPLEXITY, max_iter: int = MAX_ITER, repeats: int = 1,
                 progress: bool = True, criterion: str = "sls", criteria: Sequence[str] = (),
                 criterion_params: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 **extract_options: Any) -> LayerReport:
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
        repeats: S, the t-SNE runs per layer (default 1: the paper's single run). With S > 1
            the depth is taken on the mean silhouette curve, and the report carries every
            run's scores (``runs``), the per-layer ``spread``, the per-run depths and the
            ``confidence``. On the batched backends ("native", "triton", "torch") the S x L
            runs are one problem sharing each layer's affinities; see :func:`sls_fast.tsne`.
        criterion, criteria, criterion_params: the criterion that chooses the depth and
            others scored beside it on the same features (:func:`score_features`).
        extract_options: passed to :func:`sls_fast.extract_features` (``device``, ``batch_size``,
            ``pool``, ``dtype``, ``amp``, ``layers``, ...).

    Returns:
        :class:`LayerReport`.

    Example:
        >>> import timm, sls_fast
        >>> model = sls_fast.models.load("efficientnet_lite0")      # real weights, offline
        >>> data = sls_fast.data.digits("train", image_size=64, model=model)
        >>> report = sls_fast.score_layers(model, data)              # doctest: +SKIP
        >>> report.depth, report.plot("out")                         # doctest: +SKIP
        >>> report = sls_fast.score_layers(model, data, repeats=8)   # doctest: +SKIP
        >>> report.depth, report.run_depths, report.confidence       # doctest: +SKIP
        (3, [3, 3, 3, 3, 3, 3, 3, 3], 1.0)
    """
    from sls_fast.method.extract import extract_features

    _check_repeats(repeats)
    t0 = time.perf_counter()
    feats = extract_features(model, data, progress=progress, **extract_options)
    extract_s = time.perf_counter() - t0
    report = score_features(feats, metrics=metrics, tsne_backend=tsne_backend,
                            metric_backend=metric_backend, alpha=alpha, seed=seed,
                            perplexity=perplexity, max_iter=max_iter, repeats=repeats,
                            progress=progress, criterion=criterion, criteria=criteria,
                            criterion_params=criterion_params)
    report.timings = dict(extract=extract_s, **report.timings)
    report.meta["model"] = getattr(getattr(model, "pretrained_cfg", None) or {}, "get",
                                   lambda k: None)("architecture") or type(model).__name__
    return report


def _check_repeats(repeats) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")


def score_features(feats: LayerFeatures, *, metrics: Iterable[str] = METRICS,
                   tsne_backend: str = "auto",
                   metric_backend: str = "auto", alpha: float = ALPHA, seed: int = 0,
                   perplexity: float = PERPLEXITY, max_iter: int = MAX_ITER, repeats: int = 1,
                   progress: bool = True, criterion: str = "sls", criteria: Sequence[str] = (),
                   criterion_params: Optional[Mapping[str, Mapping[str, Any]]] = None
                   ) -> LayerReport:
    """The scoring half of :func:`score_layers`, on features already extracted (for example
    read back from a cache): t-SNE of all layers -> metrics -> depth.

    Args:
        feats: a :class:`sls_fast.LayerFeatures`.
        criterion: the criterion that chooses the depth kept (a name of
            :data:`sls_fast.CRITERIA`; default "sls", the paper's). SLS's t-SNE and silhouette
            are computed whichever it is (every report carries them).
        criteria: other layer-importance criteria computed beside it on the same features
            (:mod:`sls_fast.method.criteria`): each curve goes into ``scores`` under its name,
            its depth and parameters into ``meta["criteria"]``
            (:meth:`LayerReport.criterion_depths`).
        criterion_params: ``{criterion: {parameter: value}}`` overriding the defaults.
        the rest: as :func:`score_layers`.
    """
    from sls_fast.method.criteria import check_criterion

    if isinstance(criteria, str):
        raise TypeError(f"criteria must be a list of names, got the string {criteria!r}")
    check_criterion(criterion)
    criteria = [c for c in dict.fromkeys([criterion, *criteria]) if c != "sls"]
    params = {c: check_criterion(c, (criterion_params or {}).get(c)) for c in criteria}
    sls_params = check_criterion("sls", (criterion_params or {}).get("sls"))
    if sls_params["alpha"] != float(alpha) and "sls" in (criterion_params or {}):
        raise ValueError(f"criterion_params gives sls alpha = {sls_params['alpha']:g} and "
                         f"alpha = {alpha:g}: give SLS's alpha once, as alpha")
    unknown = set(criterion_params or {}) - set(params) - {"sls"}
    if unknown:
        raise ValueError(f"criterion_params for {sorted(unknown)}, which neither criterion= "
                         "nor criteria= names")
    from sls_fast.method.embed import tsne

    _check_repeats(repeats)
    repeats = int(repeats)
    metrics = tuple(metrics)
    if SELECTION_METRIC not in metrics:
        metrics = (SELECTION_METRIC,) + metrics
    timings = {}
    t0 = time.perf_counter()
    emb = tsne(feats.features, backend=tsne_backend, perplexity=perplexity, max_iter=max_iter,
               seed=seed, normalize="minmax", repeats=None if repeats == 1 else repeats,
               progress=progress)
    timings["tsne"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    labels = feats.labels
    L, N = int(emb.shape[-3]), int(emb.shape[-2])
    flat = emb.reshape(-1, N, 2)  # S x L embeddings scored in one batched pass (on emb's device)
    runs = cluster_scores(flat, labels, metrics, backend=metric_backend)
    runs = {k: to_numpy(v).astype(np.float64).reshape(repeats, L) for k, v in runs.items()}
    scores = {k: v.mean(axis=0) for k, v in runs.items()}
    timings["metrics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    depth = select_depth(scores[SELECTION_METRIC], alpha)
    run_depths = [depth] if repeats == 1 else _depths(runs[SELECTION_METRIC], alpha)
    timings["select"] = time.perf_counter() - t0

    emb_np = to_numpy(emb).astype(np.float32)
    meta = dict(num_points=int(N), tsne_backend=tsne_backend,
                metric_backend=metric_backend, perplexity=perplexity, max_iter=max_iter, seed=seed,
                repeats=repeats)
    if criteria:
        from sls_fast.method.criteria import apply_criterion

        chosen: Dict[str, Any] = {}
        meta["criteria"] = chosen
        for c in criteria:
            t0 = time.perf_counter()
            curve, k = apply_criterion(c, feats, labels, **params[c])
            timings[f"criterion {c}"] = time.perf_counter() - t0
            scores[c] = curve
            runs[c] = np.repeat(curve[None, :], repeats, axis=0)  # deterministic: one per run
            chosen[c] = dict(depth=int(k), params=params[c])
    report = LayerReport(scores=scores, depth=depth, alpha=alpha,
                         layer_names=list(feats.layer_names),
                         embeddings=emb_np.reshape(repeats, L, N, 2)[0],
                         labels=to_numpy(labels).astype(np.int64), timings=timings, meta=meta,
                         runs=runs, run_depths=run_depths)
    return report if criterion == "sls" else report.select(criterion)
