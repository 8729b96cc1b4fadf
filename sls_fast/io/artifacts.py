"""Per-task artifacts: store only the pruning index plus the small trained parts (docs/design.md,
step 7).

An artifact is one safetensors file holding the adapters of the kept blocks, the classifier and
any module :func:`sls_fast.truncate` created (Swin's new final norm, ConvNeXt's new head), with
metadata (JSON under the ``sls_fast`` key): base model name, checksums of the base model's frozen
weights, depth K, adapter kind and configuration, number of classes, package version.
:func:`load_pruned` rebuilds the pruned model from a freshly built base model.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from sls_fast.common.schema import SCHEMA_VERSION
from sls_fast.common.utils import atomic_path
from sls_fast._version import __version__
from sls_fast.models.adapters import add_adapters
from sls_fast.models.families import family_of, find_blocks
from sls_fast.models.adapters import adopt_peft
from sls_fast.models.petl.lora import export_peft, is_peft_wrapper
from sls_fast.models.state import base_checksum, get_state, model_name

__all__ = ["save_pruned", "load_pruned", "storage_report", "read_pruned_metadata", "stored_prefixes"]

_META_KEY = "sls_fast"
FORMAT_VERSION = 1


def stored_prefixes(model: nn.Module) -> list:
    """Module paths whose tensors go into the artifact: what the model's family says trains
    (adapters, classifier, truncation's new modules; :meth:`sls_fast.models.families.Family.trainable`)."""
    return family_of(model).trainable(model)


def _stored_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    pre = tuple(p + "." for p in stored_prefixes(model))
    return {k: v for k, v in model.state_dict().items()
            if k.startswith(pre) and not k.endswith("num_batches_tracked")}


def _state_bytes(sd: Dict[str, torch.Tensor]) -> int:
    seen, total = set(), 0
    for v in sd.values():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), v.numel(), v.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += v.numel() * v.element_size()
    return total


def save_pruned(path: Union[str, os.PathLike], model: nn.Module, depth: int, *,
                format: str = "sls", **meta: Any) -> dict:
    """Write the per-task artifact of a truncated, adapted model to ``path`` (safetensors).

    Args:
        path: output file (``.safetensors``); with ``format="peft"`` a folder.
        format: ``"sls"`` (our artifact) or ``"peft"`` (LoRA models only): peft's own folder
            format, ``adapter_config.json`` + ``adapter_model.safetensors`` (the kept blocks'
            LoRA, the head and truncation's new modules as ``modules_to_save``; our metadata in
            the safetensors header), loaded by
            ``peft.PeftModel.from_pretrained(sls_fast.truncate(base, K, num_classes=C), path)``.
        model: the model returned by :func:`sls_fast.truncate` (adapters from
            :func:`sls_fast.add_adapters` optional, RepAdapter not merged).
        depth: K; must equal the number of blocks the model runs.
        **meta: extra JSON-serialisable metadata; ``base_model="name"`` overrides the recorded
            architecture name.

    Returns the metadata dict written (also in the file).

    Example:
        >>> import os, tempfile, timm, torch, sls_fast
        >>> def base():  # the same frozen weights each time (a real base: a checkpoint)
        ...     torch.manual_seed(0)
        ...     return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> p = sls_fast.truncate(sls_fast.add_adapters(base(), "convpass", num_classes=10), 5)
        >>> path = os.path.join(tempfile.mkdtemp(), "task.safetensors")
        >>> meta = sls_fast.save_pruned(path, p, 5, dataset="digits")
        >>> q = sls_fast.load_pruned(path, base())
        >>> len(q.blocks), meta["depth"], meta["num_classes"]
        (5, 5, 10)
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"save_pruned needs an nn.Module, got {type(model).__name__}")
    if format not in ("sls", "peft"):
        raise ValueError(f"format must be 'sls' or 'peft', got {format!r}")
    if is_peft_wrapper(model):  # the user's wrapper stays as it is
        model = adopt_peft(copy.deepcopy(model))
    n = len(find_blocks(model))
    if isinstance(depth, bool) or not isinstance(depth, int) or depth != n:
        raise ValueError(f"depth={depth!r} but the model runs {n} blocks; call "
                         f"sls_fast.truncate(model, {depth}) first and save its result")
    st = get_state(model)
    cfg = st.adapters if st is not None else None
    if cfg is not None and cfg.merged:
        raise ValueError("the model's RepAdapters were merged into qkv/fc1; save the unmerged model "
                         "(merge after load_pruned)")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in _stored_state(model).items()}
    prefixes = stored_prefixes(model)
    info = dict(
        schema_version=SCHEMA_VERSION,
        format=FORMAT_VERSION,
        package_version=__version__,
        base_model=str(meta.pop("base_model", None) or (st.base_name if st else model_name(model))),
        base_checksum=st.base_checksum if st else None,
        kept_checksum=base_checksum(model, exclude=prefixes),
        family=family_of(model).name,
        depth=int(depth),
        num_blocks=int(st.num_blocks if st else n),
        num_classes=int(st.num_classes if st and st.num_classes else getattr(model, "num_classes", 0)),
        adapters=({k: v for k, v in cfg.to_dict().items() if k != "merged"} if cfg else None),
        new_modules=list(st.new_modules if st else ()),
        stored=prefixes,
        meta=meta,
    )
    try:
        text = json.dumps(info)
    except TypeError as exc:
        raise TypeError(f"save_pruned: metadata must be JSON-serialisable ({exc})") from None
    if format == "peft":
        if cfg is None or cfg.kind != "lora":
            raise ValueError("format='peft' writes peft's LoRA format; this model has "
                             f"{cfg.kind + ' adapters' if cfg else 'no adapters'}")
        info["files"] = export_peft(os.fspath(path), model, prefixes, info)
        return info
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={_META_KEY: text})
    return info


def read_pruned_metadata(path: Union[str, os.PathLike]) -> dict:
    """The metadata dict of an artifact written by :func:`save_pruned`."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"artifact {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            md = f.metadata() or {}
    except Exception as exc:  # SafetensorError, OSError: a truncated or foreign file
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                         f"{exc}") from None
    if _META_KEY not in md:
        raise ValueError(f"{path} is not an sls_fast artifact (no '{_META_KEY}' metadata)")
    try:
        return json.loads(md[_META_KEY])
    except ValueError:
        raise ValueError(f"{path}: the sls_fast metadata is not valid JSON") from None


