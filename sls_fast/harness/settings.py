"""The one source of a task's settings.

:class:`TaskSettings` says what :func:`sls_fast.harness.pipeline.run_task` runs. Each field
carries, in its ``metadata``, everything else that used to be written out beside it: its help
text, its command-line flag and choices, whether a sweep may share it, and the stages whose
result it changes. From those are generated:

* the options of ``sls-fast run`` and ``sls-fast sweep`` (:mod:`sls_fast.cli.options`);
* the shared settings of :class:`sls_fast.harness.sweep.spec.SweepSpec`, hence its TOML keys;
* the field sets of the stage cache's keys and of the sweep's adaptation groups
  (:func:`affecting`).

Sweep-only options (where the cells run) are :class:`SweepOptions`, described the same way.

Example:
    >>> from sls_fast.harness.settings import TaskSettings, affecting
    >>> TaskSettings(epochs=2).epochs
    2
    >>> "alpha" in affecting("adapt"), "alpha" in affecting("select")
    (False, True)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

from sls_fast.common.checks import check_choice, check_number
from sls_fast.method.embed import MAX_ITER, PERPLEXITY, TSNE_BACKENDS
from sls_fast.io.imagefiles import ON_BAD_IMAGE
from sls_fast.method.criteria import CRITERIA
from sls_fast.method.select import ALPHA
from sls_fast.models.adapters import DEFAULT_DIM
from sls_fast.models.throughput import CONVENTIONS
from sls_fast.models.train import STRATEGIES
from sls_fast.models.zoo import DEFAULT_MODEL

__all__ = ["TaskSettings", "SweepOptions", "METHODS", "QUICK", "STAGES", "AXES",
           "affecting", "default_of", "setting_fields"]

METHODS = ("convpass", "repadapter", "lora")
ORACLES = ("off", "probe", "full")
MAX_IMAGE_SIZE = 4096  # larger inputs are a typo, not a vision task
# The reduced setting used by tests and first tries: about a minute on 2 CPU cores.
QUICK = dict(image_size=32, epochs=1, prune_epochs=1, tsne_iter=300, score_points=400,
             timing="authors", throughput_iters=3, compile=False)  # the cheapest timing
# The stages of run_task. A setting "affects" a stage when it changes that stage's result
# directly, its inputs given (the adapted weights, the features, the depth): a stage's cache key
# is those settings plus the checksums of its inputs.
STAGES = ("adapt", "score", "oracle", "select", "retrain", "measure")
# The settings a sweep crosses (one value per cell; the sweep names them in the plural).
AXES = {"model": "models", "data": "data", "method": "methods", "alpha": "alphas",
        "criterion": "criteria"}


def _setting(default: Any, help: str, *, kind: type, affects: Sequence[str],
             flag: Optional[str] = None, choices: Optional[Sequence[Any]] = None,
             metavar: Optional[str] = None, sweep: bool = True, const: Any = None) -> Any:
    """A settings field: ``kind`` parses it from text, ``affects`` lists the stages whose result
    it changes, ``flag`` is its command-line flag (default ``--name-with-dashes``), ``sweep``
    says whether a sweep's cells may share a value of it, ``const`` is the value of the flag
    given without one."""
    assert set(affects) <= set(STAGES), affects
    return field(default=default, metadata=dict(
        help=help, kind=kind, affects=tuple(affects), flag=flag,
        choices=tuple(choices) if choices else None, metavar=metavar, sweep=sweep, const=const))


@dataclass
class TaskSettings:
    """What :func:`sls_fast.harness.pipeline.run_task` runs. Every field has the embedded
    default's value; ``help(TaskSettings)`` and ``sls-fast run --help`` list them with their
    meaning (:func:`setting_fields`)."""

    model: str = _setting(DEFAULT_MODEL, "a timm model name (efficientnet_lite0 has bundled "
                          "ImageNet weights; others need --checkpoint) or hf:FOLDER",
                          kind=str, affects=("adapt",))
    data: str = _setting("digits", "digits | lfw | vtab:PATH | folder:PATH",
                         kind=str, affects=("adapt", "score", "retrain"), metavar="SPEC")
    method: str = _setting("convpass", "the PETL method that adapts the model", kind=str,
                           affects=("adapt",), choices=METHODS)
    alpha: float = _setting(ALPHA, "SLS threshold: alpha x the last layer's score", kind=float,
                            affects=("select",))
    repeats: int = _setting(1, "t-SNE runs per layer (1: the paper); the depth is taken on the "
                            "mean curve", kind=int, affects=("score",), metavar="S")
    tsne_backend: str = _setting("auto", "t-SNE backend (sklearn: the paper's exact settings)",
                                 kind=str, affects=("score",), choices=TSNE_BACKENDS)
    tsne_iter: int = _setting(MAX_ITER, "t-SNE iterations", kind=int, affects=("score",))
    perplexity: float = _setting(PERPLEXITY, "t-SNE perplexity (the authors': scikit-learn's "
                                 "default); the scored images must exceed it",
                                 kind=float, affects=("score",))
    criterion: str = _setting("sls", "the layer-importance criterion that chooses the depth "
                              "kept (sls: the paper's t-SNE + silhouette, always computed; the "
                              "others: sls_fast.CRITERIA, their rules in the README)", kind=str,
                              affects=("select",), choices=tuple(CRITERIA))
    criteria: str = _setting("", "other criteria scored beside it on the same features, "
                             "comma-separated (" + ", ".join(c for c in CRITERIA if c != "sls")
                             + ") or all; each curve and depth goes into layers.json and "
                             "scores.png (a sweep scores every criterion of its --criteria)",
                             kind=str, affects=("score",), metavar="NAMES", sweep=False)
    criterion_params: str = _setting("", "parameters of the criteria, NAME.PARAM=VALUE,... "
                                     "(e.g. knn.k=5,cka.threshold=0.8; defaults in "
                                     "sls_fast.CRITERIA)", kind=str, affects=("score",),
                                     metavar="SPEC")
    oracle: str = _setting("off", "also measure the accuracy of the model cut at every depth "
                           "and each criterion's regret, writing oracle.png and report.json's "
                           "oracle: probe (a linear probe of block K, train split -> val: one "
                           "more pass over val; --oracle alone) or full (adapters + head "
                           "retrained at every K for --prune-epochs, test accuracy: L "
                           "retrainings)", kind=str, affects=("oracle",), flag="--oracle",
                           choices=ORACLES, const="probe")
    strategy: str = _setting("CLR", "retraining of the pruned model: FT (constant small lr), "
                             "CLR (warm-up + cosine), TFS (from scratch)", kind=str,
                             affects=("retrain",), choices=STRATEGIES)
    epochs: int = _setting(10, "epochs to adapt the full model", kind=int, affects=("adapt",))
    prune_epochs: int = _setting(4, "epochs to retrain the pruned model", kind=int,
                                 affects=("retrain",))
    image_size: Optional[int] = _setting(None, "input size (None: 64 px for the bundled data "
                                         "sets, the model's size for files)", kind=int,
                                         affects=("adapt", "score", "measure"))
    batch_size: int = _setting(64, "training and extraction batch size", kind=int,
                               affects=("adapt", "retrain", "measure"))
    lr: float = _setting(1e-3, "peak learning rate of the adaptation", kind=float,
                         affects=("adapt",))
    score_points: Optional[int] = _setting(None, "score on the first N training images (None: "
                                           "all)", kind=int, affects=("score",), metavar="N")
    adapter_dim: int = _setting(DEFAULT_DIM, "adapter bottleneck width (LoRA: the rank)", kind=int,
                                affects=("adapt",))
    adapter_scale: Optional[float] = _setting(None, "adapter output scale (LoRA: peft's "
                                              "lora_alpha; None: 1.0, LoRA 16)", kind=float,
                                              affects=("adapt",))
    num_classes: Optional[int] = _setting(None, "head width (None: from the training labels)",
                                          kind=int, affects=("adapt",), sweep=False)
    checkpoint: Optional[str] = _setting(None, "base weights of the model (a sweep gives them "
                                         "per model: --checkpoint MODEL=FILE)", kind=str,
                                         affects=("adapt",), sweep=False, metavar="FILE")
    compile: bool = _setting(True, "torch.compile the models for the throughput timing (on the "
                             "command line --no-compile times them eager)", kind=bool,
                             affects=("measure",), flag="--no-compile")
    timing: str = _setting("default", "throughput convention: default (batch --batch-size, "
                           "compiled unless --no-compile), authors (batch 1, fp32, eager, 50 + "
                           "100 passes), timm (batch 256, AMP, channels-last, compiled)",
                           kind=str, affects=("measure",), choices=tuple(CONVENTIONS))
    throughput_iters: Optional[int] = _setting(None, "timed batches per model (None: the "
                                               "default of measure_throughput)", kind=int,
                                               affects=("measure",), flag="--iters")
    on_bad_image: str = _setting(ON_BAD_IMAGE[0], "an unreadable image file: stop with its "
                                 "name (fail), or leave it out with a warning (skip)", kind=str,
                                 affects=("adapt", "score", "retrain"), choices=ON_BAD_IMAGE)
    seed: int = _setting(0, "seeds the split, the adapters, training and t-SNE", kind=int,
                         affects=("adapt", "score", "retrain"))
    device: Optional[str] = _setting(None, "cpu | cuda | cuda:1 ... (None: CUDA when "
                                     "available)", kind=str, affects=("adapt", "measure"))

    @classmethod
    def quick(cls, **overrides: Any) -> "TaskSettings":
        """The reduced setting (32 px, 1 epoch each, 400 scored images, 300 t-SNE iterations,
        eager timing), with ``overrides`` on top."""
        return cls(**{**QUICK, **overrides})

    def __post_init__(self) -> None:
        """Every field checked (sls_fast.common.checks: a wrong type is a TypeError, a value
        out of range a ValueError); NumPy scalars become Python numbers."""
        if isinstance(self.oracle, bool):  # settings written when the oracle was on or off
            self.oracle = "probe" if self.oracle else "off"
        for f in setting_fields():
            if f.metadata["choices"]:
                check_choice(getattr(self, f.name), f.name, f.metadata["choices"])
        for name in ("model", "data"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TypeError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be True or False, got {self.compile!r}")
        self.alpha = cast(float, check_number(self.alpha, "alpha", low=0, low_open=True, high=1))
        self.perplexity = cast(float, check_number(self.perplexity, "perplexity", low=1))
        from sls_fast.method.criteria import parse_criteria, parse_criterion_params

        parse_criteria(self.criteria)  # names and values checked here; a parameter of a
        parse_criterion_params(self.criterion_params)  # criterion not named warns at scoring
        self.lr = cast(float, check_number(self.lr, "lr", low=0, low_open=True))
        self.adapter_scale = check_number(self.adapter_scale, "adapter_scale", low=0,
                                          low_open=True, allow_none=True)
        for name, low in (("repeats", 1), ("tsne_iter", 1), ("epochs", 1), ("prune_epochs", 1),
                          ("batch_size", 1), ("adapter_dim", 1), ("seed", 0)):
            setattr(self, name, check_number(getattr(self, name), name, integer=True, low=low))
        for name, low in (("score_points", 10), ("num_classes", 2), ("throughput_iters", 1)):
            setattr(self, name, check_number(getattr(self, name), name, integer=True, low=low,
                                             allow_none=True))
        self.image_size = cast(Optional[int], check_number(
            self.image_size, "image_size", integer=True, low=8, high=MAX_IMAGE_SIZE,
            allow_none=True))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TaskSettings":
        """The settings in ``d``; an unknown key is a ValueError naming it."""
        from sls_fast.common.utils import dataclass_from_dict

        return dataclass_from_dict(cls, d, "task setting")

    def scored_criteria(self) -> List[str]:
        """The criteria scored beside SLS's t-SNE: ``criteria`` and the deciding ``criterion``
        (in that order, without ``sls``)."""
        from sls_fast.method.criteria import parse_criteria

        return list(dict.fromkeys(parse_criteria(self.criteria)
                                  + [c for c in (self.criterion,) if c != "sls"]))

    def values(self, stage: str) -> Dict[str, Any]:
        """``{name: value}`` of the settings that change ``stage``'s result (a cache key's
        settings part)."""
        return {name: getattr(self, name) for name in affecting(stage)}


def setting_fields(cls: type = TaskSettings) -> List[dataclasses.Field]:
    """The fields of a settings dataclass (:class:`TaskSettings` or :class:`SweepOptions`)."""
    return list(dataclasses.fields(cls))


def affecting(stage: str) -> Tuple[str, ...]:
    """The names of the settings that change ``stage``'s result (one of :data:`STAGES`)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return tuple(f.name for f in setting_fields() if stage in f.metadata["affects"])


