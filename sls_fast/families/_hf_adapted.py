"""Adapted transformers ViT layers (transformers 5 ``ViTLayer``): Convpass beside attention and
MLP, RepAdapter before them, as in :mod:`sls_fast.families._adapted` for timm blocks.

Imported only when such adapters are added (transformers is optional); defined once at import,
so adapted models pickle by reference. The base layer's forward is
``x + dropout(attention(layernorm_before(x)))`` then ``x + dropout(mlp(layernorm_after(x)))``.
"""
from __future__ import annotations

from transformers.models.vit.modeling_vit import ViTLayer

__all__ = ["ConvpassHFViTLayer", "RepAdapterHFViTLayer"]


class ConvpassHFViTLayer(ViTLayer):
    """``x + attn(ln(x)) + s * convpass(ln(x))``, then the same around the MLP."""

    sls_base_class = ViTLayer

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        h = self.layernorm_before(hidden_states)
        attn, _ = self.attention(h, attention_mask, **kwargs)
        x = self.dropout(attn) + hidden_states + self.adapter_attn(h)
        h = self.layernorm_after(x)
        return self.dropout(self.mlp(h)) + x + self.adapter_mlp(h)


class RepAdapterHFViTLayer(ViTLayer):
    """``x + attn(repadapter(ln(x)))``, then the same around the MLP."""

    sls_base_class = ViTLayer

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attn, _ = self.attention(self.adapter_attn(self.layernorm_before(hidden_states)),
                                 attention_mask, **kwargs)
        x = self.dropout(attn) + hidden_states
        return self.dropout(self.mlp(self.adapter_mlp(self.layernorm_after(x)))) + x
