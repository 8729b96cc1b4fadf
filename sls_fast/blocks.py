"""Where the "layers" of SLS are: every block of a model, in forward order.

A layer is one transformer block, or for hierarchical / convolutional models one block of one
stage (docs/design.md). The knowledge lives in the family objects (:mod:`sls_fast.families`);
this module keeps the short names.
"""
from __future__ import annotations

import torch.nn as nn

from .families import Block, family_of, find_blocks

__all__ = ["Block", "find_blocks", "model_family"]


def model_family(model: nn.Module) -> str:
    """The name of the model's family ("vit", "swin", "efficientnet", "convnext", "resnet", ...);
    ValueError when no family recognises it."""
    return family_of(model).name
