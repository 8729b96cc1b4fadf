"""The jobs beside :func:`~sls_fast.harness.pipeline.run_task`, as library functions: score a
model that is already adapted (:func:`score_task`), cut and retrain a scored model
(:func:`prune_task`), time the full against the cut model (:func:`bench_task`).

``sls-fast score`` / ``prune`` / ``bench`` parse their options, call these and print the typed
result (:mod:`sls_fast.harness.reports`); a notebook or another front end calls them the same
way. A scoring's folder holds ``layers.json``, whose ``meta`` describes the model
(:class:`ModelSpec`), the data and the seed, so that ``prune_task`` and ``bench_task`` rebuild
the same model from the folder alone; so does a run's folder (its ``method`` gives the adapters).

Example:
    >>> from sls_fast.harness.tasks import ModelSpec, prune_task, score_task
    >>> scored = score_task(ModelSpec("vit_tiny_patch16_224", image_size=32), "digits",
    ...                     "runs/vit")                                     # doctest: +SKIP
    >>> pruned = prune_task("runs/vit", epochs=2)                            # doctest: +SKIP
    >>> pruned.depth == scored.depth, pruned.accuracy["pruned"]              # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import torch.nn as nn

from sls_fast.common.checks import check_choice, check_number
from sls_fast.common.utils import device_name, num_classes_of, seed_everything, versions
from sls_fast.harness.preflight import (check_data, check_device, check_first_batch, check_out,
                                        check_weights)
from sls_fast.harness.reports import (SPEEDUP_KEYS, BenchResult, PruneResult, ScoreResult,
                                      write_report)
from sls_fast.harness.settings import default_of
from sls_fast.io.imagefiles import ON_BAD_IMAGE
from sls_fast.method.embed import MAX_ITER, PERPLEXITY
from sls_fast.method.score import LayerReport
from sls_fast.method.select import ALPHA
from sls_fast.models.adapters import DEFAULT_DIM, adapter_kinds

__all__ = ["ModelSpec", "NoAdaptersWarning", "read_scored", "score_task", "prune_task",
           "bench_task"]

Log = Optional[Callable[[str], None]]


class NoAdaptersWarning(UserWarning):
    """The scored model has no trained adapters: SLS scores the adapted model."""


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model: a plain one (``checkpoint`` = its weights) or, with ``adapter``,
    an adapted one (``checkpoint`` = the adapted weights, ``base_checkpoint`` = the frozen
    backbone's weights when ``checkpoint`` holds only adapters and head).

    Attributes:
        model: a timm name or ``hf:FOLDER``.
        image_size: input size (None: the model's own; ViT and Swin are built for it).
        checkpoint, base_checkpoint: weight files (see :func:`sls_fast.io.checkpoints.load_adapted`).
        adapter: "convpass" | "repadapter" | "lora" | None.
        adapter_dim, adapter_scale: bottleneck width (LoRA: rank) and output scale (LoRA:
            lora_alpha); None: the defaults.
    """

    model: str
    image_size: Optional[int] = None
    checkpoint: Optional[str] = None
    base_checkpoint: Optional[str] = None
    adapter: Optional[str] = None
    adapter_dim: Optional[int] = None
    adapter_scale: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("no model: pass --model NAME (or --report DIR of a scored model)")
        object.__setattr__(self, "image_size", check_number(
            self.image_size, "image_size", integer=True, low=8, allow_none=True))
        object.__setattr__(self, "adapter_dim", check_number(
            self.adapter_dim, "adapter_dim", integer=True, low=1, allow_none=True))
        object.__setattr__(self, "adapter_scale", check_number(
            self.adapter_scale, "adapter_scale", low=0, low_open=True, allow_none=True))
        if self.adapter is not None:
            check_choice(self.adapter, "adapter", adapter_kinds())

    @classmethod
    def resolve(cls, given: Mapping[str, Any], meta: Optional[Mapping[str, Any]] = None
                ) -> "ModelSpec":
        """The spec from ``given`` (None values skipped), then from ``meta`` (a scored folder's
        ``layers.json`` meta) for what ``given`` leaves out."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise TypeError(f"unknown model setting(s) {unknown}; known: {names}")
        meta = meta or {}
        values: Dict[str, Any] = {k: given.get(k) if given.get(k) is not None else meta.get(k)
                                  for k in names}
        return cls(**values)

    @classmethod
    def of(cls, spec: Union["ModelSpec", str, Mapping[str, Any]]) -> "ModelSpec":
        """A spec from a spec, a model name or a mapping of its fields."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, Mapping):
            return cls.resolve(spec)
        raise TypeError(f"a model spec must be a ModelSpec, a model name or a mapping, got "
                        f"{type(spec).__name__}")

    def to_meta(self) -> dict:
        """The fields, as a scored folder's ``layers.json`` keeps them."""
        return dataclasses.asdict(self)

    def build(self, *, num_classes: Optional[int] = None, quiet_random: bool = False
              ) -> nn.Module:
        """The model (``quiet_random``: no warning for random weights, as timing needs none)."""
        from sls_fast.io.checkpoints import load_adapted, size_kwargs
        from sls_fast.models.zoo import load

        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if quiet_random else "default")
            if self.adapter is None:
                return load(self.model, checkpoint=self.checkpoint, num_classes=num_classes,
                            **size_kwargs(self.model, self.image_size))
            return load_adapted(self.model, self.adapter, checkpoint=self.checkpoint,
                                base_checkpoint=self.base_checkpoint, image_size=self.image_size,
                                dim=self.adapter_dim or DEFAULT_DIM, scale=self.adapter_scale,
                                num_classes=num_classes)


