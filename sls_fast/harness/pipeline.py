"""The whole SLS job on one task as one library function: adapt -> score -> select -> truncate ->
retrain -> measure -> store.

:func:`run_task` is what ``sls-fast run`` runs, what every cell of ``sls-fast sweep`` runs, and
what an API user calls; :class:`sls_fast.harness.settings.TaskSettings` says what to run,
:class:`sls_fast.harness.reports.TaskResult` is what came out and serialises to the run's ``report.json``.

With a :class:`sls_fast.harness.cache.StageCache`, the stages that do not depend on a setting are read
back instead of recomputed: the adapted weights (keyed by the base weights, the data and the
adaptation settings), the features (keyed by the adapted weights' checksum, the data, the image
size and the pooling), the t-SNE scores (keyed by the features and the t-SNE settings; alpha only
re-selects the depth) and the retrained pruned model (keyed by the adapted weights and the depth).
Each stage is seeded on its own, so a cached and a computed stage give the same result.

Example:
    >>> from sls_fast.harness.pipeline import run_task
    >>> from sls_fast.harness.settings import TaskSettings
    >>> result = run_task(TaskSettings.quick(), "runs/quick")       # doctest: +SKIP
    >>> result.depth, result.accuracy["pruned"], result.throughput["speedup"]   # doctest: +SKIP
"""
from __future__ import annotations

import os
import time
import warnings
from typing import TYPE_CHECKING, Callable, Dict, Optional, Union

import torch

from sls_fast.harness.reports import SPEEDUP_KEYS, TaskResult, write_report
from sls_fast.harness.settings import TaskSettings

if TYPE_CHECKING:
    from sls_fast.harness.cache import StageCache
    from sls_fast.io.datasets import ArrayImageDataset, FileListDataset

__all__ = ["run_task"]


def _trainable_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """What training changed: the trainable parameters and every buffer."""
    sd = model.state_dict()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    names |= {n for n, _ in model.named_buffers()}
    return {n: sd[n] for n in sorted(names) if n in sd}


def _load_trainable_state(model: torch.nn.Module, tensors: Dict[str, torch.Tensor]) -> None:
    expected = set(_trainable_state(model))
    if set(tensors) != expected:
        raise ValueError("a cached stage does not match this model (different trainable "
                         f"tensors: {sorted(set(tensors) ^ expected)[:4]} ...); delete the cache")
    model.load_state_dict(tensors, strict=False)


