"""What convolutional families share: Convpass parallel to each whole block, pooled NCHW maps."""
from __future__ import annotations

from typing import Optional, Sequence

from sls_fast.models.petl.modules import ConvpassConv
from sls_fast.models.families.base import Family
from sls_fast.models.families.shapes import block_shapes

__all__ = ["ConvFamily", "parallel_adapter"]


def parallel_adapter(module, args, output):
    """Forward hook of an adapted convolutional block: ``block(x) + adapter(x)``.

    A module-level function, so hooked models pickle; the adapter is the block's own submodule
    ``adapter`` (its state-dict keys sit under the block's path)."""
    return output + module.adapter(args[0])


class ConvFamily(Family):
    """Blocks that map ``[B, C, H, W]`` to ``[B, C', H', W']``: Convpass (the feature-map variant)
    runs beside the whole block, ``block(x) + s * convpass(x)``, added by a forward hook."""

    adapter_kinds = ("convpass",)

    def default_dropout(self, kind):
        return 0.0

    def insert_adapters(self, model, kind, layers: Sequence[int], *, dim, scale, dropout, groups,
                        targets: Optional[Sequence[str]] = None):  # targets: LoRA's, not taken here
        self.check_adapter_kind(kind)
        blocks = self.blocks(model)
        shapes = block_shapes(self, model, blocks)
        p = next(iter(model.parameters()))
        for i in layers:
            blk, sh = blocks[i].module, shapes[i]
            if parallel_adapter in blk._forward_hooks.values():
                raise ValueError(f"block {blocks[i].name} already has an adapter")
            blk.adapter = ConvpassConv(sh["in_ch"], sh["out_ch"], dim, stride=sh["stride"],
                                       dropout=dropout, scale=scale).to(device=p.device, dtype=p.dtype)
            blk.register_forward_hook(parallel_adapter)
