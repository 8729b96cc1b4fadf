"""What ViT and Swin share: Convpass / RepAdapter beside or before attention and MLP, LoRA on
qkv / proj / fc1 / fc2 (peft), the RepAdapter merge, and the norm rebuilt when a cut changes the width."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from sls_fast.models.petl.modules import Convpass, RepAdapter
from sls_fast.models.families.base import Family

__all__ = ["TransformerFamily", "new_like_norm"]


def new_like_norm(old: nn.Module, width: int, ref: torch.Tensor) -> nn.Module:
    """A fresh norm of the same type as ``old`` (LayerNorm when that fails) for ``width``."""
    eps = getattr(old, "eps", 1e-5)
    try:
        new = type(old)(width, eps=eps)
    except TypeError:
        new = nn.LayerNorm(width, eps=eps)
    return new.to(device=ref.device, dtype=ref.dtype)


@torch.no_grad()
def _fold_into_linear(adapter: RepAdapter, lin: nn.Linear) -> None:
    """lin(adapter(x)) == lin'(x): W' = W M, b' = W c + b (computed in float64)."""
    M, c = adapter.as_affine()
    W = lin.weight.double()
    new_w = W @ M
    new_b = W @ c + (lin.bias.double() if lin.bias is not None else 0.0)
    lin.weight.copy_(new_w.to(lin.weight.dtype))
    if lin.bias is None:
        lin.bias = nn.Parameter(new_b.to(lin.weight.dtype), requires_grad=lin.weight.requires_grad)
    else:
        lin.bias.copy_(new_b.to(lin.bias.dtype))


def attach_block_adapters(blk: nn.Module, make, adapted_class: type, like: torch.Tensor) -> None:
    """``adapter_attn`` and ``adapter_mlp`` made by ``make()`` (on ``like``'s device and dtype)
    into a block, which becomes ``adapted_class``."""
    for slot in ("adapter_attn", "adapter_mlp"):
        setattr(blk, slot, make().to(device=like.device, dtype=like.dtype))
    blk.__class__ = adapted_class


def fold_block_adapters(blk: nn.Module, attn_linears, mlp_linears) -> None:
    """Merge a block's RepAdapters into the linears that read them, remove them, and give the
    block its base class back."""
    adapted: Any = blk  # an adapted block class: adapter_attn, adapter_mlp, sls_base_class
    for lin in attn_linears:
        _fold_into_linear(adapted.adapter_attn, lin)
    for lin in mlp_linears:
        _fold_into_linear(adapted.adapter_mlp, lin)
    del blk.adapter_attn
    del blk.adapter_mlp
    blk.__class__ = type(adapted).sls_base_class


class TransformerFamily(Family):
    """Blocks with ``norm1 / attn / norm2 / mlp``: Convpass beside attention and MLP, RepAdapter
    before them (both as ``adapter_attn`` / ``adapter_mlp`` inside the block)."""

    adapter_kinds = ("convpass", "repadapter", "lora")
    lora_targets = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

    def _block_classes(self):
        """(timm's base block class, {kind: adapted subclass})."""
        raise NotImplementedError

    def _convpass(self, model: nn.Module, width: int, dim: int, scale: float,
                  dropout: float) -> nn.Module:
        return Convpass(width, dim, num_prefix_tokens=0, dropout=dropout, scale=scale)

    def insert_adapters(self, model, kind, layers: Sequence[int], *, dim, scale, dropout, groups,
                        targets=None):
        self.check_adapter_kind(kind)
        if kind == "lora":
            self.insert_lora(model, layers, rank=dim, alpha=scale, dropout=dropout, targets=targets)
            return
        base, adapted = self._block_classes()
        blocks = self.blocks(model)
        for i in layers:
            if type(blocks[i].module) is not base:
                t = type(blocks[i].module)
                raise TypeError(f"{self.name} adapters go into timm's {base.__module__}."
                                f"{base.__name__}; block {blocks[i].name} is {t.__module__}.{t.__name__}")
        p = next(iter(model.parameters()))
        for i in layers:
            blk: Any = blocks[i].module  # a timm block: norm1, mlp.fc1
            width = blk.norm1.weight.shape[0] if getattr(blk.norm1, "weight", None) is not None \
                else blk.mlp.fc1.in_features
            if kind == "convpass":
                def make(width=width):
                    return self._convpass(model, width, dim, scale, dropout)
            else:
                def make(width=width):
                    return RepAdapter(width, dim, groups=groups, scale=scale, dropout=dropout)
            attach_block_adapters(blk, make, adapted[kind], p)

    def merge_adapters(self, model):
        for b in self.blocks(model):
            blk = b.module
            if not isinstance(getattr(blk, "adapter_attn", None), RepAdapter):
                continue
            qkv = getattr(blk.attn, "qkv", None)
            fc1 = getattr(blk.mlp, "fc1", None)
            if not isinstance(qkv, nn.Linear) or not isinstance(fc1, nn.Linear):
                raise TypeError(f"{b.name}: merge needs attn.qkv and mlp.fc1 to be nn.Linear")
            fold_block_adapters(blk, [qkv], [fc1])
