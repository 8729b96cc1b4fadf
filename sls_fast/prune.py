"""Truncation: keep blocks 1..K of a model, delete the rest, and give it a head of the right width.

Step 5 of SLS (DESIGN.md): run blocks 1..K, then the model's final norm (transformers) or global
pooling, then a linear head. Pruned blocks are deleted (the parameter count drops), never skipped,
and the result is an ordinary timm module whose ``forward`` works under ``torch.compile``.
"""
from __future__ import annotations

import copy
from typing import List, Optional

import torch
import torch.nn as nn

from .adapters import _set_trainable, block_shapes, _record_base
from .blocks import find_blocks, model_family

__all__ = ["truncate", "pruned_depth"]


def _stage_cut(counts: List[int], depth: int):
    """Flat depth K (1-based count) -> (stage s, number of blocks kept in stage s)."""
    acc = 0
    for s, n in enumerate(counts):
        if depth <= acc + n:
            return s, depth - acc
        acc += n
    raise AssertionError("depth beyond the model")  # checked by the caller


def _new_like_norm(old: nn.Module, width: int, ref: torch.Tensor) -> nn.Module:
    eps = getattr(old, "eps", 1e-5)
    try:
        new = type(old)(width, eps=eps)
    except TypeError:
        new = nn.LayerNorm(width, eps=eps)
    return new.to(device=ref.device, dtype=ref.dtype)


def pruned_depth(model: nn.Module) -> int:
    """Number of blocks the (possibly truncated) model runs."""
    return len(find_blocks(model))


