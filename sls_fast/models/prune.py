"""Truncation: keep blocks 1..K of a model, delete the rest, and give it a head of the right width.

Step 5 of SLS (docs/design.md): run blocks 1..K, then the model's final norm (transformers) or
global pooling, then a linear head. Pruned blocks are deleted (the parameter count drops), never
skipped, and the result is an ordinary timm module whose ``forward`` works under
``torch.compile``. How to cut is each family's knowledge (:meth:`sls_fast.models.families.Family.truncate`).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch.nn as nn

from sls_fast.models.adapters import adopt_peft, set_trainable
from sls_fast.models.families import ensure_state, family_of, find_blocks

__all__ = ["truncate"]


def truncate(model: nn.Module, depth: int, num_classes: Optional[int] = None, *,
             inplace: bool = False) -> nn.Module:
    """Keep blocks 1..``depth`` of ``model``, delete the rest, and attach a head of the right width.

    Args:
        model: a model of a supported family (ViT/DeiT, Swin, EfficientNet/MobileNet, ConvNeXt,
            the generic family: any model whose blocks sit in a usual container,
            ResNet, transformers ViT / DINOv2 / CLIP vision;
            :func:`sls_fast.models.families.support_table`), adapted or not;
            a peft LoRA model (``get_peft_model``) is cut through the wrapper and the result is
            the model inside it, LoRA of the kept blocks included.
        depth: K, the number of blocks kept, 1..L, counted over all stages in forward order
            (:func:`sls_fast.models.families.find_blocks`).
        num_classes: classes of the head; default: the model's current ``num_classes``.
        inplace: modify ``model`` itself; by default a deep copy is truncated and ``model`` is kept.

    What is kept, per family:

    * ViT / DeiT: ``blocks[:K]`` (timm's ``prune_intermediate_layers``), the final norm and the head
      (the width never changes; a new head only if ``num_classes`` differs).
    * Swin: K counts blocks across stages; the cut falls inside stage s (its patch merging kept),
      later stages are deleted. When the width of stage s differs from the final width, the final
      norm and the head are **new** modules of stage s's width.
    * EfficientNet / MobileNet / ConvNeXt / ResNet: cut after block K (inside its stage), delete
      later blocks and stages and - when K < L - the layers whose input width no longer matches
      (EfficientNet's ``conv_head`` + ``bn2``; ConvNeXt's head norm, replaced by a new
      ``NormMlpClassifierHead``); then global pooling and a **new** linear head of the width of
      block K.

    * generic: the model's own forward runs up to block K and stops there (a hook); every module
      that would run only after block K is deleted; a **new** head (pooling as probed, a
      LayerNorm, a linear layer; ``model.sls_head``) reads block K's output.

    The model's :class:`sls_fast.models.state.SLSState` records ``depth``, ``num_classes``, the new
    modules (trainable, stored with the head) and ``head_fresh`` when the head is new
    (:func:`sls_fast.finetune` then initialises it from a linear probe). If ``depth == L``
    nothing is deleted.

    Example:
        >>> import timm, torch, sls_fast
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> p = sls_fast.truncate(m, 5, num_classes=10)
        >>> len(p.blocks), p(torch.randn(2, 3, 32, 32)).shape
        (5, torch.Size([2, 10]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"truncate needs an nn.Module, got {type(model).__name__}")
    fam = family_of(model)
    L = len(find_blocks(model))
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if not 1 <= depth <= L:
        raise ValueError(f"depth must be in 1..{L} for this {fam.name} model, got {depth}")
    if not inplace:
        model = copy.deepcopy(model)
    model = adopt_peft(model)  # a peft wrapper: the LoRA-adapted model inside it is cut
    st = ensure_state(model)
    if num_classes is None:
        num_classes = fam.num_classes(model)
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (model has num_classes={num_classes}); pass it")
    device = next(iter(model.parameters())).device
    new, head_fresh = fam.truncate(model, depth, num_classes)
    # setattr: nn.Module's typed __setattr__ takes only tensors and modules
    setattr(model, "num_classes", num_classes)
    model.to(device=device)
    st.depth, st.num_classes = depth, num_classes
    st.new_modules = tuple(sorted(set(st.new_modules) | set(new)))
    st.head_fresh = st.head_fresh or head_fresh
    if st.adapters is not None:
        st.adapters.layers = [i for i in st.adapters.layers if i < depth]
        set_trainable(model)
    else:
        for n in st.new_modules:
            for p in model.get_submodule(n).parameters():
                p.requires_grad_(True)
    return model
