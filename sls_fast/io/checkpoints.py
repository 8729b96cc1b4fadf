"""Adapted models from files: fresh adapters, our artifacts, full state dicts, and the authors'
adapter checkpoints.

:func:`load_adapted` builds a model the way ``sls-fast score/prune/bench --adapter KIND`` need it:
the base model (bundled or ``base_checkpoint`` weights), adapters of ``kind`` added, then the
trained weights of ``checkpoint`` loaded. ``checkpoint`` may be

* an sls_fast artifact (``.safetensors`` from :func:`sls_fast.save_pruned`): rebuilt with
  :func:`sls_fast.load_pruned` (which refuses an artifact made from another base model);
* a full state dict of the adapted model (every key, checked strictly);
* only the adapter and head tensors, in our key layout or in the layout of the authors' code
  (RuiZiHan/SLS saves ``{name: tensor}`` for every parameter whose name holds ``adapter`` or
  ``head``, with ``torch.save``); the family maps their names onto ours
  (:attr:`sls_fast.models.families.Family.reference_keys`).

Files are read with ``torch.load(weights_only=True)`` or safetensors, never an unrestricted
unpickle.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
import torch.nn as nn

from sls_fast.models.adapters import DEFAULT_DIM, add_adapters
from sls_fast.models.families import family_of
from sls_fast.models.zoo import _mismatch_report, load, read_state_dict
from sls_fast.models.state import classifier_name, get_state

__all__ = ["load_adapted", "load_adapter_checkpoint", "size_kwargs", "is_artifact"]

_FIXED_SIZE_PREFIXES = ("vit", "deit", "eva", "swin", "beit")


def size_kwargs(model_name: str, image_size) -> dict:
    """Patch-token models are built for one input size: ``{"img_size": S}`` for them when an
    image size is given (convolutional models take any size and need nothing)."""
    if image_size and model_name.split("_")[0].startswith(_FIXED_SIZE_PREFIXES):
        return {"img_size": int(image_size)}
    return {}


def is_artifact(path) -> bool:
    """True when ``path`` is a safetensors file carrying sls_fast artifact metadata."""
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        return False
    from sls_fast.io.artifacts import read_pruned_metadata

    try:
        read_pruned_metadata(path)
    except ValueError as exc:
        if "not an sls_fast artifact" in str(exc):
            return False
        raise
    return True


def _trained_keys(model: nn.Module) -> set:
    pre = tuple(p + "." for p in family_of(model).trainable(model))
    return {k for k in model.state_dict() if k.startswith(pre) and not k.endswith("num_batches_tracked")}


def _map_reference(model: nn.Module, kind: str, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    fam = family_of(model)
    rules = fam.reference_keys.get(kind)
    if not rules:
        return sd
    out = {}
    for k, v in sd.items():
        for theirs, ours in rules:
            k = k.replace(theirs, ours)
        out[k] = v
    return out


def load_adapter_checkpoint(model: nn.Module, path, *, state_dict=None) -> str:
    """Load trained adapter (+ head) weights from ``path`` into ``model`` (which already has its
    adapters, :func:`sls_fast.add_adapters`). Returns the layout found: ``"full"`` (a whole
    state dict) or ``"adapters"`` (only adapter and head tensors, ours or the authors').

    Raises ValueError naming the file when keys or shapes do not fit.
    """
    path = os.fspath(path)
    st = get_state(model)
    if st is None or st.adapters is None:
        raise ValueError("load_adapter_checkpoint: add the adapters first (add_adapters)")
    sd = state_dict if state_dict is not None else read_state_dict(path)
    sd = _map_reference(model, st.adapters.kind, dict(sd))
    own = model.state_dict()
    trained = _trained_keys(model)
    backbone = [k for k in sd if k not in trained]
    if backbone and any(k in own for k in backbone):  # a full state dict of the adapted model
        report = _mismatch_report(model, sd)
        if report is not None:
            raise ValueError(f"checkpoint {path!r} does not match the adapted {st.base_name}: {report}")
        model.load_state_dict(sd, strict=False)
        return "full"
    missing = sorted(trained - set(sd))
    unexpected = sorted(set(sd) - trained)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path!r} does not fit {st.base_name} with {st.adapters.kind} adapters: "
            f"{len(missing)} missing (first: {missing[:3]}), {len(unexpected)} unexpected "
            f"(first: {unexpected[:3]}); is it for another architecture or adapter kind?")
    shapes = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
              if tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise ValueError(f"checkpoint {path!r}: {len(shapes)} tensor(s) of another shape (first: "
                         f"{shapes[:3]}); check --adapter-dim and the model")
    model.load_state_dict(sd, strict=False)
    return "adapters"


def _head_classes(model: nn.Module, sd) -> Optional[int]:
    clf = classifier_name(model)
    w = sd.get(f"{clf}.weight") if clf else None
    return int(w.shape[0]) if w is not None and w.ndim >= 1 else None


def _load_peft_folder(base: nn.Module, path: str) -> nn.Module:
    """A peft LoRA folder (``save_pretrained``) on ``base``, adopted (:func:`sls_fast.models.petl.lora.adopt_peft`)."""
    from sls_fast.models.adapters import adopt_peft
    from sls_fast.models.petl.lora import _peft

    st_path = os.path.join(path, "adapter_model.safetensors")
    clf = classifier_name(base)
    if clf and os.path.isfile(st_path):  # the folder's head (modules_to_save) sets the width
        from safetensors import safe_open

        with safe_open(st_path, framework="pt") as f:
            heads = [k for k in f.keys() if f".model.{clf}." in k and k.endswith(".weight")]
            width = f.get_slice(heads[0]).get_shape()[0] if heads else None
        fam = family_of(base)
        if width and width != fam.num_classes(base):
            fam.reset_head(base, int(width))
    try:
        wrapped = _peft().PeftModel.from_pretrained(base, path)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: peft cannot load this adapter onto the model: {exc}") from None
    return adopt_peft(wrapped).eval()


def load_adapted(name: str, adapter: str, *, checkpoint=None, base_checkpoint=None,
                 image_size=None, dim: int = DEFAULT_DIM, scale: Optional[float] = None,
                 num_classes: Optional[int] = None) -> nn.Module:
    """A model named ``name`` with ``adapter`` adapters, trained weights from ``checkpoint``.

    Args:
        name: timm architecture name.
        adapter: adapter kind ("convpass", "repadapter", "lora").
        checkpoint: the adapted weights (artifact, full state dict, or adapter + head tensors in
            our or the authors' layout; for LoRA also a peft adapter folder); None: fresh
            adapters (identity at start).
        base_checkpoint: the frozen backbone's weights (default: the bundled weights of the
            default model, random weights with a warning otherwise).
        image_size: input size for fixed-size models (ViT, Swin).
        dim, scale: adapter bottleneck width and output scale (the authors' configs set scale
            per task).
        num_classes: head width for fresh adapters (a checkpoint's own head wins).

    Example:
        >>> m = load_adapted("vit_base_patch16_224", "convpass", checkpoint="eurosat.pt",
        ...                  base_checkpoint="ViT-B_16.npz", scale=10.0)   # doctest: +SKIP
    """
    kw = size_kwargs(name, image_size)
    base = load(name, checkpoint=base_checkpoint, **kw)
    if checkpoint is None:
        return add_adapters(base, adapter, dim=dim, scale=scale, num_classes=num_classes)
    path = os.fspath(checkpoint)
    if adapter == "lora" and os.path.isfile(os.path.join(path, "adapter_config.json")):
        return _load_peft_folder(base, path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    if is_artifact(path):
        from sls_fast.io.artifacts import load_pruned, read_pruned_metadata

        kind = (read_pruned_metadata(path).get("adapters") or {}).get("kind")
        if kind != adapter:
            raise ValueError(f"{path} holds {kind or 'no'} adapters, not {adapter}; pass "
                             f"--adapter {kind}" if kind else f"{path} holds no adapters")
        return load_pruned(path, base)
    sd = read_state_dict(path)
    n = _head_classes(base, sd)
    add_adapters(base, adapter, dim=dim, scale=scale, num_classes=n or num_classes)
    load_adapter_checkpoint(base, path, state_dict=sd)
    return base