def truncate(model: nn.Module, depth: int, num_classes: Optional[int] = None, *,
             inplace: bool = False) -> nn.Module:
    """Keep blocks 1..``depth`` of ``model``, delete the rest, and attach a head of the right width.

    Args:
        model: a timm ViT/DeiT, Swin, EfficientNet/MobileNet or ConvNeXt (adapted or not).
        depth: K, the number of blocks kept, 1..L, counted over all stages in forward order
            (:func:`sls_fast.blocks.find_blocks`).
        num_classes: classes of the head; default: the model's current ``num_classes``.
        inplace: modify ``model`` itself; by default a deep copy is truncated and ``model`` is kept.

    What is kept, per family:

    * ViT / DeiT: ``blocks[:K]`` (timm's ``prune_intermediate_layers``), the final norm and the head
      (the width never changes; a new head only if ``num_classes`` differs).
    * Swin: K counts blocks across stages; the cut falls inside stage s (its patch merging kept),
      later stages are deleted. When the width of stage s differs from the final width, the final
      norm and the head are **new** modules of stage s's width (fresh LayerNorm, fresh linear head);
      when the cut is inside the last stage, norm and head are kept.
    * EfficientNet / MobileNet / ConvNeXt: cut after block K (inside its stage), delete later
      blocks and stages, and - when K < L - the layers whose input width no longer matches
      (EfficientNet's ``conv_head`` + ``bn2``; ConvNeXt's head norm, replaced by a new
      ``NormMlpClassifierHead`` of the new width); then global pooling and a **new** linear head of
      the width of block K.

    The new modules are trainable and listed in ``model.sls_new_modules``; ``model.sls_pruned``
    records ``depth``, ``num_blocks`` (L) and ``num_classes``; ``model.sls_head_fresh`` is set when
    the head is new (:func:`sls_fast.finetune` then initialises it from a linear probe).
    If ``depth == L`` nothing is deleted.

    Example:
        >>> import timm, torch, sls_fast
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> p = sls_fast.truncate(m, 5, num_classes=10)
        >>> len(p.blocks), p(torch.randn(2, 3, 32, 32)).shape
        (5, torch.Size([2, 10]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"truncate needs an nn.Module, got {type(model).__name__}")
    family = model_family(model)
    blocks = find_blocks(model)
    L = len(blocks)
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if not 1 <= depth <= L:
        raise ValueError(f"depth must be in 1..{L} for this {family} model, got {depth}")
    if not inplace:
        model = copy.deepcopy(model)
        blocks = find_blocks(model)
    _record_base(model)
    if num_classes is None:
        num_classes = int(getattr(model, "num_classes", 0))
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (model has num_classes={num_classes}); pass it")
    ref = next(iter(model.parameters()))
    new: List[str] = list(getattr(model, "sls_new_modules", ()) or ())
    head_fresh = False
    cut = depth < L

    if family == "vit":
        if cut:
            model.prune_intermediate_layers([depth - 1], prune_norm=False, prune_head=False)
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
            head_fresh = True
    elif family == "swin":
        counts = [len(st.blocks) for st in model.layers]
        s, j = _stage_cut(counts, depth)
        if cut:
            width = block_shapes(model, blocks)[depth - 1]["out_ch"]
            model.layers[s].blocks = model.layers[s].blocks[:j]
            model.layers = model.layers[:s + 1]
            if hasattr(model, "_ref_window_sizes"):
                model._ref_window_sizes = model._ref_window_sizes[:s + 1]
            if hasattr(model, "feature_info"):
                model.feature_info = model.feature_info[:s + 1]
            if width != model.num_features:
                model.norm = _new_like_norm(model.norm, width, ref)
                model.num_features = model.head_hidden_size = width
                model.reset_classifier(num_classes)
                new.append("norm")
                head_fresh = True
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
            head_fresh = True
    elif family in ("efficientnet", "convnext"):
        if cut:
            width = block_shapes(model, blocks)[depth - 1]["out_ch"]
            s, j = blocks[depth - 1].stage, blocks[depth - 1].index + 1
            if family == "efficientnet":
                model.blocks[s] = model.blocks[s][:j]
                model.blocks = model.blocks[:s + 1]
                if hasattr(model, "stage_ends"):
                    model.stage_ends = [e for e in model.stage_ends if e <= s + 1]
                model.conv_head = nn.Identity()
                model.bn2 = nn.Identity()
                model.num_features = model.head_hidden_size = width
                model.reset_classifier(num_classes)
            elif family == "convnext":
                from timm.layers import NormMlpClassifierHead

                model.stages[s].blocks = model.stages[s].blocks[:j]
                model.stages = model.stages[:s + 1]
                if hasattr(model, "feature_info"):
                    model.feature_info = model.feature_info[:s + 1]
                if width != model.num_features:
                    old = model.head
                    model.norm_pre = nn.Identity()
                    norm_layer = type(getattr(old, "norm", nn.Identity()))
                    if norm_layer is nn.Identity:
                        norm_layer = nn.LayerNorm
                    model.head = NormMlpClassifierHead(
                        width, num_classes, pool_type=getattr(old.global_pool, "pool_type", "avg"),
                        drop_rate=getattr(getattr(old, "drop", None), "p", 0.0),
                        norm_layer=norm_layer).to(device=ref.device, dtype=ref.dtype)
                    model.num_features = model.head_hidden_size = width
                    new.append("head")
            head_fresh = True
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
            head_fresh = True
    else:
        raise ValueError(f"truncate does not support the {family} layout yet (supported: vit, swin, "
                         f"efficientnet, convnext)")
    model.num_classes = num_classes
    model.to(device=ref.device)
    if head_fresh:
        model.sls_head_fresh = True
    model.sls_new_modules = sorted(set(new))
    L0 = (getattr(model, "sls_pruned", None) or {}).get("num_blocks", L)
    model.sls_pruned = dict(depth=depth, num_blocks=L0, num_classes=num_classes, family=family)
    if getattr(model, "sls_adapters", None):
        kept = [i for i in model.sls_adapters["layers"] if i < depth]
        model.sls_adapters = dict(model.sls_adapters, layers=kept)
        _set_trainable(model)
    else:
        for n in model.sls_new_modules:
            for p in model.get_submodule(n).parameters():
                p.requires_grad_(True)
    return model
