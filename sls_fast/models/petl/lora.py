"""LoRA through Hugging Face ``peft``: insert, merge, export (adopting a user's peft model is
:func:`sls_fast.models.adapters.adopt_peft`, above the families it needs).

sls_fast never re-implements LoRA: the low-rank layers are peft's own (``peft.LoraConfig`` +
``peft.inject_adapter_in_model``), injected into the model itself, so a timm / transformers model
stays the same class with the same block layout and every pipeline stage works on it unchanged.
Each adapted ``nn.Linear`` becomes a ``peft.tuners.lora.Linear`` holding the frozen
``base_layer`` and the trainable ``lora_A`` / ``lora_B``; state-dict keys of the base weights gain
``.base_layer`` (:func:`sls_fast.models.state.base_checksum` ignores that, so the base checksum is the same).

* :func:`insert_lora` -- LoRA of rank ``r`` and scale ``alpha / r`` on named linear layers;
* :func:`lora_parts` -- ``{path: ModuleDict}`` of the trainable LoRA parts (``...qkv.lora_A``);
* :func:`merge_lora` -- peft's own exact merge, then the LoRA layers are replaced by their base;
* :func:`export_peft` -- peft's folder format of a (truncated) model, written by ``save_pretrained``.

``peft`` is an optional dependency (``pip install "sls_fast[peft]"``): nothing here imports it
until LoRA is asked for, and a model cannot hold LoRA layers before peft was imported.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Dict, List, Sequence

import torch.nn as nn

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer

__all__ = ["insert_lora", "reset_lora", "lora_layers", "lora_parts", "is_peft_wrapper", "merge_lora",
           "export_peft", "ADAPTER_NAME"]

ADAPTER_NAME = "default"  # peft's default adapter name; artifacts store keys under it


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs Hugging Face peft: pip install \"sls_fast[peft]\" "
                          "(or pip install peft)") from None
    return peft


def lora_layers(model: nn.Module) -> Dict[str, LoraLayer]:
    """{module path: peft LoRA layer} in ``model`` (empty when peft was never imported)."""
    if "peft" not in sys.modules:
        return {}
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_parts(model: nn.Module) -> Dict[str, nn.Module]:
    """{path: module} of the trainable LoRA parts (``lora_A``, ``lora_B`` and, for DoRA/embedding
    variants, the other entries of peft's ``adapter_layer_names`` that hold parameters)."""
    out = {}
    for name, layer in lora_layers(model).items():
        for part in layer.adapter_layer_names:
            sub = getattr(layer, part, None)
            if isinstance(sub, nn.Module) and any(True for _ in sub.parameters()):
                out[f"{name}.{part}"] = sub
    return out


def reset_lora(model: nn.Module) -> int:
    """Re-initialise every LoRA adapter of ``model`` as peft creates it (A as an ``nn.Linear``,
    B zero: the layer computes its base layer again); returns the number of layers reset."""
    layers = lora_layers(model)
    for layer in layers.values():
        for adapter in list(layer.lora_A.keys()):
            layer.reset_lora_parameters(adapter, True)
    return len(layers)


def insert_lora(model: nn.Module, names: Sequence[str], *, rank: int, alpha: float,
                dropout: float) -> None:
    """peft LoRA (rank ``rank``, ``lora_alpha=alpha``) on the linear layers ``names`` (full
    module paths), in place. ``lora_B`` starts at zero: outputs are unchanged."""
    peft = _peft()
    for n in names:
        try:
            m = model.get_submodule(n)
        except AttributeError:
            raise ValueError(f"LoRA target {n!r} does not exist in {type(model).__name__}") from None
        if not isinstance(m, nn.Linear):
            raise TypeError(f"LoRA target {n!r} is {type(m).__name__}; sls_fast puts LoRA on "
                            "nn.Linear layers")
    cfg = peft.LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                          target_modules=list(names))
    peft.inject_adapter_in_model(cfg, model, adapter_name=ADAPTER_NAME)
    model.__dict__.pop("peft_config", None)  # the configuration lives in model.sls_state


def is_peft_wrapper(model) -> bool:
    """True for a ``peft.PeftModel`` (``get_peft_model`` result) or a bare peft tuner model."""
    if "peft" not in sys.modules:
        return False
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    return isinstance(model, (PeftModel, BaseTuner))


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer into its base weight with peft's ``merge(safe_merge=True)`` and put
    the base layer back in its place (in place): no LoRA parameter is left."""
    for name, layer in lora_layers(model).items():
        layer.merge(safe_merge=True)
        _replace(model, name, layer.get_base_layer())


def export_peft(folder: str, model: nn.Module, stored: Sequence[str], metadata: dict) -> List[str]:
    """Write ``model``'s LoRA in peft's folder format (``adapter_config.json`` +
    ``adapter_model.safetensors``) through peft's own ``save_pretrained``.

    The non-LoRA parts that an artifact stores (``stored``: the head, truncation's new modules) go
    in as ``modules_to_save``. A copy of the model is made with its LoRA layers back to the base
    layers, peft wraps it with the same configuration (only the kept blocks' layers as targets)
    and receives the trained tensors. ``metadata`` (the sls_fast artifact metadata) is added to
    the safetensors header, so the folder also records K. Returns the files written.
    """
    peft = _peft()
    from safetensors.torch import load_file, save_file

    from sls_fast.models.state import get_state

    state = get_state(model)
    assert state is not None and state.adapters is not None  # LoRA was added by sls_fast or adopted
    cfg = state.adapters
    layers = lora_layers(model)
    trained = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    plain = copy.deepcopy(model)
    plain.__dict__.pop("sls_state", None)
    for name, layer in lora_layers(plain).items():
        _replace(plain, name, layer.get_base_layer())
    parts = set(lora_parts(model))
    save = [p for p in stored if p not in parts]
    pcfg = peft.LoraConfig(r=cfg.dim, lora_alpha=cfg.scale, lora_dropout=cfg.dropout,
                           target_modules=sorted(layers), modules_to_save=save or None)
    pm = peft.get_peft_model(plain, pcfg, adapter_name=ADAPTER_NAME)
    inner = pm.get_base_model()
    missing = set(trained) - set(inner.state_dict())
    if missing:
        raise RuntimeError(f"peft export: LoRA tensors without a place: {sorted(missing)[:3]}")
    inner.load_state_dict(trained, strict=False)
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".peft-", dir=folder)
    try:
        pm.save_pretrained(tmp, safe_serialization=True)
        st_path = os.path.join(tmp, "adapter_model.safetensors")
        tensors = load_file(st_path)
        save_file(tensors, st_path, metadata={"format": "pt", "sls_fast": json.dumps(metadata)})
        written = []
        for f in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, f), os.path.join(folder, f))
            written.append(os.path.join(folder, f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
