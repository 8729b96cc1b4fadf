"""The public API is pinned: names, and a docstring on every public callable."""
import inspect

import sls_fast

PUBLIC = {
    "__version__", "silhouette_score", "calinski_harabasz_score", "davies_bouldin_score",
    "cluster_scores", "extract_features", "LayerFeatures", "tsne", "select_depth",
    "score_layers", "score_features", "LayerReport", "CRITERIA", "apply_criterion", "add_adapters",
    "merge_adapters", "trainable_parameters",
    "truncate", "save_pruned", "load_pruned", "storage_report", "finetune", "evaluate",
    "measure_throughput", "compare_throughput", "sweep_batch_sizes", "data", "models",
    "TaskSettings", "TaskResult", "run_task", "SweepSpec", "run_sweep", "SLSState", "family_of",
    "families", "schema", "ModelSpec", "score_task", "prune_task", "bench_task", "ScoreResult",
    "PruneResult", "BenchResult",
}


def test_all_is_pinned():
    assert set(sls_fast.__all__) == PUBLIC
    assert len(sls_fast.__all__) == len(PUBLIC)  # no duplicates
    for name in sls_fast.__all__:
        assert hasattr(sls_fast, name), name


def test_public_callables_have_docstrings():
    for name in sls_fast.__all__:
        obj = getattr(sls_fast, name)
        if callable(obj):
            assert inspect.getdoc(obj) and len(inspect.getdoc(obj)) > 40, f"{name} needs a docstring"


def test_design_signatures():
    """Keyword arguments the public API promises (README, docs/design.md)."""
    def kw(f):
        return set(inspect.signature(f).parameters)

    assert {"backend"} <= kw(sls_fast.silhouette_score)
    assert {"metrics", "backend"} <= kw(sls_fast.cluster_scores)
    assert {"pool", "device", "dtype", "batch_size", "progress", "amp"} <= kw(sls_fast.extract_features)
    assert {"backend", "perplexity", "max_iter", "init", "seed", "normalize"} <= kw(sls_fast.tsne)
    assert {"alpha"} <= kw(sls_fast.select_depth)
    assert {"kind", "dim", "scale"} <= kw(sls_fast.add_adapters)
    assert {"depth", "num_classes"} <= kw(sls_fast.truncate)
    assert {"batch_size", "image_size", "compile", "amp", "warmup", "iters"} <= kw(sls_fast.measure_throughput)


def test_public_callables_are_fully_annotated():
    """Every public callable annotates each parameter (``*args`` / ``**kwargs`` too, as Any at
    least) and its return; a class its ``__init__`` (a dataclass's generated ``__init__`` carries
    the annotations of its fields)."""
    missing = []
    for name in sls_fast.__all__:
        obj = getattr(sls_fast, name)
        if inspect.ismodule(obj) or not callable(obj):
            continue
        if inspect.isclass(obj):
            if obj.__init__ is object.__init__:
                continue  # takes no arguments
            func, returns = obj.__init__, False  # __init__ returns None
        else:
            func, returns = obj, True
        sig = inspect.signature(func)  # follows __wrapped__ (torch.no_grad etc.)
        for p in sig.parameters.values():
            if p.name in ("self", "cls") and p.kind is p.POSITIONAL_OR_KEYWORD:
                continue
            if p.annotation is p.empty:
                missing.append(f"{name}: parameter {p.name!r}")
        if returns and sig.return_annotation is sig.empty:
            missing.append(f"{name}: return type")
    assert not missing, "unannotated: " + "; ".join(missing)
