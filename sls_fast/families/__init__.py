"""Model families: one object per family holds everything that depends on a model's structure.

    >>> import timm
    >>> from sls_fast.families import family_of
    >>> fam = family_of(timm.create_model("resnet18", pretrained=False))
    >>> fam.name, len(fam.blocks(timm.create_model("resnet18", pretrained=False)))
    ('resnet', 8)

:func:`family_of` picks the family of a model (a clear ValueError lists the supported ones);
:func:`register` adds a new family (first match wins, so a more specific family can go first);
:func:`support_table` renders the README's support table from the registry.
See :class:`sls_fast.families.base.Family` for the interface.
"""
from __future__ import annotations

from typing import List, Optional

import torch.nn as nn

from .base import Block, Family, pool_output
from .convnext import ConvNeXtFamily
from .efficientnet import EfficientNetFamily
from .hf_clip import HFCLIPFamily
from .hf_dinov2 import HFDinov2Family
from .hf_vit import HFViTFamily
from .resnet import ResNetFamily
from .swin import SwinFamily
from .vit import ViTFamily

__all__ = ["Block", "Family", "FAMILIES", "family_of", "find_family", "get_family", "register",
           "find_blocks", "support_table", "pool_output"]

# Detection order: the transformers families (config.model_type; ViT's ``layers`` would look like
# Swin's) first, EfficientNet (blocks[s][j]) before ViT (blocks[i]).
FAMILIES: List[Family] = [HFViTFamily(), HFDinov2Family(), HFCLIPFamily(), EfficientNetFamily(),
                          ViTFamily(), SwinFamily(), ConvNeXtFamily(), ResNetFamily()]


def register(family: Family, *, first: bool = False) -> Family:
    """Add a family to the registry (``first=True``: tried before the others). Returns it."""
    if not isinstance(family, Family):
        raise TypeError(f"register needs a Family instance, got {type(family).__name__}")
    if any(f.name == family.name for f in FAMILIES):
        raise ValueError(f"a family named {family.name!r} is already registered")
    FAMILIES.insert(0, family) if first else FAMILIES.append(family)
    return family


def find_family(model: nn.Module) -> Optional[Family]:
    """The first registered family that recognises ``model`` (a peft wrapper: the model inside
    it), or None."""
    from ..lora import is_peft_wrapper

    if is_peft_wrapper(model):
        model = model.get_base_model()
    for fam in FAMILIES:
        if fam.detect(model):
            return fam
    return None


def family_of(model: nn.Module) -> Family:
    """The family of ``model``; ValueError listing the supported layouts when none fits."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    fam = find_family(model)
    if fam is None:
        layouts = "; ".join(f"{f.layout} ({f.models})" for f in FAMILIES)
        raise ValueError(f"{type(model).__name__} has no recognisable blocks; supported layouts: "
                         f"{layouts}. For feature extraction, pass the block modules explicitly "
                         "(layers=[...]).")
    return fam


def get_family(name: str) -> Family:
    """The registered family called ``name``."""
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise ValueError(f"unknown model family {name!r}; registered: {[f.name for f in FAMILIES]}")


def find_blocks(model: nn.Module) -> List[Block]:
    """Every block of ``model`` in forward order (its family's :meth:`~Family.blocks`).

    Example:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> [b.name for b in find_blocks(m)][:2]
        ['blocks.0', 'blocks.1']
    """
    fam = family_of(model)
    out = fam.blocks(model)
    if not out:
        raise ValueError(f"{type(model).__name__} ({fam.name} layout) has no blocks")
    return out


def support_table() -> str:
    """The README's support table (Markdown), one row per registered family."""
    rows = ["| family | models | blocks | layer feature | adapters | truncate | artifacts | "
            "authors' checkpoints |",
            "|---|---|---|---|---|---|---|---|"]
    for f in FAMILIES:
        ref = ", ".join(sorted(f.reference_keys)) or "no"
        rows.append(f"| `{f.name}` | {f.models} | `{f.layout}` | {f.feature} | "
                    f"{', '.join(f.adapter_kinds)} | yes | yes | {ref} |")
    return "\n".join(rows)
