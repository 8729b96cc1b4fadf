"""sls_fast: Straightforward Layer-wise Pruning (SLS, Han & Tang, ECCV 2024), made fast.

Score every layer of an adapted vision model by how well its features separate the task's
classes (t-SNE to 2-D, then silhouette), keep the layers up to where that score collapses,
delete the rest, and store only a pruning index plus adapters and head.

The package is layered (docs/design.md): ``common`` (helpers) and ``kernels`` <- ``models``
(families, adapters, truncation, training, throughput) <- ``method`` (extract -> embed ->
metrics -> select -> score) <- ``io`` (data sets, checkpoints, artifacts) <- ``harness``
(settings, pipeline, cache, sweep) <- ``cli``. A module imports only from its own layer or
below; ``tests/unit/test_layers.py`` enforces it.

The names below load their module on first use (PEP 562), so that ``import sls_fast`` and the
command line's first moments do not import torch: a Ctrl-C then is caught by the command line,
and ``sls-fast --help`` answers at once. ``from sls_fast import X`` works as usual.
"""
import importlib
from typing import Any, List

from sls_fast._version import __version__

# public name -> the module that defines it (also the order of __all__)
_WHERE = {
    "silhouette_score": ".method.metrics", "calinski_harabasz_score": ".method.metrics",
    "davies_bouldin_score": ".method.metrics", "cluster_scores": ".method.metrics",
    "extract_features": ".method.extract", "LayerFeatures": ".method.extract",
    "tsne": ".method.embed", "select_depth": ".method.select",
    "score_layers": ".method.score", "score_features": ".method.score", "LayerReport": ".method.score",
    "CRITERIA": ".method.criteria", "apply_criterion": ".method.criteria",
    "add_adapters": ".models.adapters", "merge_adapters": ".models.adapters",
    "trainable_parameters": ".models.adapters", "truncate": ".models.prune",
    "save_pruned": ".io.artifacts", "load_pruned": ".io.artifacts", "storage_report": ".io.artifacts",
    "finetune": ".models.train", "evaluate": ".models.train",
    "measure_throughput": ".models.throughput", "compare_throughput": ".models.throughput",
    "sweep_batch_sizes": ".models.throughput",
    # the job layer: one task, a sweep of tasks; the record kept on a model; its family
    "TaskSettings": ".harness.settings", "TaskResult": ".harness.reports",
    "run_task": ".harness.pipeline", "ModelSpec": ".harness.tasks", "score_task": ".harness.tasks",
    "prune_task": ".harness.tasks", "bench_task": ".harness.tasks",
    "ScoreResult": ".harness.reports", "PruneResult": ".harness.reports",
    "BenchResult": ".harness.reports", "SweepSpec": ".harness.sweep", "run_sweep": ".harness.sweep",
    "SLSState": ".models.state", "family_of": ".models.families",
    "schema": ".common.schema",
}
# the documented namespaces: sls_fast.data (offline data sets), sls_fast.models (model loading),
# sls_fast.families (the family registry: register, support_table, FAMILIES)
_NAMESPACES = {"data": ".io.datasets", "models": ".models", "families": ".models.families"}


def __getattr__(name: str) -> Any:
    if name in _NAMESPACES:
        value = importlib.import_module(_NAMESPACES[name], __name__)
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    else:
        raise AttributeError(f"module 'sls_fast' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


# the public API: every name above, once (tests/unit/test_api.py pins it)
__all__ = ["__version__", *_WHERE, *_NAMESPACES]
