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

from typing import Any, List, Optional, Sequence, Tuple

import torch.nn as nn

from sls_fast.models.petl.modules import Convpass, ConvpassConv, RepAdapter
from sls_fast.models.families.base import Block, Family
from sls_fast.models.families.probe import BlockProbe

__all__ = ["ConvFamily", "BlockAdapters", "parallel_adapter", "serial_adapter",
           "SequentialWithAdapter", "insert_block_adapters"]


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

    def forward(self, x):
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
                                   grid_size=tuple(grid) if fits and grid is not None else None,
                                   dropout=dropout,
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


class BlockAdapters:
    """Adapters for a family whose blocks are known only by what they compute: Convpass /
    RepAdapter around whole blocks (:func:`insert_block_adapters`), LoRA (peft) on every
    ``nn.Linear`` inside the adapted blocks. Mixed into :class:`Family` subclasses."""

    def insert_adapters(self: Any, model, kind, layers: Sequence[int], *, dim, scale, dropout,
                        groups, targets: Optional[Sequence[str]] = None):
        self.check_adapter_kind(kind)
        if kind == "lora":
            self.insert_lora(model, layers, rank=dim, alpha=scale, dropout=dropout,
                             targets=targets)
            return
        insert_block_adapters(self, model, kind, self.blocks(model), self.probe(model), layers,
                              dim=dim, scale=scale, dropout=dropout, groups=groups)

    def default_lora_targets(self: Any, model) -> Tuple[str, ...]:
        """Every ``nn.Linear`` inside the blocks (paths relative to a block, first seen first)."""
        out: List[str] = []
        for b in self.blocks(model):
            out += [n for n, m in b.module.named_modules()
                    if isinstance(m, nn.Linear) and n and n not in out]
        return tuple(out)

    def insert_lora(self: Any, model, layers, *, rank, alpha, dropout, targets=None):
        """peft LoRA on ``targets`` (paths inside a block) where a block has them or, by
        default, on every ``nn.Linear`` inside each adapted block; blocks without linear layers
        (convolutional stages) stay as they are. Returns the targets used (relative paths)."""
        from sls_fast.models.petl.lora import insert_lora

        blocks = self.blocks(model)
        paths: List[str] = []
        used: List[str] = []
        for i in layers:
            linears = [n for n, m in blocks[i].module.named_modules()
                       if isinstance(m, nn.Linear) and n]
            names = [t for t in targets if t in linears] if targets else linears
            paths += [f"{blocks[i].name}.{n}" for n in names]
            used += [n for n in names if n not in used]
        if targets and not used:
            if set(targets) & set(self.default_lora_targets(model)):
                return used  # only blocks not adapted have them (a cut model's LoRA layers)
            raise ValueError(f"LoRA targets {sorted(targets)} are linear layers of none of the "
                             "model's blocks")
        if not paths:
            kinds = sorted({type(blocks[i].module).__name__ for i in layers})
            raise ValueError(f"LoRA goes on nn.Linear layers; the adapted blocks "
                             f"({', '.join(kinds)}) have none: use convpass")
        insert_lora(model, paths, rank=rank, alpha=alpha, dropout=dropout)
        return used


class ConvFamily(BlockAdapters, Family):
    """Convolutional blocks: Convpass (the feature-map variant) beside the whole block,
    ``block(x) + s * convpass(x)`` (a forward hook), LoRA on the linear layers a block has
    (ConvNeXt's MLP)."""

    adapter_kinds: Tuple[str, ...] = ("convpass", "lora")

    def default_dropout(self, kind):
        return 0.0
