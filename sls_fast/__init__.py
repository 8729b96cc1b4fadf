"""sls_fast: Straightforward Layer-wise Pruning (SLS, Han & Tang, ECCV 2024), made fast.

Score every layer of an adapted vision model by how well its features separate the task's
classes (t-SNE to 2-D, then silhouette), keep the layers up to where that score collapses,
delete the rest, and store only a pruning index plus adapters and head.
"""
from ._version import __version__
from .select import select_depth
from .bench import compare_throughput, measure_throughput, sweep_batch_sizes
from .score import LayerReport, score_layers
from .metrics import (
    calinski_harabasz_score,
    cluster_scores,
    davies_bouldin_score,
    silhouette_score,
)

__all__ = [
    "__version__",
    "silhouette_score",
    "calinski_harabasz_score",
    "davies_bouldin_score",
    "cluster_scores",
    "select_depth",
    "score_layers",
    "LayerReport",
    "measure_throughput",
    "compare_throughput",
    "sweep_batch_sizes",
]
