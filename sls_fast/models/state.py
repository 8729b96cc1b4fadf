"""What sls_fast knows about a model it changed, in one explicit place.

A model that went through :func:`sls_fast.add_adapters` or :func:`sls_fast.truncate` carries one
attribute, ``model.sls_state``, an :class:`SLSState`: the base model's name and checksum, its
family and block count, the adapter configuration (:class:`AdapterConfig`), the kept depth, the
modules that truncation created and whether the head is new. Only :mod:`sls_fast.models.adapters`,
:mod:`sls_fast.models.prune`, :mod:`sls_fast.io.artifacts` and :mod:`sls_fast.models.train` write it, through the
helpers here. Both classes are plain module-level dataclasses, so adapted and truncated models
pickle, ``copy.deepcopy`` and ``torch.save`` like any module.

Also here: the model facts every stage needs (``model_name``, ``classifier_name``,
``base_checksum``).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["AdapterConfig", "SLSState", "get_state", "model_name",
           "classifier_name", "classifier_names", "base_checksum", "ADAPTER_KEY"]

ADAPTER_KEY = ".adapter"  # every adapter module's name starts with "adapter" (adapter, adapter_attn, ...)
LORA_KEY = ".lora_"  # peft's LoRA tensors (lora_A, lora_B, ...); their base is under ".base_layer"


@dataclass
class AdapterConfig:
    """How the adapters of a model were made (enough to rebuild them on a fresh base).

    For LoRA, ``dim`` is the rank r, ``scale`` is peft's ``lora_alpha`` (the update is scaled by
    alpha / r) and ``targets`` are the adapted linear layers relative to a block."""

    kind: str
    dim: int
    scale: float
    layers: List[int]
    dropout: float
    groups: int = 2
    merged: bool = False
    targets: Optional[List[str]] = None  # LoRA: linear layers inside a block ("attn.qkv", ...)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterConfig":
        return cls(kind=d["kind"], dim=int(d["dim"]), scale=float(d["scale"]),
                   layers=[int(i) for i in d["layers"]], dropout=float(d["dropout"]),
                   groups=int(d.get("groups", 2)), merged=bool(d.get("merged", False)),
                   targets=list(d["targets"]) if d.get("targets") else None)


@dataclass
class SLSState:
    """Everything sls_fast records on a model it adapted or truncated.

    Attributes:
        base_name: architecture name of the base model (timm's ``pretrained_cfg``).
        base_checksum: :func:`base_checksum` of the base model's frozen weights.
        family: name of the model family (:mod:`sls_fast.models.families`).
        num_blocks: L, the blocks of the base model.
        adapters: the adapter configuration, or None.
        depth: K after :func:`sls_fast.truncate` (None: not truncated).
        num_classes: classes of the head after truncation.
        new_modules: module paths that truncation created (trained and stored with the head).
        head_fresh: the head is new (``finetune`` then probe-initialises it).
    """

    base_name: str
    base_checksum: str
    family: str
    num_blocks: int
    adapters: Optional[AdapterConfig] = None
    depth: Optional[int] = None
    num_classes: Optional[int] = None
    new_modules: Tuple[str, ...] = field(default_factory=tuple)
    head_fresh: bool = False

    @property
    def pruned(self) -> bool:
        return self.depth is not None


def get_state(model: nn.Module) -> Optional[SLSState]:
    """The model's :class:`SLSState`, or None for a model sls_fast has not changed."""
    st = model.__dict__.get("sls_state")
    return st if isinstance(st, SLSState) else None


def model_name(model: nn.Module) -> str:
    """The architecture name timm recorded on the model (``pretrained_cfg['architecture']``)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def classifier_names(model: nn.Module) -> List[str]:
    """Module paths of every final linear classifier: ``model.get_classifier()`` (a tuple for
    DeiT's distilled models: the class and distillation heads), a generically cut model's
    ``sls_head.fc``, else the first of ``head`` / ``classifier`` / ``fc`` that is linear."""
    if isinstance(getattr(getattr(model, "sls_head", None), "fc", None), nn.Linear):
        return ["sls_head.fc"]
    get = getattr(model, "get_classifier", None)
    clf = get() if callable(get) else None
    if clf is None:
        return [n for n in ("head", "classifier", "fc")
                if isinstance(getattr(model, n, None), nn.Linear)][:1]
    wanted = list(clf) if isinstance(clf, (tuple, list)) else [clf]
    names = {id(m): n for n, m in model.named_modules() if n}
    return [names[id(m)] for m in wanted if id(m) in names]


def classifier_name(model: nn.Module) -> Optional[str]:
    """Module path of the final linear classifier (the first of :func:`classifier_names`),
    or None."""
    names = classifier_names(model)
    return names[0] if names else None


def _frozen_items(model: nn.Module, exclude_prefixes: Iterable[str]):
    ex = tuple(p + "." for p in exclude_prefixes if p)
    for k, v in sorted(model.state_dict().items()):
        if (k.endswith("num_batches_tracked") or ADAPTER_KEY in "." + k or LORA_KEY in k
                or k.startswith(ex)):
            continue
        yield k.replace(".base_layer.", "."), v


def base_checksum(model: nn.Module, exclude: Iterable[str] = ()) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the model's frozen weights.

    Excluded: adapters (LoRA too; a LoRA layer's base weight counts under its plain name), the classifier (``get_classifier()``), batch-norm ``num_batches_tracked``
    counters and the module paths in ``exclude``; so a base model, the same model after
    :func:`sls_fast.add_adapters` (batch norms frozen) and after a new head hash the same.

    Example:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> len(base_checksum(m))
        64
    """
    h = hashlib.sha256()
    for k, v in _frozen_items(model, list(exclude) + classifier_names(model)):
        t = v.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(v.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
