"""timm's VisionTransformer (ViT, DeiT, DeiT III): flat ``model.blocks[i]``, the class token as
the layer feature. EVA, BEiT and other flat token models go to the generic family."""
from __future__ import annotations

from sls_fast.models.petl.modules import Convpass
from sls_fast.models.families._transformer import TransformerFamily
from sls_fast.models.families.base import Block, is_container

__all__ = ["ViTFamily"]


def _has_cls_token(model) -> bool:
    return getattr(model, "cls_token", None) is not None and getattr(model, "num_prefix_tokens", 1) > 0


class ViTFamily(TransformerFamily):
    name = "vit"
    models = "ViT, DeiT, DeiT III (timm)"
    layout = "model.blocks[i]"
    feature = "class token (mean over patch tokens without one)"
    uses_intermediates = True
    # RuiZiHan/SLS convpass.py names the bottleneck adapter_down / adapter_conv / adapter_up.
    reference_keys = {"convpass": [(".adapter_down.", ".down."), (".adapter_conv.", ".conv."),
                                   (".adapter_up.", ".up.")],
                      "repadapter": []}

    def detect(self, model):
        from timm.models.vision_transformer import VisionTransformer

        blocks = getattr(model, "blocks", None)
        return isinstance(model, VisionTransformer) and is_container(blocks) and len(blocks) > 0

    def blocks(self, model):
        return [Block(f"blocks.{i}", b, 0, i) for i, b in enumerate(model.blocks)]

    def default_pool(self, model):
        return "cls" if _has_cls_token(model) else "mean"

    def _block_classes(self):
        from timm.models.vision_transformer import Block as VitBlock

        from sls_fast.models.families._adapted import ConvpassViTBlock, RepAdapterViTBlock

        return VitBlock, {"convpass": ConvpassViTBlock, "repadapter": RepAdapterViTBlock}

    def _convpass(self, model, width, dim, scale, dropout):
        grid = tuple(getattr(getattr(model, "patch_embed", None), "grid_size", None) or ()) or None
        n_prefix = int(getattr(model, "num_prefix_tokens", 1))
        return Convpass(width, dim, num_prefix_tokens=n_prefix, grid_size=grid, dropout=dropout,
                        scale=scale)

    def truncate(self, model, depth, num_classes):
        if depth < len(model.blocks):  # timm's own block-granular pruning
            model.prune_intermediate_layers([depth - 1], prune_norm=False, prune_head=False)
        return [], self._set_head(model, num_classes)
