"""sls_fast: Straightforward Layer-wise Pruning (SLS, Han & Tang, ECCV 2024), made fast.

Score every layer of an adapted vision model by how well its features separate the task's
classes (t-SNE to 2-D, then silhouette), keep the layers up to where that score collapses,
delete the rest, and store only a pruning index plus adapters and head.

Data flow, one module each: extract -> embed -> metrics -> select -> prune -> bench
(with adapters, storage and train beside them; data and models for offline material).
"""
from ._version import __version__
from . import data, models
from .adapters import add_adapters, merge_adapters, trainable_parameters
from .bench import compare_throughput, measure_throughput, sweep_batch_sizes
from .embed import tsne
from .extract import LayerFeatures, extract_features
from .metrics import calinski_harabasz_score, cluster_scores, davies_bouldin_score, silhouette_score
from .prune import truncate
from .score import LayerReport, score_features, score_layers
from .select import select_depth
from .storage import load_pruned, save_pruned, storage_report
from .train import evaluate, finetune

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
