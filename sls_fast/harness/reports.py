"""What the jobs of :mod:`sls_fast.harness` return, and the one writer of ``report.json``.

:class:`TaskResult` (:func:`~sls_fast.harness.pipeline.run_task`), :class:`ScoreResult`
(:func:`~sls_fast.harness.tasks.score_task`), :class:`PruneResult`
(:func:`~sls_fast.harness.tasks.prune_task`) and :class:`BenchResult`
(:func:`~sls_fast.harness.tasks.bench_task`) are typed records: ``to_dict()`` is their JSON form
(``report.json`` for a run and a scoring, checked against ``sls_fast.schema("report")``; its
``files`` are relative to the report's folder) and
``summary()`` the short table the command line prints.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from sls_fast.common.schema import SCHEMA_VERSION
from sls_fast.common.utils import text_table, write_text
from sls_fast.harness.settings import TaskSettings
from sls_fast.method.score import LayerReport

__all__ = ["TaskResult", "ScoreResult", "PruneResult", "BenchResult", "write_report",
           "SPEEDUP_KEYS", "speedup_text"]

# what a report keeps of compare_throughput's verdict on the speed-up
SPEEDUP_KEYS = ("convention", "speedup", "measured_speedup", "speedup_ci", "bound", "status", "noisy", "note")


def speedup_text(tp: Dict[str, Any]) -> str:
    """A speed-up as people should read it: the ratio with its interval, or why there is none."""
    if tp.get("speedup") is None:
        return str(tp.get("note") or "no speed-up")
    ci = tp.get("speedup_ci")
    text = f"{tp['speedup']:.2f}x" + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "")
    return text + (f", {tp['note']}" if tp.get("noisy") else "")


def _scored(kind: str, report: LayerReport, model: str, dataset: str) -> Dict[str, Any]:
    """The part of ``report.json`` every writer shares: the layer scores and the decision."""
    return dict(schema_version=SCHEMA_VERSION, kind=kind, model=model, dataset=dataset,
                num_layers=report.num_layers, depth=int(report.depth),
                alpha=float(report.alpha), criterion=report.criterion,
                threshold=float(report.threshold),
                layer_names=list(report.layer_names),
                scores=report.scores_json(),
                **report.decision())


def _relative(files: Dict[str, Any]) -> Dict[str, Any]:
    """``files`` with every path relative to the report's folder (a folder that moves, as a
    sweep cell's does when it is renamed into place, keeps its report true)."""
    folder = os.path.dirname(os.path.abspath(str(files["report"])))

    def rel(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [rel(x) for x in v]
        return os.path.relpath(os.path.abspath(str(v)), folder) if isinstance(v, str) else v

    return {k: rel(v) for k, v in files.items()}


def write_report(result: Union["TaskResult", "ScoreResult"]) -> str:
    """Write ``result.to_dict()`` atomically to ``result.files["report"]``; returns the path.
    The only writer of ``report.json``."""
    path = str(result.files["report"])
    write_text(path, json.dumps(result.to_dict(), indent=1, default=float))
    return path


class _HasLayers:
    """The depth and block count of a result that holds a :class:`LayerReport`."""

    layers: LayerReport

    @property
    def depth(self) -> int:
        return int(self.layers.depth)

    @property
    def num_layers(self) -> int:
        return int(self.layers.num_layers)


@dataclass
class TaskResult(_HasLayers):
    """What :func:`sls_fast.harness.pipeline.run_task` measured. :meth:`to_dict` is the run's
    ``report.json``."""

    settings: TaskSettings
    layers: LayerReport
    accuracy: Dict[str, float]
    throughput: Dict[str, Any]
    storage: Dict[str, Any]
    timings: Dict[str, float]
    cache: Dict[str, str]
    files: Dict[str, Any]
    device: str
    versions: Dict[str, Optional[str]] = field(default_factory=dict)
    oracle: Optional[Dict[str, Any]] = None  # run --oracle: sls_fast.method.criteria.oracle_report

    def to_dict(self) -> Dict[str, Any]:
        s = self.settings
        d = dict(_scored("run", self.layers, s.model, s.data), method=s.method,
                 accuracy=self.accuracy, throughput=self.throughput, storage=self.storage,
                 settings=s.to_dict(), timings=self.timings, cache=self.cache,
                 versions=self.versions, device=self.device, files=_relative(self.files))
        if self.oracle is not None:
            d["oracle"] = self.oracle
        return d

    def summary(self) -> str:
        """A short table for people."""
        rep, acc, tp, st = self.layers, self.accuracy, self.throughput, self.storage
        kept = f"{self.depth} of {self.num_layers}"
        if rep.repeats > 1:
            kept += (f" (mean of {rep.repeats} runs; runs keep "
                     f"{' '.join(map(str, rep.run_depths or []))}: confidence "
                     f"{rep.confidence:.0%})")
        rows = [("layers kept", kept),
                ("silhouette (first -> last block)",
                 f"{rep.scores['silhouette'][0]:.3f} -> {rep.scores['silhouette'][-1]:.3f}"),
                ("test accuracy full / pruned", f"{acc['full']:.3f} / {acc['pruned']:.3f}"),
                ("images/s full / pruned", f"{tp['full']:.0f} / {tp['pruned']:.0f}"),
                (f"speed-up (95% interval; {tp.get('convention', 'default')} timing)",
                 speedup_text(tp)),
                ("artifact / full model bytes", f"{st['artifact_bytes']:,} / "
                                                f"{st.get('full_model_bytes') or 0:,}"),
                ("wall time", f"{self.timings['total']:.0f} s"),
                ("report", self.files["report"])]
        by = "SLS" if rep.criterion == "sls" else f"the {rep.criterion} criterion"
        title = f"{by} on {self.settings.model} / {self.settings.data} ({self.settings.method})"
        text = rep.summary() + "\n\n" + text_table(rows, ("", title))
        if self.oracle is not None:
            orows = [(f"{name} (kept)" if name == rep.criterion else name, str(c["depth"]),
                      f"{c['accuracy_at_depth']:.3f}", f"{c['regret_full']:+.3f}",
                      f"{c['regret_best']:+.3f}")
                     for name, c in self.oracle["criteria"].items()]
            what = ("retrained, test" if self.oracle["kind"] == "full" else "probe, val")
            text += "\n\n" + text_table(orows, ("criterion", "depth", f"accuracy ({what})",
                                                 "regret vs full", "vs best <= K"))
        return text


@dataclass
class ScoreResult(_HasLayers):
    """What :func:`sls_fast.harness.tasks.score_task` found: the layer report of one model on
    one split. :meth:`to_dict` is the scoring's ``report.json``; ``layers.json`` (the report
    with its embeddings and the model's description in ``meta``) is what ``prune_task`` reads."""

    model: str
    dataset: str
    split: str
    layers: LayerReport
    device: str
    files: Dict[str, Any]
    versions: Dict[str, Optional[str]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dict(_scored("score", self.layers, self.model, self.dataset), split=self.split,
                    timings={k: float(v) for k, v in self.layers.timings.items()},
                    versions=self.versions, device=self.device, files=_relative(self.files))

    def summary(self) -> str:
        written = [self.files["report"], *self.files.get("plots", [])]
        return self.layers.summary() + "\nwritten: " + ", ".join(map(str, written))


@dataclass
class PruneResult:
    """What :func:`sls_fast.harness.tasks.prune_task` made: the model cut at ``depth``,
    retrained, tested and stored in ``artifact``."""

    model: str
    dataset: str
    method: Optional[str]
    depth: int
    num_layers: int
    strategy: str
    epochs: int
    accuracy: Dict[str, float]
    storage: Dict[str, Any]
    artifact: str
    device: str

    def to_dict(self) -> Dict[str, Any]:
        return dict(model=self.model, dataset=self.dataset, method=self.method,
                    depth=self.depth, num_layers=self.num_layers, strategy=self.strategy,
                    epochs=self.epochs, accuracy=self.accuracy, storage=self.storage,
                    artifact=self.artifact, device=self.device)

    def summary(self) -> str:
        return text_table([("depth", f"{self.depth} of {self.num_layers}"),
                           ("test accuracy", f"{self.accuracy['pruned']:.4f}"),
                           ("artifact bytes", f"{self.storage['artifact_bytes']:,}"),
                           ("artifact", self.artifact)], ("", "pruned"))


@dataclass
class BenchResult:
    """What :func:`sls_fast.harness.tasks.bench_task` timed: the full against the cut model
    (``full`` / ``pruned``: :func:`sls_fast.measure_throughput`'s records)."""

    model: str
    num_layers: int
    depth: int
    full: Dict[str, Any]
    pruned: Dict[str, Any]
    verdict: Dict[str, Any]  # compare_throughput's SPEEDUP_KEYS
    device: str

    @property
    def speedup(self) -> Optional[float]:
        """The speed-up to report (None: not pruned, or a measurement error)."""
        return self.verdict.get("speedup")

    def to_dict(self) -> Dict[str, Any]:
        return dict(model=self.model, num_layers=self.num_layers, depth=self.depth,
                    full=self.full, pruned=self.pruned, **self.verdict, device=self.device)

    def summary(self) -> str:
        rows: List[tuple] = [
            (name, f"{r['images_per_s']:.1f}", f"{r['latency_ms']:.2f}",
             f"[{r['latency_ms_p20']:.2f}, {r['latency_ms_p80']:.2f}]")
            for name, r in (("full", self.full),
                            (f"pruned ({self.depth}/{self.num_layers})", self.pruned))]
        return (text_table(rows, ("model", "images/s", "median ms/batch", "p20-p80 ms"))
                + f"\nspeed-up {speedup_text(self.verdict)}")

