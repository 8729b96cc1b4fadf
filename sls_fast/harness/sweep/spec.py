"""What a sweep runs: :class:`SweepSpec` (the cross product of data x models x methods x alphas
x criteria with shared settings), its :class:`Cell` s (a key, a task name,
:class:`sls_fast.harness.settings.TaskSettings`),
VTAB-1k task expansion with the SLS authors' per-task settings, and TOML spec files.
:mod:`sls_fast.harness.sweep` runs the cells."""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import dataclasses
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, cast

from sls_fast.harness.settings import (AXES, QUICK, SweepOptions, TaskSettings,
                                      default_of, setting_fields)

__all__ = ["SweepSpec", "Cell", "vtab_task_facts", "read_spec_file", "adapt_group", "SHARED",
           "spec_keys"]

# The settings every cell of a sweep shares: each TaskSettings field a sweep may set, but the
# axes (one value per cell) and what is given per model (checkpoint) or per task (num_classes).
SHARED = tuple(f.name for f in setting_fields()
               if f.name not in AXES and f.metadata["sweep"])


@dataclass
class Cell:
    """One cell of a sweep: its key (unique, a folder name), its task's short name, its settings."""

    key: str
    task: str
    settings: TaskSettings


class SweepSpecBase:
    """The behaviour of :class:`SweepSpec`, whose fields are generated from TaskSettings (the
    annotations below are for readers and type checkers; the fields are SweepSpec's)."""

    models: List[str]
    data: List[str]
    methods: List[str]
    alphas: List[float]
    criteria: List[str]
    oracle: Optional[str]
    quick: bool
    checkpoints: Dict[str, str]

    def __post_init__(self) -> None:
        choices = {f.name: f.metadata["choices"] for f in setting_fields()}
        for setting, name in AXES.items():
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                value = [value]
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"sweep: {name} must be a non-empty list, got {value!r}")
            known = choices[setting]
            if known and list(value) == ["all"]:
                value = list(known)
            bad = [v for v in value if known and v not in known]
            if bad:
                raise ValueError(f"sweep: unknown {name} {bad}; choose from {list(known)} "
                                 "or all")
            setattr(self, name, list(value))
        unknown = sorted(set(self.checkpoints) - set(self.models))
        if unknown:
            raise ValueError(f"sweep: checkpoints given for models not in the sweep: {unknown}")

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpecBase":
        """The spec in ``d``; an unknown key is a ValueError naming it."""
        from sls_fast.common.utils import dataclass_from_dict

        return dataclass_from_dict(cls, d, "sweep setting")

    def cells(self) -> List[Cell]:
        """Every cell, in a fixed order (data, model, method, alpha, criterion). A shared
        setting given explicitly wins over a VTAB-1k task's own (its adapter scale). With more
        than one criterion, every cell scores them all and the oracle defaults to "probe"."""
        shared = {k: getattr(self, k) for k in SHARED if getattr(self, k) is not None}
        if len(set(self.criteria)) > 1 and self.oracle is None:  # to compare them: the oracle
            shared["oracle"] = "probe"
        # every cell scores every criterion of the sweep, so cells that differ only in the
        # criterion share the scores through the cache and each row can name the others' depths
        scored = ",".join(c for c in dict.fromkeys(self.criteria) if c != "sls")
        base = {**(QUICK if self.quick else {}), **shared}
        cells, seen = [], set()
        for data in _expand_data(self.data):
            task, facts = _task_of(data)
            for model, method, alpha, criterion in itertools.product(
                    self.models, self.methods, self.alphas, self.criteria):
                extra = _method_facts(facts, method)
                settings = TaskSettings(model=model, data=data, method=method,
                                        alpha=float(alpha), criterion=criterion,
                                        criteria=scored, checkpoint=self.checkpoints.get(model),
                                        **{**base, **extra, **shared})
                key = _cell_key(task, settings)
                if key not in seen:
                    seen.add(key)
                    cells.append(Cell(key, task, settings))
        return cells


def _axis_default(name: str) -> Callable[[], List[Any]]:
    return lambda: [default_of(name)]


def _spec_fields() -> list:
    axes = [(plural, List[Any], field(default_factory=_axis_default(name),
                                      metadata=dict(axis_of=name)))
            for name, plural in AXES.items()]
    shared = [(f.name, Optional[Any], field(default=None, metadata=f.metadata))
              for f in setting_fields() if f.name in SHARED]
    return axes + shared + [
        ("quick", bool, field(default=False, metadata=dict(help="the reduced setting of "
                                                           "'run --quick' for every cell"))),
        ("checkpoints", Dict[str, str], field(default_factory=dict, metadata=dict(
            help="base weights per model: {model name: file}")))]


SweepSpec: Type[SweepSpecBase] = make_dataclass(
    "SweepSpec", _spec_fields(), bases=(SweepSpecBase,), namespace=dict(
        __module__=__name__,
        __doc__="""The cross product to run: ``models x data x methods x alphas x criteria``,
    every other setting shared.

    Its fields are generated from :class:`sls_fast.harness.settings.TaskSettings`: the axes
    (:data:`sls_fast.harness.settings.AXES`) in the plural (lists; ``["all"]``: every choice),
    then every setting a sweep shares (:data:`SHARED`; None: the
    TaskSettings default, or with ``quick`` its reduced setting), ``quick`` and
    ``checkpoints`` (a model name -> its base weights file). ``data`` entries are data specs
    (``digits``, ``lfw``, ``vtab:PATH``, ``folder:PATH``); ``vtab:DIR/*`` expands to every
    VTAB-1k task folder in DIR, each with its class count and adapter scale from the SLS
    authors' per-task settings (:func:`vtab_task_facts`).
    """))


def spec_keys() -> Tuple[str, ...]:
    """Every key a TOML sweep spec may hold: SweepSpec's fields and SweepOptions' (``out``,
    ``address``, ...)."""
    return tuple(f.name for f in dataclasses.fields(cast(Any, SweepSpec))) + \
        tuple(f.name for f in dataclasses.fields(SweepOptions))


def read_spec_file(path: str) -> dict:
    """The settings of a TOML sweep file: keys as :class:`SweepSpec`'s and
    :class:`sls_fast.harness.settings.SweepOptions`' fields (:func:`spec_keys`); an unknown key
    is a ValueError naming it and the known ones."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ValueError("reading a --spec file needs Python 3.11+ or 'pip install tomli'") \
                from None
    try:
        with open(path, "rb") as f:
            given = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read the sweep spec {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(given) - set(spec_keys()))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(spec_keys())}")
    return given


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
    by = "" if settings.criterion == "sls" else f"-{settings.criterion}"
    key = f"{task}-{model}-{settings.method}-a{settings.alpha:g}{by}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def adapt_group(settings: TaskSettings) -> str:
    """Cells with the same group share their adaptation: the same values of every setting that
    affects the adaptation (they differ only in alpha or in the scoring and retraining ones)."""
    return json.dumps(settings.values("adapt"), sort_keys=True)
