"""Model families: one object per family holds everything that depends on a model's structure.

    >>> import timm
    >>> from sls_fast.models.families import family_of
    >>> fam = family_of(timm.create_model("resnet18", pretrained=False))
    >>> fam.name, len(fam.blocks(timm.create_model("resnet18", pretrained=False)))
    ('resnet', 8)

:func:`family_of` picks the family of a model (a clear ValueError lists the supported ones);
:func:`register` adds a new family (first match wins, so a more specific family can go first);
:func:`support_table` renders the README's support table from the registry.
See :class:`sls_fast.models.families.base.Family` for the interface.
"""
from __future__ import annotations

from typing import List, Optional

import torch.nn as nn

from sls_fast.models.families.base import Block, Family, pool_output
from sls_fast.models.state import SLSState, base_checksum, get_state, model_name
from sls_fast.models.families.convnext import ConvNeXtFamily
from sls_fast.models.families.efficientnet import EfficientNetFamily
from sls_fast.models.families.generic import GenericFamily
from sls_fast.models.families.hf_clip import HFCLIPFamily
from sls_fast.models.families.hf_dinov2 import HFDinov2Family, HFDinov2RegistersFamily
from sls_fast.models.families.hf_vit import HFDeiTFamily, HFViTFamily
from sls_fast.models.families.resnet import ResNetFamily
from sls_fast.models.families.swin import SwinFamily
from sls_fast.models.families.vit import ViTFamily

__all__ = ["Block", "Family", "FAMILIES", "family_of", "find_family", "ensure_state", "register",
           "find_blocks", "support_table", "pool_output"]

# Detection order: the transformers families (config.model_type), then the timm families (by
# class), then any other model whose blocks sit in a usual container (probed, generic cut).
FAMILIES: List[Family] = [HFViTFamily(), HFDeiTFamily(), HFDinov2Family(),
                          HFDinov2RegistersFamily(), HFCLIPFamily(), EfficientNetFamily(),
                          ViTFamily(), SwinFamily(), ConvNeXtFamily(), ResNetFamily(),
                          GenericFamily()]


def register(family: Family, *, first: bool = False) -> Family:
    """Add a family to the registry (``first=True``: tried before the others; otherwise after
    the built-in families, before the generic fallback). Returns it."""
    if not isinstance(family, Family):
        raise TypeError(f"register needs a Family instance, got {type(family).__name__}")
    if any(f.name == family.name for f in FAMILIES):
        raise ValueError(f"a family named {family.name!r} is already registered")
    fallback = len(FAMILIES) - int(bool(FAMILIES) and isinstance(FAMILIES[-1], GenericFamily))
    FAMILIES.insert(0 if first else fallback, family)  # the generic family stays the fallback
    return family


def find_family(model: nn.Module) -> Optional[Family]:
    """The first registered family that recognises ``model`` (a peft wrapper: the model inside
    it), or None."""
    from sls_fast.models.petl.lora import is_peft_wrapper

    if is_peft_wrapper(model):
        model = model.get_base_model()  # type: ignore[operator]  # peft's method
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


def ensure_state(model: nn.Module) -> SLSState:
    """The model's state, recording the base model (name, checksum, family, L) on first use."""
    st = get_state(model)
    if st is None:
        fam = family_of(model)
        st = SLSState(base_name=model_name(model), base_checksum=base_checksum(model),
                      family=fam.name, num_blocks=len(fam.blocks(model)))
        # setattr: nn.Module's typed __setattr__ takes only tensors and modules
        setattr(model, "sls_state", st)
    return st