def read_scored(folder: str) -> LayerReport:
    """The layer report in ``folder/layers.json`` (written by :func:`score_task` or
    :func:`~sls_fast.harness.pipeline.run_task`), checked to say which model and data."""
    path = os.path.join(folder, "layers.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found; run 'sls-fast score --out {folder}' first")
    try:
        report = LayerReport.from_json(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable sls-fast report "
                         f"({type(exc).__name__}: {exc})") from None
    if not report.meta.get("model") or not report.meta.get("data"):
        raise ValueError(f"{path} does not say which model/data it scored")
    return report


def _splits(data: str, splits, *, model: nn.Module, image_size, seed: int, on_bad_image: str):
    from sls_fast.io.datasets import from_spec

    check_choice(on_bad_image, "on_bad_image", ON_BAD_IMAGE)
    return [from_spec(data, sp, image_size=image_size, model=model, seed=seed,
                      on_bad_image=on_bad_image) for sp in splits]


def score_task(spec: Union[ModelSpec, str, Mapping[str, Any]], data: str, out: str, *,
               split: str = "train", alpha: float = ALPHA, seed: int = 0,
               tsne_iter: int = MAX_ITER, perplexity: float = PERPLEXITY,
               tsne_backend: str = "auto", repeats: int = 1,
               batch_size: int = default_of("batch_size"), pool: str = "auto",
               device: Optional[str] = None, on_bad_image: str = ON_BAD_IMAGE[0],
               criterion: str = "sls", criteria: Union[str, Sequence[str]] = (),
               criterion_params: Union[str, Mapping[str, Mapping[str, Any]], None] = None,
               progress: bool = True, log: Log = None) -> ScoreResult:
    """Score every block of the model ``spec`` on one split of ``data`` (no pruning) and write
    ``out/report.json``, ``out/layers.json`` and the two plots.

    Args:
        spec: the model (a :class:`ModelSpec`, a model name or a mapping of its fields). SLS
            scores an adapted model: without ``adapter`` and ``checkpoint`` a
            :class:`NoAdaptersWarning` says so.
        data: a data spec (``digits | lfw | vtab:PATH | folder:PATH``); ``split`` which split.
        out: the output folder (created).
        alpha, seed, tsne_iter, perplexity, tsne_backend, repeats: as
            :func:`sls_fast.score_layers` (alpha in (0, 1]).
        batch_size, pool, device: of the feature extraction (:func:`sls_fast.extract_features`).
        on_bad_image: an unreadable image file: "fail" (with its name) or "skip" (with a warning).
        criterion, criteria, criterion_params: the criterion that chooses the depth and
            others scored beside it (:func:`sls_fast.score_features`; as text: "knn,cka" /
            "all" and "knn.k=5,cka.threshold=0.8").
        progress: show progress bars; log: called with one line per stage.

    Returns:
        :class:`~sls_fast.harness.reports.ScoreResult`; its ``to_dict()`` is ``out/report.json``.
    """
    from sls_fast.io.datasets import default_image_size
    from sls_fast.method.score import score_layers

    spec = ModelSpec.of(spec)
    check_number(alpha, "alpha", low=0, low_open=True, high=1)
    check_number(perplexity, "perplexity", low=1)
    from sls_fast.method.criteria import parse_criteria, parse_criterion_params

    criteria = parse_criteria(criteria if isinstance(criteria, str) else ",".join(criteria))
    if isinstance(criterion_params, str) or criterion_params is None:
        criterion_params = parse_criterion_params(criterion_params or "")
    check_out(out)  # preflight: before any compute (sls_fast.harness.preflight)
    dev = check_device(device)
    check_weights(spec.model, spec.checkpoint, spec.base_checkpoint)
    say = log or (lambda msg: None)
    seed_everything(seed)
    if spec.image_size is None:  # the data source's default, as run_task's
        spec = dataclasses.replace(spec, image_size=default_image_size(data, spec.model))
    model = spec.build()
    (dataset,) = _splits(data, [split], model=model, image_size=spec.image_size, seed=seed,
                         on_bad_image=on_bad_image)
    used = getattr(dataset, "image_size", None)  # what the data resolved (the model's own size)
    used = used[0] if isinstance(used, (tuple, list)) else used
    if spec.image_size is None and used:
        spec = dataclasses.replace(spec, image_size=int(used))  # recorded as used, never null
    check_data({split: dataset}, perplexity=perplexity, scored_split=split)
    check_first_batch(model, batch_size=batch_size, image_size=spec.image_size, device=dev)
    if spec.adapter is None or spec.checkpoint is None:
        warnings.warn("scoring a model without trained adapters: SLS scores the adapted model "
                      "(on the embedded default 3 of 16 blocks frozen vs 6 of 16 adapted); pass "
                      "--adapter KIND --checkpoint FILE", NoAdaptersWarning, stacklevel=2)
    say(f"scoring {spec.model} on {data} ({len(dataset)} images, split {split})")
    report = score_layers(model, dataset, alpha=alpha, seed=seed, max_iter=tsne_iter,
                          perplexity=perplexity,
                          tsne_backend=tsne_backend, progress=progress, device=dev,
                          batch_size=batch_size, repeats=repeats, pool=pool, criterion=criterion,
                          criteria=criteria, criterion_params=criterion_params)
    report.meta.update(spec.to_meta(), data=data, split=split, seed=seed,
                       on_bad_image=on_bad_image, title=f"{spec.model} on {data}",
                       class_names=[str(c) for c in getattr(dataset, "classes", None) or []])
    os.makedirs(out, exist_ok=True)
    layers = os.path.join(out, "layers.json")
    report.to_json(layers)
    plots = report.plot(out)
    result = ScoreResult(model=spec.model, dataset=data, split=split, layers=report,
                         device=device_name(dev), versions=versions(),
                         files=dict(report=os.path.join(out, "report.json"), layers=layers,
                                    plots=plots))
    write_report(result)
    return result


