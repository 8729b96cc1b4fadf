"""sls_fast: Straightforward Layer-wise Pruning (SLS, Han & Tang, ECCV 2024), made fast.

Score every layer of an adapted vision model by how well its features separate the task's
classes (t-SNE to 2-D, then silhouette), keep the layers up to where that score collapses,
delete the rest, and store only a pruning index plus adapters and head.

Data flow, one module each: extract -> embed -> metrics -> select -> prune -> bench
(with adapters, storage and train beside them; data and models for offline material).

The names below load their module on first use (PEP 562), so that ``import sls_fast`` and the
command line's first moments do not import torch: a Ctrl-C then is caught by the command line,
and ``sls-fast --help`` answers at once. ``from sls_fast import X`` works as usual.
"""
import importlib
from typing import Any, List

from ._version import __version__

# public name -> the module that defines it
_WHERE = {
    "silhouette_score": ".metrics", "calinski_harabasz_score": ".metrics",
    "davies_bouldin_score": ".metrics", "cluster_scores": ".metrics",
    "extract_features": ".extract", "LayerFeatures": ".extract",
    "tsne": ".embed", "select_depth": ".select",
    "score_layers": ".score", "score_features": ".score", "LayerReport": ".score",
    "add_adapters": ".adapters", "merge_adapters": ".adapters",
    "trainable_parameters": ".adapters", "truncate": ".prune",
    "save_pruned": ".storage", "load_pruned": ".storage", "storage_report": ".storage",
    "finetune": ".train", "evaluate": ".train",
    "measure_throughput": ".bench", "compare_throughput": ".bench",
    "sweep_batch_sizes": ".bench",
}
_SUBMODULES = ("data", "models")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    else:
        raise AttributeError(f"module 'sls_fast' has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "__version__",
    # metrics (one batched pass over all layers)
    "silhouette_score",
    "calinski_harabasz_score",
    "davies_bouldin_score",
    "cluster_scores",
    # extract -> embed -> select, and all of it in one call
    "extract_features",
    "LayerFeatures",
    "tsne",
    "select_depth",
    "score_layers",
    "score_features",
    "LayerReport",
    # adapters, pruning, storage, retraining
    "add_adapters",
    "merge_adapters",
    "trainable_parameters",
    "truncate",
    "save_pruned",
    "load_pruned",
    "storage_report",
    "finetune",
    "evaluate",
    # measurement
    "measure_throughput",
    "compare_throughput",
    "sweep_batch_sizes",
    # offline material
    "data",
    "models",
]
