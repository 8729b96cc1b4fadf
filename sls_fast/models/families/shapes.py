"""Block geometry from one dummy forward pass, and where a flat depth falls among stages."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn

__all__ = ["block_shapes", "probe_size", "stage_cut"]


def probe_size(model: nn.Module) -> tuple:
    """An input size the model accepts: its patch embedding's image size, else 64 x 64."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is None:
        return (64, 64)
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


@torch.no_grad()
def block_shapes(family, model: nn.Module, blocks: Optional[list] = None) -> List[dict]:
    """Input/output widths of every block from one forward pass (eval mode, batch 1).

    Returns one dict per block: ``in_ch``, ``out_ch`` (channel width) and ``stride`` (spatial
    down-sampling of the block; 1 for token blocks). Channel-first maps ``[B, C, H, W]`` unless
    the family's outputs are NHWC or tokens. Training flags are restored afterwards.
    """
    blocks = blocks if blocks is not None else family.blocks(model)
    records: Dict[int, dict] = {}

    def hook(i):
        def fn(mod, inp, out):
            x = inp[0]
            if out.ndim == 4 and not family.nhwc:
                records[i] = dict(in_ch=x.shape[1], out_ch=out.shape[1],
                                  stride=max(1, round(x.shape[-1] / out.shape[-1])))
            else:
                records[i] = dict(in_ch=x.shape[-1], out_ch=out.shape[-1], stride=1)
        return fn

    handles = [b.module.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    training = [m for m in model.modules() if m.training]
    p = next(iter(model.parameters()))
    try:
        model.eval()
        model(torch.zeros(1, 3, *probe_size(model), device=p.device, dtype=p.dtype))
    finally:
        for hd in handles:
            hd.remove()
        for m in training:
            m.training = True
    missing = [blocks[i].name for i in range(len(blocks)) if i not in records]
    if missing:
        raise ValueError(f"blocks {missing} did not run in a forward pass of {type(model).__name__}")
    return [records[i] for i in range(len(blocks))]


def stage_cut(counts: List[int], depth: int):
    """Flat depth K (1-based count) -> (stage s, number of blocks kept in stage s)."""
    acc = 0
    for s, n in enumerate(counts):
        if depth <= acc + n:
            return s, depth - acc
        acc += n
    raise ValueError(f"depth {depth} is beyond the model's {acc} blocks")
