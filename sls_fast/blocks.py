"""Where the "layers" of SLS are: every block of a timm-style model, in forward order.

A layer is one transformer block, or for hierarchical / convolutional models one block of one
stage (DESIGN.md section 1). Shared by extraction (hooks / ``forward_intermediates``), adapters
and truncation, so that they all agree on what block ``i`` is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch.nn as nn

__all__ = ["Block", "find_blocks", "model_family", "BLOCK_LAYOUTS"]

BLOCK_LAYOUTS = (
    "model.blocks[i] (ViT / DeiT / EVA)",
    "model.blocks[s][j] (EfficientNet / MobileNet)",
    "model.layers[s].blocks[j] (Swin)",
    "model.stages[s].blocks[j] (ConvNeXt and other staged models)",
    "model.layer1..layer4[j] (ResNet)",
)


@dataclass(frozen=True)
class Block:
    """One layer: its module path (``name``), the module, and its stage/index position."""

    name: str
    module: nn.Module
    stage: int  # stage index (0 for flat transformers)
    index: int  # index inside the stage


def _is_container(m: nn.Module) -> bool:
    return isinstance(m, (nn.Sequential, nn.ModuleList))


def model_family(model: nn.Module) -> str:
    """'vit' (flat blocks), 'efficientnet' (blocks[s][j]), 'swin', 'convnext' (stages) or
    'resnet'; raises ValueError when no layout is recognised."""
    blocks = getattr(model, "blocks", None)
    if blocks is not None and _is_container(blocks) and len(blocks) > 0:
        if all(_is_container(s) for s in blocks):
            return "efficientnet"
        return "vit"
    layers = getattr(model, "layers", None)
    if layers is not None and _is_container(layers) and len(layers) > 0 and all(
            hasattr(s, "blocks") for s in layers):
        return "swin"
    stages = getattr(model, "stages", None)
    if stages is not None and _is_container(stages) and len(stages) > 0 and all(
            hasattr(s, "blocks") for s in stages):
        return "convnext"
    if all(_is_container(getattr(model, f"layer{k}", nn.Identity())) for k in (1, 2, 3, 4)):
        return "resnet"
    raise ValueError(
        f"{type(model).__name__} has no recognisable blocks; looked for "
        + "; ".join(BLOCK_LAYOUTS)
        + ". Pass the list of block modules explicitly (layers=[...])."
    )


def find_blocks(model: nn.Module) -> List[Block]:
    """Every block of ``model`` in forward order (see :data:`BLOCK_LAYOUTS`).

    Example:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> [b.name for b in find_blocks(m)][:2]
        ['blocks.0', 'blocks.1']
    """
    family = model_family(model)
    out: List[Block] = []
    if family == "vit":
        out = [Block(f"blocks.{i}", b, 0, i) for i, b in enumerate(model.blocks)]
    elif family == "efficientnet":
        for s, stage in enumerate(model.blocks):
            out += [Block(f"blocks.{s}.{j}", b, s, j) for j, b in enumerate(stage)]
    elif family == "swin":
        for s, stage in enumerate(model.layers):
            out += [Block(f"layers.{s}.blocks.{j}", b, s, j) for j, b in enumerate(stage.blocks)]
    elif family == "convnext":
        for s, stage in enumerate(model.stages):
            out += [Block(f"stages.{s}.blocks.{j}", b, s, j) for j, b in enumerate(stage.blocks)]
    else:
        for s in range(4):
            stage = getattr(model, f"layer{s + 1}")
            out += [Block(f"layer{s + 1}.{j}", b, s, j) for j, b in enumerate(stage)]
    if not out:
        raise ValueError(f"{type(model).__name__} ({family} layout) has no blocks")
    return out
