"""Hugging Face transformers ViT: ``ViTModel`` / ``ViTForImageClassification``.

The blocks are the encoder layers (``vit.layers[i]`` in transformers 5, ``vit.encoder.layer[i]``
in 4.x); the layer feature is the class token of each layer's output before the final layernorm
(``outputs.hidden_states[i + 1][:, 0]``). The classifier reads the class token after the final
layernorm (width: the hidden size). Adapters: LoRA through peft on the attention projections and
the MLP (any transformers version); Convpass beside and RepAdapter before attention and MLP
(transformers 5's ``ViTLayer``), RepAdapter merged into ``q_proj`` / ``k_proj`` / ``v_proj`` and
``mlp.fc1``. What all transformers families share is in :mod:`sls_fast.models.families._hf`.
"""
from __future__ import annotations

from sls_fast.models.families._hf import HFFamily

__all__ = ["HFViTFamily", "HFDeiTFamily"]


class HFViTFamily(HFFamily):
    name = "hf-vit"
    models = "ViTModel, ViTForImageClassification (transformers; 4.x: vit.encoder.layer[i])"
    layout = "model.vit.layers[i]"
    feature = "class token before the final layernorm (= hidden_states[i + 1][:, 0])"
    model_types = ("vit",)
    backbone_attr = "vit"
    layer_paths = ("layers", "encoder.layer")
    lora_candidates = (
        ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
         "mlp.fc1", "mlp.fc2"),
        ("attention.attention.query", "attention.attention.key", "attention.attention.value",
         "attention.output.dense", "intermediate.dense", "output.dense"),  # transformers 4.x
    )
    head_class = "ViTForImageClassification"

    def head_input(self, model, last_hidden_state):
        return last_hidden_state[:, 0]

    def _adapted_classes(self):
        from sls_fast.models.families._hf_adapted import ConvpassHFViTLayer, RepAdapterHFViTLayer, ViTLayer

        return ViTLayer, {"convpass": ConvpassHFViTLayer, "repadapter": RepAdapterHFViTLayer}


class HFDeiTFamily(HFViTFamily):
    """transformers DeiT (``DeiTModel`` / ``DeiTForImageClassification``): ViT's layer layout
    under ``deit``, with a distillation token after the class token; the classifier reads the
    class token."""

    name = "hf-deit"
    models = "DeiTModel, DeiTForImageClassification (transformers)"
    layout = "model.deit.layers[i]"
    model_types = ("deit",)
    backbone_attr = "deit"
    head_class = "DeiTForImageClassification"

    def num_prefix_tokens(self, model):
        return 2  # class and distillation tokens

    def _adapted_classes(self):
        from sls_fast.models.families._hf_adapted import (ConvpassHFDeiTLayer, DeiTLayer,
                                                          RepAdapterHFDeiTLayer)

        return DeiTLayer, {"convpass": ConvpassHFDeiTLayer, "repadapter": RepAdapterHFDeiTLayer}