def prune_task(folder: str, *, depth: Optional[int] = None,
               strategy: str = default_of("strategy"), epochs: int = default_of("prune_epochs"),
               batch_size: int = default_of("batch_size"), seed: int = 0,
               device: Optional[str] = None, spec: Optional[Mapping[str, Any]] = None,
               on_bad_image: Optional[str] = None, progress: bool = True,
               log: Log = None) -> PruneResult:
    """Cut the model scored in ``folder`` at its depth, retrain adapters and head, test it, and
    write ``folder/pruned.safetensors``.

    The model is rebuilt from ``folder/layers.json`` (:func:`score_task`'s or a run's): its
    weights, image size and adapters; a model scored without adapters gets fresh ones of the
    run's ``method`` (Convpass for a scoring). ``spec`` (:class:`ModelSpec` fields) and
    ``on_bad_image`` override what the folder says.

    Args:
        folder: a folder written by :func:`score_task` or :func:`run_task`.
        depth: blocks kept (None: the reported depth).
        strategy, epochs, batch_size: the retraining (FT | CLR | TFS; epochs on the train split,
            the best epoch chosen on val).
        seed, device, progress, log: as :func:`score_task`.

    Returns:
        :class:`~sls_fast.harness.reports.PruneResult`.
    """
    from sls_fast.io.artifacts import save_pruned, storage_report
    from sls_fast.models.adapters import add_adapters
    from sls_fast.models.prune import truncate
    from sls_fast.models.state import get_state
    from sls_fast.models.train import evaluate, finetune

    report = read_scored(folder)
    meta = report.meta
    model_spec = ModelSpec.resolve(spec or {}, meta)
    depth = int(check_number(depth, "depth", integer=True, low=1, high=report.num_layers,
                             allow_none=True) or report.depth)
    say = log or (lambda msg: None)
    check_out(folder)
    dev = check_device(device)
    check_weights(model_spec.model, model_spec.checkpoint, model_spec.base_checkpoint)
    seed_everything(seed)
    model = model_spec.build()
    size = model_spec.image_size
    train, val, test = _splits(meta["data"], ("train", "val", "test"), model=model,
                               image_size=size, seed=seed,
                               on_bad_image=on_bad_image or meta.get("on_bad_image")
                               or ON_BAD_IMAGE[0])
    check_data({"train": train, "val": val, "test": test})
    num_classes = num_classes_of(train)
    state = get_state(model)
    method = model_spec.adapter
    if state is None or state.adapters is None:  # scored frozen or a run's folder: fresh adapters
        method = meta.get("method") or default_of("method")  # a run keeps its method
        add_adapters(model, method, dim=model_spec.adapter_dim or DEFAULT_DIM,
                     scale=model_spec.adapter_scale)
    pruned = truncate(model, depth, num_classes=num_classes)
    pruned.to(dev)
    say(f"pruning {model_spec.model} to {depth} of {report.num_layers} blocks; retraining "
        f"({strategy}, {epochs} epochs)")
    fit = finetune(pruned, train, val, strategy=strategy, epochs=epochs, batch_size=batch_size,
                   progress=progress, seed=seed)
    acc = evaluate(pruned, test)
    artifact = os.path.join(folder, "pruned.safetensors")
    save_pruned(artifact, pruned, depth, dataset=meta["data"], image_size=size)
    return PruneResult(model=model_spec.model, dataset=meta["data"], method=method, depth=depth,
                       num_layers=report.num_layers, strategy=strategy, epochs=epochs,
                       accuracy=dict(pruned=acc, pruned_val=fit["best_val_acc"]),
                       storage=storage_report(artifact, pruned, full_model=model),
                       artifact=artifact, device=device_name(dev))


