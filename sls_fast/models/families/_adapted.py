"""Adapted transformer blocks: timm's block classes with a forward that runs the adapters.

Defined once, at import, as ordinary subclasses (nothing is created at run time), so adapted
models pickle and ``torch.save`` by reference to these names. :mod:`sls_fast.models.families.vit` and
:mod:`sls_fast.models.families.swin` switch a block's class to one of these when they add adapters, and
back to ``sls_base_class`` when RepAdapters are merged. Every base weight keeps its state-dict key;
the adapters are the submodules ``adapter_attn`` / ``adapter_mlp`` (Convpass returns its output
already multiplied by its scale; RepAdapter adds its own residual).
"""
from __future__ import annotations

from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block as VitBlock

__all__ = ["ConvpassViTBlock", "RepAdapterViTBlock", "ConvpassSwinBlock", "RepAdapterSwinBlock"]


class ConvpassViTBlock(VitBlock):
    """``x + attn(norm1(x)) + s * convpass(norm1(x))``, then the same around the MLP."""

    sls_base_class = VitBlock

    def forward(self, x, attn_mask=None, is_causal=False):
        h = self.norm1(x)
        x = (x + self.drop_path1(self.ls1(self.attn(h, attn_mask=attn_mask, is_causal=is_causal)))
             + self.drop_path1(self.adapter_attn(h)))
        h = self.norm2(x)
        return x + self.drop_path2(self.ls2(self.mlp(h))) + self.drop_path2(self.adapter_mlp(h))


class RepAdapterViTBlock(VitBlock):
    """``x + attn(repadapter(norm1(x)))``, then the same around the MLP."""

    sls_base_class = VitBlock

    def forward(self, x, attn_mask=None, is_causal=False):
        x = x + self.drop_path1(self.ls1(self.attn(self.adapter_attn(self.norm1(x)),
                                                   attn_mask=attn_mask, is_causal=is_causal)))
        return x + self.drop_path2(self.ls2(self.mlp(self.adapter_mlp(self.norm2(x)))))


class ConvpassSwinBlock(SwinTransformerBlock):
    """Swin block (NHWC maps) with Convpass beside windowed attention and beside the MLP."""

    sls_base_class = SwinTransformerBlock

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.drop_path1(self._attn(h)) + self.drop_path1(self.adapter_attn(h))
        h = self.norm2(x)
        return x + self.drop_path2(self.mlp(h)) + self.drop_path2(self.adapter_mlp(h))


class RepAdapterSwinBlock(SwinTransformerBlock):
    """Swin block with RepAdapter before windowed attention and before the MLP."""

    sls_base_class = SwinTransformerBlock

    def forward(self, x):
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.adapter_attn(self.norm1(x))))
        x = x.reshape(B, -1, C)
        x = x + self.drop_path2(self.mlp(self.adapter_mlp(self.norm2(x))))
        return x.reshape(B, H, W, C)