def load_pruned(path: Union[str, os.PathLike], base_model: nn.Module, *, strict_name: bool = True
                ) -> nn.Module:
    """Rebuild the pruned model of an artifact from a freshly built base model.

    ``base_model`` (same architecture and frozen weights as the model the artifact came from; its
    classifier may differ) is modified in place: adapters are added, it is truncated to K blocks,
    then the stored tensors are loaded. Outputs equal the saved model's (bit-identical on the same
    device and dtype).

    Raises ValueError when the base model is of another architecture (name) or carries other
    weights (checksum of the frozen weights), or when the stored tensors do not fit.

    Example:
        >>> q = load_pruned("task.safetensors", timm.create_model("efficientnet_lite0"))  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    from sls_fast.models.prune import truncate

    if not isinstance(base_model, nn.Module):
        raise TypeError(f"load_pruned needs the base model (nn.Module), got {type(base_model).__name__}")
    info = read_pruned_metadata(path)
    if info.get("format", 0) > FORMAT_VERSION:
        raise ValueError(f"artifact format {info['format']} is newer than this sls_fast ({__version__})")
    name = model_name(base_model)
    if strict_name and name != info["base_model"]:
        raise ValueError(f"artifact was made from base model {info['base_model']!r}, got {name!r}")
    if get_state(base_model) is not None:
        raise ValueError("load_pruned needs a fresh base model (this one already has adapters or "
                         "was truncated)")
    try:
        n_blocks = len(find_blocks(base_model))
    except ValueError as exc:
        raise ValueError(f"base model does not fit the artifact: {exc}") from None
    if n_blocks != info["num_blocks"]:
        raise ValueError(f"artifact was made from a model with {info['num_blocks']} blocks; the base "
                         f"model has {n_blocks}")
    if info.get("base_checksum"):
        got = base_checksum(base_model)
        if got != info["base_checksum"]:
            raise ValueError(f"the base model's frozen weights differ from those the artifact was "
                             f"made with (checksum {got[:12]}... != {info['base_checksum'][:12]}...)")
    ad = info.get("adapters")
    model = base_model
    if ad:
        model = add_adapters(model, ad["kind"], dim=ad["dim"], scale=ad["scale"], layers=ad["layers"],
                             dropout=ad["dropout"], groups=ad.get("groups", 2),
                             targets=ad.get("targets"))
    model = truncate(model, info["depth"], num_classes=info["num_classes"], inplace=True)
    got = base_checksum(model, exclude=info["stored"])
    if got != info["kept_checksum"]:
        raise ValueError("the frozen weights of the rebuilt pruned model differ from the saved one's "
                         "(other base weights, or the backbone was changed after add_adapters)")
    try:
        tensors = load_file(os.fspath(path))
    except Exception as exc:  # SafetensorError: header fine, data cut short
        raise ValueError(f"{os.fspath(path)}: cannot read the stored tensors (truncated or "
                         f"corrupt?): {exc}") from None
    pre = tuple(p + "." for p in info["stored"])
    want = {k for k in model.state_dict() if k.startswith(pre) and not k.endswith("num_batches_tracked")}
    if set(tensors) != want:
        raise ValueError(f"stored tensors do not fit the rebuilt model: missing "
                         f"{sorted(want - set(tensors))[:5]}, unexpected {sorted(set(tensors) - want)[:5]}")
    sd = model.state_dict()
    for k, v in tensors.items():
        if sd[k].shape != v.shape:
            raise ValueError(f"{k}: stored shape {tuple(v.shape)} != model shape {tuple(sd[k].shape)}")
    model.load_state_dict(tensors, strict=False)
    st = get_state(model)
    assert st is not None  # truncate() recorded it
    st.head_fresh = False
    return model


def storage_report(path: Union[str, os.PathLike], model: nn.Module,
                   full_model: Optional[nn.Module] = None) -> dict:
    """Bytes of the artifact vs. the whole pruned model (what a structural pruner such as
    Torch-Pruning stores per task), and optionally vs. the full (unpruned) model.

    Returns ``artifact_bytes`` (file size), ``artifact_tensor_bytes``, ``pruned_model_bytes``
    (all tensors of ``model``'s state dict), ``ratio_pruned`` = artifact / pruned model, and with
    ``full_model``: ``full_model_bytes`` and ``ratio_full``.

    Example:
        >>> r = storage_report("task.safetensors", pruned)  # doctest: +SKIP
        >>> r["ratio_pruned"] < 0.05  # doctest: +SKIP
    """
    from safetensors import safe_open

    size = os.path.getsize(os.fspath(path))
    with safe_open(os.fspath(path), framework="pt") as f:
        tbytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    pruned = _state_bytes(model.state_dict())
    out = dict(artifact_bytes=size, artifact_tensor_bytes=tbytes, pruned_model_bytes=pruned,
               ratio_pruned=size / pruned if pruned else float("nan"))
    if full_model is not None:
        full = _state_bytes(full_model.state_dict())
        out.update(full_model_bytes=full, ratio_full=size / full if full else float("nan"))
    return out