def run_task(settings: TaskSettings, out: str, *, progress: bool = True,
             log: Optional[Callable[[str], None]] = None,
             cache: Optional[StageCache] = None) -> TaskResult:
    """Run SLS on one task end to end and write its files to ``out``.

    adapt (``method`` adapters + a new head, ``epochs`` on the train split, the best epoch on
    val) -> score every block (one pass, t-SNE of all layers, silhouette) -> select the depth
    -> truncate -> retrain (``strategy``, ``prune_epochs``) -> test accuracy of both -> throughput
    of both -> store the pruning index + adapters + head.

    Args:
        settings: a :class:`TaskSettings`.
        out: folder for ``report.json``, ``layers.json``, the plots and ``pruned.safetensors``.
        progress: show progress bars.
        log: called with one line per stage (default: nothing).
        cache: a :class:`sls_fast.harness.cache.StageCache` to read stages from and write them to.

    Returns:
        :class:`TaskResult`; its :meth:`TaskResult.to_dict` is also written to ``out/report.json``.
    """
    from sls_fast.io.artifacts import save_pruned
    from sls_fast.models.adapters import add_adapters
    from sls_fast.models.prune import truncate
    from sls_fast.models.throughput import MIN_TIMED_BATCHES, compare_throughput
    from sls_fast.models.train import evaluate, finetune
    from sls_fast.common.utils import device_name, num_classes_of, seed_everything, versions
    from sls_fast.harness.preflight import (check_data, check_device, check_first_batch,
                                            check_out, check_weights)
    from sls_fast.harness.cache import (cache_key, data_fingerprint, features_from_tensors, features_to_tensors,
                        weights_checksum)
    from sls_fast.io.checkpoints import size_kwargs
    from sls_fast.io.datasets import default_image_size, from_spec
    from sls_fast.method.extract import extract_features
    from sls_fast.models.zoo import load
    from sls_fast.method.score import LayerReport, score_features
    from sls_fast.models.state import base_checksum
    from sls_fast.io.artifacts import storage_report

    if not isinstance(settings, TaskSettings):
        raise TypeError(f"settings must be a TaskSettings, got {type(settings).__name__}")
    s = settings
    say = log or (lambda msg: None)
    # preflight (sls_fast.harness.preflight): what a user can get wrong, before any compute
    check_out(out)
    dev = check_device(s.device)
    check_weights(s.model, s.checkpoint)
    timings, hits = {}, {}

    def cached(stage, key):
        entry = cache.get(key, stage) if cache is not None else None
        hits[stage] = "hit" if entry is not None else ("miss" if cache is not None else "off")
        return entry

    t0 = time.perf_counter()
    seed_everything(s.seed)
    size = s.image_size or default_image_size(s.data, s.model)  # None: the model's own input size
    model = load(s.model, checkpoint=s.checkpoint, **size_kwargs(s.model, size))
    split = {sp: from_spec(s.data, sp, image_size=size, model=model, seed=s.seed,
                           on_bad_image=s.on_bad_image) for sp in ("train", "val", "test")}
    train, val, test = split["train"], split["val"], split["test"]
    size = getattr(train, "image_size", size)  # the data's (H, W) when it decided the size
    size = int(size[0]) if isinstance(size, (tuple, list)) else size
    check_data(split, scored=s.score_points, perplexity=s.perplexity)
    check_first_batch(model, batch_size=s.batch_size, image_size=size, device=dev)
    os.makedirs(out, exist_ok=True)
    num_classes = s.num_classes or num_classes_of(train)
    add_adapters(model, s.method, dim=s.adapter_dim, scale=s.adapter_scale,
                 num_classes=num_classes)
    model.to(dev)
    data_key = {sp: data_fingerprint(d) for sp, d in split.items()}
    timings["load"] = time.perf_counter() - t0

    def trained(stage, key, net, strategy, epochs, lr=None):
        """Train ``net``'s adapters and head and test it, or read both back from the cache."""
        entry = cached(stage, key)
        if entry is not None:
            _load_trainable_state(net, entry[0])
            return entry[1]["fit"], entry[1]["accuracy"]
        seed_everything(s.seed)
        fit = finetune(net, train, val, strategy=strategy, epochs=epochs, lr=lr,
                       batch_size=s.batch_size, progress=progress, seed=s.seed)
        fit = dict(best_val_acc=fit["best_val_acc"], best_epoch=fit["best_epoch"])
        acc = evaluate(net, test)
        if cache is not None:
            cache.put(key, stage, _trainable_state(net), dict(fit=fit, accuracy=acc))
        return fit, acc

    say(f"[1/6] adapting {s.model} ({s.method} on every block + new head), {s.epochs} epochs on "
        f"{len(train)} images, selected on {len(val)} val")
    t0 = time.perf_counter()
    # each key: the settings that affect the stage (settings.affecting), with what they resolve
    # to put in (the data's fingerprint, the base weights' checksum, the image size, the classes)
    adapt_key = cache_key("adapt", **{**s.values("adapt"), "data": data_key,
                                      "checkpoint": base_checksum(model), "image_size": size,
                                      "num_classes": num_classes})
    fit_full, acc_full = trained("adapt", adapt_key, model, "CLR", s.epochs, s.lr)
    timings["adapt"] = time.perf_counter() - t0

    say("[2/6] scoring every block (one pass, t-SNE of all layers, silhouette)")
    score_data: Union[ArrayImageDataset, FileListDataset, torch.utils.data.Subset] = train
    if s.score_points:
        score_data = torch.utils.data.Subset(train, list(range(min(s.score_points, len(train)))))
    t0 = time.perf_counter()
    weights = weights_checksum(model)
    feat_key = cache_key("features", weights=weights, data=data_key["train"],
                         points=len(score_data), image_size=size, pool="auto")
    score_key = cache_key("scores", **{**s.values("score"), "data": feat_key,
                                       "image_size": size, "score_points": len(score_data),
                                       "criteria": sorted(s.scored_criteria())})
    train_feats = None  # the scored split's features, when this run has them in memory
    entry = cached("scores", score_key)
    if entry is not None:
        report = LayerReport.from_json(entry[1]["report"]).select(s.criterion, s.alpha)
        hits["features"] = "not needed"
    else:
        entry = cached("features", feat_key)
        if entry is not None:
            tensors, record = entry
            feats = features_from_tensors(tensors, record, device=dev)
        else:
            feats = extract_features(model, score_data, device=dev, batch_size=s.batch_size,
                                     progress=progress)
            if cache is not None:
                cache.put(feat_key, "features", *features_to_tensors(feats))
        timings["score_extract"] = time.perf_counter() - t0
        train_feats = feats
        report = score_features(feats, alpha=s.alpha, seed=s.seed, max_iter=s.tsne_iter,
                                perplexity=s.perplexity, tsne_backend=s.tsne_backend,
                                repeats=s.repeats, progress=progress, criterion=s.criterion,
                                criteria=s.scored_criteria(), criterion_params=_named_params(s))
        timings.update({f"score_{k}": v for k, v in report.timings.items()})
        if cache is not None:
            cache.put(score_key, "scores", None, dict(report=report.to_json()))
    timings["score"] = time.perf_counter() - t0
    depth, L = report.depth, report.num_layers
    kept_cut = None  # the full oracle's retrained cut at the depth kept: (model, fit, accuracy)

    def retrain_key(k):
        return cache_key("retrain", **{**s.values("retrain"), "data": data_key},
                         adapted=weights, depth=k)

    oracle = None
    if s.oracle == "probe":  # the accuracy of the cut at every depth: a probe of each block
        from sls_fast.method.criteria import oracle_report, probe_oracle

        say("[3/6] oracle: a linear probe of every block, train split -> val")
        t0 = time.perf_counter()
        oracle_key = cache_key("oracle", **s.values("oracle"), features=feat_key,
                               val=data_key["val"])
        entry = cached("oracle", oracle_key)
        if entry is not None:
            accuracy = entry[1]["accuracy"]
        else:
            if train_feats is None:  # the scores came from the cache: their features, or a pass
                entry = cache.get(feat_key, "features") if cache is not None else None
                train_feats = (features_from_tensors(*entry, device=dev) if entry is not None
                               else extract_features(model, score_data, device=dev,
                                                     batch_size=s.batch_size, progress=progress))
            val_feats = extract_features(model, val, device=dev, batch_size=s.batch_size,
                                         progress=progress)
            accuracy = probe_oracle(train_feats, val_feats).tolist()
            if cache is not None:
                cache.put(oracle_key, "oracle", None, dict(accuracy=accuracy))
        oracle = oracle_report(accuracy, report.criterion_depths(), kind="probe", split="val")
        timings["oracle"] = time.perf_counter() - t0
    elif s.oracle == "full":  # the model cut at every depth, its adapters and head retrained
        from sls_fast.common.utils import progress_bar
        from sls_fast.method.criteria import oracle_report

        say(f"[3/6] oracle: the model cut at every depth 1..{L}, adapters + head retrained "
            f"({s.strategy}, {s.prune_epochs} epochs each), test accuracy")
        t0 = time.perf_counter()
        accuracy = []
        for k in progress_bar(range(1, L + 1), enabled=progress, desc="oracle (depths)"):
            seed_everything(s.seed)  # as the retrain stage below: the same model at the same K
            net = truncate(model, k, num_classes=num_classes)
            fit_k, acc_k = trained("retrain", retrain_key(k), net, s.strategy, s.prune_epochs)
            accuracy.append(acc_k)
            if k == depth:  # the run's own retraining: kept, not trained again below
                kept_cut = (net, fit_k, acc_k)
        oracle = oracle_report(accuracy, report.criterion_depths(), kind="full", split="test",
                               full_accuracy=acc_full)
        timings["oracle"] = time.perf_counter() - t0

    say(f"[3/6] SLS depth {depth} of {L}; truncating and retraining ({s.strategy}, "
        f"{s.prune_epochs} epochs)")
    t0 = time.perf_counter()
    if kept_cut is not None:  # the full oracle retrained this depth already
        pruned, fit_pruned, acc_pruned = kept_cut
        hits["retrain"] = "oracle"
    else:
        seed_everything(s.seed)
        pruned = truncate(model, depth, num_classes=num_classes)
        fit_pruned, acc_pruned = trained("retrain", retrain_key(depth), pruned, s.strategy,
                                         s.prune_epochs)
    timings["retrain"] = time.perf_counter() - t0

    say("[4/6] throughput, full vs pruned: " + (
        f"batch {s.batch_size}, {'compiled' if s.compile else 'eager'}" if s.timing == "default"
        else f"the {s.timing} convention") + (
        f", {s.throughput_iters} timed batches per model (few: the speed-up is marked noisy)"
        if s.throughput_iters and s.throughput_iters < MIN_TIMED_BATCHES else ""))
    t0 = time.perf_counter()
    own = s.timing == "default"  # the default convention times at the job's batch and compile
    tp = compare_throughput(model, pruned, batch_size=s.batch_size if own else None,
                            image_size=size, compile=s.compile if own else None,
                            iters=s.throughput_iters, device=dev, blocks=(depth, L),
                            convention=s.timing)
    timings["throughput"] = time.perf_counter() - t0

    say("[5/6] storing the pruning index + adapters + head")
    artifact = os.path.join(out, "pruned.safetensors")
    save_pruned(artifact, pruned, depth, dataset=s.data, image_size=size)
    storage = storage_report(artifact, pruned, full_model=model)

    say("[6/6] writing the report and plots")
    # what 'sls-fast prune --report OUT' rebuilds the model from: base weights, adapter kind/size
    report.meta.update(model=s.model, dataset=s.data, image_size=size, num_classes=num_classes,
                       data=s.data, method=s.method, checkpoint=s.checkpoint,
                       adapter_dim=s.adapter_dim, adapter_scale=s.adapter_scale,
                       class_names=[str(c) for c in getattr(train, "classes", None) or []],
                       title=f"{s.model} on {s.data}")
    report.to_json(os.path.join(out, "layers.json"))
    plots = report.plot(out)
    if oracle is not None:
        from sls_fast.method.criteria import plot_oracle

        plots.append(plot_oracle(oracle, os.path.join(out, "oracle.png"),
                                 title=f"{s.model} on {s.data}: accuracy vs depth"))
    timings["total"] = sum(v for k, v in timings.items()
                           if not k.startswith("score_"))  # score_* are parts of "score"
    result = TaskResult(
        settings=s, layers=report,
        accuracy=dict(full=acc_full, pruned=acc_pruned, full_val=fit_full["best_val_acc"],
                      pruned_val=fit_pruned["best_val_acc"]),
        throughput=dict(full=tp["full"]["images_per_s"], pruned=tp["pruned"]["images_per_s"],
                        **{k: tp[k] for k in SPEEDUP_KEYS}, full_details=tp["full"],
                        pruned_details=tp["pruned"]),
        storage=dict(artifact_bytes=storage["artifact_bytes"],
                     full_model_bytes=storage.get("full_model_bytes"),
                     pruned_model_bytes=storage["pruned_model_bytes"]),
        timings=timings, cache=hits, versions=versions(), device=device_name(dev), oracle=oracle,
        files=dict(report=os.path.join(out, "report.json"), artifact=artifact, plots=plots,
                   layers=os.path.join(out, "layers.json")))
    write_report(result)
    return result


def _named_params(s: TaskSettings) -> Dict[str, Dict[str, float]]:
    """The criterion parameters of the criteria ``s`` scores; others warn and are left out."""
    from sls_fast.method.criteria import parse_criterion_params

    named = set(s.scored_criteria())
    params = parse_criterion_params(s.criterion_params)
    unused = sorted(set(params) - named)
    if unused:
        warnings.warn(f"criterion_params for {', '.join(unused)}, which neither criterion nor "
                      "criteria names: ignored", UserWarning, stacklevel=3)
    return {k: v for k, v in params.items() if k in named}
