"""What a sweep runs: :class:`SweepSpec` (the cross product of data x models x methods x alphas
with shared settings), its :class:`Cell` s (a key, a task name, :class:`sls_fast.harness.pipeline.TaskSettings`),
VTAB-1k task expansion with the SLS authors' per-task settings, and TOML spec files.
:mod:`sls_fast.harness.sweep` runs the cells."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from sls_fast.models.zoo import DEFAULT_MODEL
from sls_fast.harness.pipeline import METHODS, QUICK, TaskSettings

__all__ = ["SweepSpec", "Cell", "vtab_task_facts", "read_spec_file", "adapt_group"]


_SPEC_PASSED = ("repeats", "tsne_backend", "strategy", "epochs", "prune_epochs", "image_size",
                "batch_size", "tsne_iter", "score_points", "throughput_iters", "compile", "seed",
                "device")


@dataclass
class Cell:
    """One cell of a sweep: its key (unique, a folder name), its task's short name, its settings."""

    key: str
    task: str
    settings: TaskSettings


@dataclass
class SweepSpec:
    """The cross product to run: ``models x data x methods x alphas``, every other setting shared.

    ``data`` entries are data specs (``digits``, ``lfw``, ``vtab:PATH``, ``folder:PATH``);
    ``vtab:DIR/*`` expands to every VTAB-1k task folder in DIR, each with its class count and
    adapter scale from the SLS authors' per-task settings (:func:`vtab_task_facts`). Settings
    left None take :class:`sls_fast.harness.pipeline.TaskSettings`' defaults, or with ``quick`` its
    reduced setting. ``checkpoints`` maps a model name to its base weights file.
    """

    models: List[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    data: List[str] = field(default_factory=lambda: ["digits"])
    methods: List[str] = field(default_factory=lambda: ["convpass"])
    alphas: List[float] = field(default_factory=lambda: [0.3])
    repeats: Optional[int] = None
    tsne_backend: Optional[str] = None
    strategy: Optional[str] = None
    epochs: Optional[int] = None
    prune_epochs: Optional[int] = None
    image_size: Optional[int] = None
    batch_size: Optional[int] = None
    tsne_iter: Optional[int] = None
    score_points: Optional[int] = None
    throughput_iters: Optional[int] = None
    compile: Optional[bool] = None
    seed: Optional[int] = None
    device: Optional[str] = None
    quick: bool = False
    checkpoints: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("models", "data", "methods", "alphas"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                value = [value]
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"sweep: {name} must be a non-empty list, got {value!r}")
            setattr(self, name, list(value))
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"sweep: unknown method(s) {bad}; choose from {list(METHODS)}")
        unknown = sorted(set(self.checkpoints) - set(self.models))
        if unknown:
            raise ValueError(f"sweep: checkpoints given for models not in the sweep: {unknown}")

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        """The spec in ``d``; an unknown key is a ValueError naming it."""
        from sls_fast.common.utils import dataclass_from_dict

        return dataclass_from_dict(cls, d, "sweep setting")

    def cells(self) -> List[Cell]:
        """Every cell, in a fixed order (data, model, method, alpha)."""
        shared = {k: getattr(self, k) for k in _SPEC_PASSED if getattr(self, k) is not None}
        base = {**(QUICK if self.quick else {}), **shared}
        cells, seen = [], set()
        for data in _expand_data(self.data):
            task, facts = _task_of(data)
            for model in self.models:
                for method in self.methods:
                    for alpha in self.alphas:
                        extra = _method_facts(facts, method)
                        settings = TaskSettings(model=model, data=data, method=method,
                                                alpha=float(alpha),
                                                checkpoint=self.checkpoints.get(model),
                                                **{**base, **extra})
                        key = _cell_key(task, settings)
                        if key not in seen:
                            seen.add(key)
                            cells.append(Cell(key, task, settings))
        return cells


def read_spec_file(path: str) -> dict:
    """The settings of a TOML sweep file (keys as :class:`SweepSpec`'s fields, plus ``out``,
    ``address``, ``gpus_per_cell``, ``cpus_per_cell``, ``retry_failed``)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("reading a --spec file needs Python 3.11+ or 'pip install tomli'") \
                from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read the sweep spec {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None


# --------------------------------------------------------------------------- tasks
def vtab_task_facts() -> Dict[str, Dict[str, dict]]:
    """The SLS authors' per-task settings for VTAB-1k: ``{task: {method: {"num_classes",
    "adapter_scale", "xavier_init"}}}`` for convpass and repadapter (package data
    ``vtab1k_tasks.csv``, from their ``configs/<method>/<task>.yaml``)."""
    path = os.path.join(os.path.dirname(__file__), "vtab1k_tasks.csv")
    out: Dict[str, Dict[str, dict]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["task"], {})[row["method"]] = dict(
                num_classes=int(row["class_num"]), adapter_scale=float(row["scale"]),
                xavier_init=row["xavier_init"] == "True")
    return out


def _expand_data(specs: List[str]) -> List[str]:
    out = []
    for spec in specs:
        kind, _, path = spec.partition(":")
        if kind.lower() == "vtab" and path.rstrip("/").endswith("*"):
            root = path.rstrip("/")[:-1]
            if not os.path.isdir(root):
                raise ValueError(f"sweep: {spec}: {root!r} is not a folder")
            tasks = sorted(d for d in os.listdir(root)
                           if os.path.isfile(os.path.join(root, d, "train800.txt")))
            if not tasks:
                raise ValueError(f"sweep: {spec}: no VTAB-1k task folders (with train800.txt) "
                                 f"in {root!r}")
            out += [f"vtab:{os.path.join(root, t)}" for t in tasks]
        else:
            out.append(spec)
    return out


def _task_of(data: str):
    """(short task name, the authors' per-task facts or None) of a data spec."""
    kind, _, path = data.partition(":")
    name = os.path.basename(os.path.normpath(path)) if path else kind
    facts = vtab_task_facts().get(name) if kind.lower() == "vtab" else None
    return name, facts


def _method_facts(facts, method: str) -> dict:
    if not facts:
        return {}
    if method in facts:
        f = facts[method]
        return dict(num_classes=f["num_classes"], adapter_scale=f["adapter_scale"])
    return dict(num_classes=next(iter(facts.values()))["num_classes"])  # lora: classes only


def _cell_key(task: str, settings: TaskSettings) -> str:
    d = settings.to_dict()
    digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    model = os.path.basename(os.path.normpath(settings.model.partition("hf:")[2])) \
        if settings.model.startswith("hf:") else settings.model
    key = f"{task}-{model}-{settings.method}-a{settings.alpha:g}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


_NOT_IN_ADAPTATION = ("alpha", "repeats", "tsne_backend", "tsne_iter", "score_points",
                      "strategy", "prune_epochs", "throughput_iters", "compile")


def adapt_group(settings: TaskSettings) -> str:
    """Cells with the same group share their adaptation (they differ only in alpha or in the
    scoring and retraining settings)."""
    d = {k: v for k, v in settings.to_dict().items() if k not in _NOT_IN_ADAPTATION}
    return json.dumps(d, sort_keys=True)