def default_of(name: str, cls: type = TaskSettings) -> Any:
    """The default value of the setting ``name``."""
    for f in setting_fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise ValueError(f"no setting named {name!r}")


def _option(default: Any, help: str, *, kind: type, flag: Optional[str] = None,
            metavar: Optional[str] = None) -> Any:
    return field(default=default, metadata=dict(help=help, kind=kind, flag=flag, choices=None,
                                                metavar=metavar, affects=(), sweep=True,
                                                const=None))


@dataclass
class SweepOptions:
    """Where and how a sweep's cells run (not part of any cell's settings): the arguments of
    :func:`sls_fast.harness.sweep.run_sweep` besides the spec, and ``out``."""

    out: str = _option("sls_sweep", "the sweep's folder (rerun with the same folder to resume)",
                       kind=str, metavar="DIR")
    address: Optional[str] = _option(None, "join a Ray cluster: auto | HOST:PORT (None: a local "
                                     "instance that stops with the sweep)", kind=str)
    num_cpus: Optional[int] = _option(None, "CPUs of the local instance (None: all)", kind=int)
    gpus_per_cell: Optional[float] = _option(None, "GPUs per cell (None: 1 when there are GPUs; "
                                             "fractions share a GPU)", kind=float)
    cpus_per_cell: Optional[float] = _option(None, "CPUs per cell (None: 1 with GPUs, else 2 "
                                             "or the largest node's CPUs if fewer); also its "
                                             "torch threads", kind=float)
    max_retries: int = _option(3, "retries of a cell whose worker process or node died",
                               kind=int)
    retry_failed: bool = _option(False, "rerun the cells recorded as failed", kind=bool)
    cache_dir: Optional[str] = _option(None, "the stage cache: a folder every node can reach "
                                       "(an NFS mount; None: OUT/cache on the driver's node, "
                                       "a node-local folder on the others)", kind=str,
                                       metavar="DIR")
