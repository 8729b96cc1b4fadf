"""Adapters around a whole block, for any probed layout, and the convolutional families.

* Convpass runs beside the block, ``block(x) + convpass(x)`` (a forward hook): the feature-map
  variant (:class:`ConvpassConv`) for channels-first maps, the token / channels-last variant
  (:class:`Convpass`) for tokens and channels-last maps.
* RepAdapter runs before the block, ``block(repadapter(x))`` (a forward pre-hook), on the
  channel-last inputs it is defined for (tokens, channels-last maps).

The adapter is the block's own submodule ``adapter`` (its state-dict keys sit under the block's
path). A block that is an ``nn.Sequential`` would run a new child as one more step, so its class
becomes :class:`SequentialWithAdapter`, which runs every step but the adapter. Hooks are
module-level functions, so adapted models pickle.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch.nn as nn

from sls_fast.models.petl.modules import Convpass, ConvpassConv, RepAdapter
from sls_fast.models.families.base import Block, Family
from sls_fast.models.families.probe import BlockProbe

__all__ = ["ConvFamily", "parallel_adapter", "serial_adapter", "SequentialWithAdapter",
           "insert_block_adapters"]


def parallel_adapter(module, args, output):
    """Forward hook of a block with Convpass beside it: ``block(x) + adapter(x)`` (a block
    that returns a tuple, as transformers layers do: added to its first element)."""
    if isinstance(output, tuple):
        return (output[0] + module.adapter(args[0]), *output[1:])
    return output + module.adapter(args[0])


def serial_adapter(module, args):
    """Forward pre-hook of a block with RepAdapter before it: ``block(adapter(x))``."""
    return (module.adapter(args[0]), *args[1:])


class SequentialWithAdapter(nn.Sequential):
    """An ``nn.Sequential`` block that holds an ``adapter`` child without running it as a step
    (the adapter runs from the block's hook)."""

    sls_base_class = nn.Sequential

    def forward(self, x):  # type: ignore[override]
        for name, step in self._modules.items():
            if name != "adapter" and step is not None:
                x = step(x)
        return x


def _has_adapter(blk: nn.Module) -> bool:
    return (parallel_adapter in blk._forward_hooks.values()
            or serial_adapter in blk._forward_pre_hooks.values())


def insert_block_adapters(fam: Family, model: nn.Module, kind: str, blocks: List[Block],
                          probes: List[BlockProbe], layers: Sequence[int], *, dim: int,
                          scale: float, dropout: float, groups: int) -> None:
    """Convpass beside / RepAdapter before each block in ``layers``, shaped by its probe.
    Refuses (ValueError naming the block) a layout the adapter is not defined for."""
    p = next(iter(model.parameters()))
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    made = []
    for i in layers:
        blk, pr = blocks[i].module, probes[i]
        where = f"{fam.name} block {blocks[i].name} ({type(blk).__name__}, {pr.layout} output)"
        if _has_adapter(blk):
            raise ValueError(f"{where} already has an adapter")
        same = pr.in_width == pr.width and pr.stride == 1
        if kind == "convpass":
            if pr.layout == "nchw":
                adapter: nn.Module = ConvpassConv(pr.in_width, pr.width, dim, stride=pr.stride,
                                                  dropout=dropout, scale=scale)
            elif pr.layout in ("tokens", "nhwc") and same:
                fits = (pr.layout == "tokens" and isinstance(grid, (tuple, list))
                        and pr.tokens == pr.prefix + int(grid[0]) * int(grid[1]))
                adapter = Convpass(pr.width, dim, num_prefix_tokens=pr.prefix,
                                   grid_size=tuple(grid) if fits else None, dropout=dropout,
                                   scale=scale)
            else:
                raise ValueError(f"Convpass cannot sit beside {where}: it maps width "
                                 f"{pr.in_width} to {pr.width} (stride {pr.stride})")
        elif kind == "repadapter":
            if pr.layout not in ("tokens", "nhwc"):
                raise ValueError(f"RepAdapter works on channels-last inputs (tokens, NHWC maps); "
                                 f"{where} is not one")
            adapter = RepAdapter(pr.in_width, dim, groups=groups, scale=scale, dropout=dropout)
        else:
            fam.check_adapter_kind(kind)
            raise ValueError(f"{kind} adapters do not go around whole blocks")
        made.append((blk, adapter))
    for blk, adapter in made:  # every block checked before any is changed
        if type(blk) is nn.Sequential:
            blk.__class__ = SequentialWithAdapter
        blk.adapter = adapter.to(device=p.device, dtype=p.dtype)
        if kind == "convpass":
            blk.register_forward_hook(parallel_adapter)
        else:
            blk.register_forward_pre_hook(serial_adapter)


class ConvFamily(Family):
    """Blocks that map ``[B, C, H, W]`` to ``[B, C', H', W']``: Convpass (the feature-map variant)
    runs beside the whole block, ``block(x) + s * convpass(x)``, added by a forward hook."""

    adapter_kinds = ("convpass",)

    def default_dropout(self, kind):
        return 0.0

    def insert_adapters(self, model, kind, layers: Sequence[int], *, dim, scale, dropout, groups,
                        targets: Optional[Sequence[str]] = None):  # targets: LoRA's, not taken here
        self.check_adapter_kind(kind)
        insert_block_adapters(self, model, kind, self.blocks(model), self.probe(model), layers,
                              dim=dim, scale=scale, dropout=dropout, groups=groups)
