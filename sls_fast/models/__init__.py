"""The model layer: what sls_fast knows and does to a model, below the method.

``families`` (one object per architecture family: blocks, pooling, adapter slots, truncation),
``state`` (the one record sls_fast keeps on a model), ``petl`` (Convpass, RepAdapter, LoRA through
peft), ``adapters`` (add / merge / what trains), ``prune`` (truncation), ``train`` (fine-tuning
and evaluation), ``throughput`` (images/s) and ``zoo`` (loading models offline).

``sls_fast.models.load(...)`` and the other names of :mod:`sls_fast.models.zoo` are reachable
here, loaded on first use.
"""
import importlib
from typing import Any

_ZOO = ("DEFAULT_MODEL", "RandomWeightsWarning", "load", "load_checkpoint", "read_state_dict",
        "efficientnet_lite0_weights_path", "efficientnet_lite0_state_dict")


def __getattr__(name: str) -> Any:
    if name in _ZOO:
        value = getattr(importlib.import_module("sls_fast.models.zoo"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sls_fast.models' has no attribute {name!r}")