def bench_task(folder: Optional[str] = None, *, spec: Optional[Mapping[str, Any]] = None,
               depth: Optional[int] = None, batch_size: int = default_of("batch_size"),
               compile: bool = True,
               amp: Optional[str] = None, iters: Optional[int] = None, seed: int = 0,
               device: Optional[str] = None, log: Log = None) -> BenchResult:
    """Throughput of the full against the cut model, on random inputs (random weights are fine
    for timing).

    With ``folder`` (a scored, pruned or run folder): the scored model against
    ``folder/pruned.safetensors`` when it exists and ``depth`` is None, else against a cut at
    ``depth`` (default: the reported depth). Without: the model of ``spec`` cut at ``depth``
    (default: half its blocks).

    Args:
        folder: a folder written by :func:`score_task`, :func:`prune_task` or ``run_task``.
        spec: :class:`ModelSpec` fields (override the folder's).
        depth: blocks kept by the cut.
        batch_size, compile, amp, iters, device: as
            :func:`sls_fast.compare_throughput`.
        seed: seeds the random weights (the same base the artifact was made from).

    Returns:
        :class:`~sls_fast.harness.reports.BenchResult`.
    """
    from sls_fast.io.artifacts import load_pruned
    from sls_fast.models.adapters import add_adapters
    from sls_fast.models.families import find_blocks
    from sls_fast.models.prune import truncate
    from sls_fast.models.state import get_state
    from sls_fast.models.throughput import compare_throughput

    report = read_scored(folder) if folder else None
    model_spec = ModelSpec.resolve(spec or {}, report.meta if report else None)
    say = log or (lambda msg: None)
    dev = check_device(device)
    check_weights(model_spec.model, model_spec.checkpoint, model_spec.base_checkpoint)
    seed_everything(seed)
    model = model_spec.build(quiet_random=True)
    L = len(find_blocks(model))
    if depth is not None:
        depth = int(check_number(depth, "depth", integer=True, low=1, high=L))
    artifact = os.path.join(folder, "pruned.safetensors") if folder else None
    if artifact and depth is None and os.path.isfile(artifact):
        seed_everything(seed)  # the same (random or loaded) base weights the artifact was made from
        weights = model_spec.base_checkpoint if model_spec.adapter else model_spec.checkpoint
        base = dataclasses.replace(model_spec, adapter=None, checkpoint=weights)
        pruned = load_pruned(artifact, base.build(quiet_random=True))
        depth = len(find_blocks(pruned))
        pruned_state, state = get_state(pruned), get_state(model)
        ad = pruned_state.adapters if pruned_state is not None else None
        if ad is not None and (state is None or state.adapters is None):  # time like with like
            add_adapters(model, ad.kind, dim=ad.dim, scale=ad.scale, groups=ad.groups,
                         targets=ad.targets)
    else:
        depth = depth or (report.depth if report else max(1, L // 2))
        pruned = truncate(model, depth)
    say(f"timing {model_spec.model}: {L} blocks vs {depth}, batch {batch_size}, "
        f"{'compiled' if compile else 'eager'}, device {dev}")
    res = compare_throughput(model, pruned, batch_size=batch_size, image_size=model_spec.image_size,
                             compile=compile, amp=amp, iters=iters, device=dev,
                             blocks=(depth, L))
    return BenchResult(model=model_spec.model, num_layers=L, depth=depth, full=res["full"],
                       pruned=res["pruned"], verdict={k: res[k] for k in SPEEDUP_KEYS},
                       device=device_name(dev))

