"""Adapted transformers encoder layers (transformers 5): Convpass beside attention and MLP,
RepAdapter before them, as :mod:`sls_fast.models.families._adapted` does for timm blocks.

Imported only when such adapters are added (transformers is optional); defined once at import,
so adapted models pickle by reference. Convpass returns its output already scaled; RepAdapter
adds its own residual. Base forwards:

* ``ViTLayer``: ``x + dropout(attention(layernorm_before(x)))``, then the same around the MLP;
* ``Dinov2Layer``: ``x + drop_path(layer_scale1(attention(norm1(x))))``, then the same with
  ``norm2`` / ``mlp`` / ``layer_scale2`` (the adapter sits outside the layer scale, as in timm);
* ``CLIPEncoderLayer``: ``x + self_attn(layer_norm1(x))``, then ``x + mlp(layer_norm2(x))``.
"""
from __future__ import annotations

from transformers.models.clip.modeling_clip import CLIPEncoderLayer
from transformers.models.deit.modeling_deit import DeiTLayer
from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer
from transformers.models.vit.modeling_vit import ViTLayer

try:  # transformers >= 4.48
    from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
        Dinov2WithRegistersLayer)
except ImportError:  # pragma: no cover - an older transformers has no such model to adapt
    Dinov2WithRegistersLayer = Dinov2Layer  # type: ignore[misc, assignment]

__all__ = ["ConvpassHFViTLayer", "RepAdapterHFViTLayer", "ConvpassDinov2Layer",
           "RepAdapterDinov2Layer", "ConvpassCLIPLayer", "RepAdapterCLIPLayer",
           "ConvpassHFDeiTLayer", "RepAdapterHFDeiTLayer", "ConvpassDinov2RegistersLayer",
           "RepAdapterDinov2RegistersLayer"]


class _ConvpassViTForward:
    """``x + attn(ln(x)) + s * convpass(ln(x))``, then the same around the MLP (ViT's and
    DeiT's layers: ``layernorm_before`` / ``attention`` / ``layernorm_after`` / ``mlp``)."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        h = self.layernorm_before(hidden_states)
        attn, _ = self.attention(h, attention_mask, **kwargs)
        x = self.dropout(attn) + hidden_states + self.adapter_attn(h)
        h = self.layernorm_after(x)
        return self.dropout(self.mlp(h)) + x + self.adapter_mlp(h)


class _RepAdapterViTForward:
    """``x + attn(repadapter(ln(x)))``, then the same around the MLP."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attn, _ = self.attention(self.adapter_attn(self.layernorm_before(hidden_states)),
                                 attention_mask, **kwargs)
        x = self.dropout(attn) + hidden_states
        return self.dropout(self.mlp(self.adapter_mlp(self.layernorm_after(x)))) + x


class _ConvpassDinov2Forward:
    """``x + ls1(attn(norm1(x))) + s * convpass(norm1(x))``, then the same around the MLP
    (DINOv2's layers, with or without registers)."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        h = self.norm1(hidden_states)
        attn, _ = self.attention(h, attention_mask=attention_mask, **kwargs)
        x = (self.drop_path(self.layer_scale1(attn)) + hidden_states
             + self.drop_path(self.adapter_attn(h)))
        h = self.norm2(x)
        return (self.drop_path(self.layer_scale2(self.mlp(h))) + x
                + self.drop_path(self.adapter_mlp(h)))


class _RepAdapterDinov2Forward:
    """``x + ls1(attn(repadapter(norm1(x))))``, then the same around the MLP."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attn, _ = self.attention(self.adapter_attn(self.norm1(hidden_states)),
                                 attention_mask=attention_mask, **kwargs)
        x = self.drop_path(self.layer_scale1(attn)) + hidden_states
        return self.drop_path(self.layer_scale2(self.mlp(self.adapter_mlp(self.norm2(x))))) + x


class ConvpassHFViTLayer(_ConvpassViTForward, ViTLayer):
    sls_base_class = ViTLayer


class RepAdapterHFViTLayer(_RepAdapterViTForward, ViTLayer):
    sls_base_class = ViTLayer


class ConvpassHFDeiTLayer(_ConvpassViTForward, DeiTLayer):
    sls_base_class = DeiTLayer


class RepAdapterHFDeiTLayer(_RepAdapterViTForward, DeiTLayer):
    sls_base_class = DeiTLayer


class ConvpassDinov2Layer(_ConvpassDinov2Forward, Dinov2Layer):
    sls_base_class = Dinov2Layer


class RepAdapterDinov2Layer(_RepAdapterDinov2Forward, Dinov2Layer):
    sls_base_class = Dinov2Layer


class ConvpassDinov2RegistersLayer(_ConvpassDinov2Forward, Dinov2WithRegistersLayer):
    sls_base_class = Dinov2WithRegistersLayer


class RepAdapterDinov2RegistersLayer(_RepAdapterDinov2Forward, Dinov2WithRegistersLayer):
    sls_base_class = Dinov2WithRegistersLayer


class ConvpassCLIPLayer(CLIPEncoderLayer):
    """``x + attn(ln1(x)) + s * convpass(ln1(x))``, then the same around the MLP."""

    sls_base_class = CLIPEncoderLayer

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        h = self.layer_norm1(hidden_states)
        attn, _ = self.self_attn(hidden_states=h, attention_mask=attention_mask, **kwargs)
        x = hidden_states + attn + self.adapter_attn(h)
        h = self.layer_norm2(x)
        return x + self.mlp(h) + self.adapter_mlp(h)


class RepAdapterCLIPLayer(CLIPEncoderLayer):
    """``x + attn(repadapter(ln1(x)))``, then the same around the MLP."""

    sls_base_class = CLIPEncoderLayer

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attn, _ = self.self_attn(hidden_states=self.adapter_attn(self.layer_norm1(hidden_states)),
                                 attention_mask=attention_mask, **kwargs)
        x = hidden_states + attn
        return x + self.mlp(self.adapter_mlp(self.layer_norm2(x)))
