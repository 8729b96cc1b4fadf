"""Hugging Face transformers DINOv2: ``Dinov2Model`` / ``Dinov2ForImageClassification``.

The blocks are the encoder layers (``dinov2.encoder.layer[i]``); the layer feature is the class
token of each layer's output before the final layernorm (``hidden_states[i + 1][:, 0]``), as for
ViT. The head rule is DINOv2's own: the classifier reads ``[class token, mean of the patch
tokens]`` of the final layernorm's output, so a new classifier is ``2 x hidden`` wide.
Adapters: LoRA on the attention projections and the MLP (``fc1`` / ``fc2``, or
``gate_proj`` / ``up_proj`` / ``down_proj`` of the SwiGLU MLP of the giant models); Convpass beside
and RepAdapter before attention and MLP (outside the layer scales), RepAdapter merged into
``q_proj`` / ``k_proj`` / ``v_proj`` and the MLP's input linears. Shared code:
:mod:`sls_fast.models.families._hf`.
"""
from __future__ import annotations

import torch

from sls_fast.models.families._hf import IMAGENET_MEAN_STD, HFFamily

__all__ = ["HFDinov2Family", "HFDinov2RegistersFamily"]


class HFDinov2Family(HFFamily):
    name = "hf-dinov2"
    models = "Dinov2Model, Dinov2ForImageClassification (transformers)"
    layout = "model.dinov2.encoder.layer[i]"
    feature = "class token before the final layernorm (= hidden_states[i + 1][:, 0])"
    model_types = ("dinov2",)
    backbone_attr = "dinov2"
    layer_paths = ("encoder.layer",)
    lora_candidates = (
        ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
         "mlp.fc1", "mlp.fc2"),
        ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),  # SwiGLU MLP (dinov2-giant)
        ("attention.attention.query", "attention.attention.key", "attention.attention.value",
         "attention.output.dense", "mlp.fc1", "mlp.fc2"),  # transformers 4.x
    )
    head_class = "Dinov2ForImageClassification"
    mean_std = IMAGENET_MEAN_STD

    def head_input(self, model, last_hidden_state):
        """``[class token, mean of the patch tokens]`` (``[B, 2 D]``), as
        ``Dinov2ForImageClassification`` reads them."""
        return torch.cat([last_hidden_state[:, 0], last_hidden_state[:, 1:].mean(dim=1)], dim=1)

    def head_width(self, model):
        return 2 * super().head_width(model)

    def _mlp_inputs(self, mlp):
        return [mlp.fc1] if hasattr(mlp, "fc1") else [mlp.gate_proj, mlp.up_proj]  # SwiGLU

    def _adapted_classes(self):
        from sls_fast.models.families._hf_adapted import ConvpassDinov2Layer, Dinov2Layer, RepAdapterDinov2Layer

        return Dinov2Layer, {"convpass": ConvpassDinov2Layer, "repadapter": RepAdapterDinov2Layer}


class HFDinov2RegistersFamily(HFDinov2Family):
    """transformers DINOv2 with registers (``Dinov2WithRegistersModel`` /
    ``...ForImageClassification``): DINOv2's layers, with ``num_register_tokens`` after the class
    token; the classifier reads ``[class token, mean of the patch tokens]``, registers left out."""

    name = "hf-dinov2-registers"
    models = "Dinov2WithRegistersModel, Dinov2WithRegistersForImageClassification (transformers)"
    layout = "model.dinov2_with_registers.encoder.layer[i]"
    model_types = ("dinov2_with_registers",)
    backbone_attr = "dinov2_with_registers"
    head_class = "Dinov2WithRegistersForImageClassification"

    def _registers(self, model) -> int:
        return int(getattr(self.backbone(model)[0].config, "num_register_tokens", 0) or 0)

    def num_prefix_tokens(self, model):
        return 1 + self._registers(model)

    def head_input(self, model, last_hidden_state):
        start = 1 + self._registers(model)
        return torch.cat([last_hidden_state[:, 0], last_hidden_state[:, start:].mean(dim=1)],
                         dim=1)

    def _adapted_classes(self):
        from sls_fast.models.families._hf_adapted import (ConvpassDinov2RegistersLayer,
                                                          Dinov2WithRegistersLayer,
                                                          RepAdapterDinov2RegistersLayer)

        return Dinov2WithRegistersLayer, {"convpass": ConvpassDinov2RegistersLayer,
                                          "repadapter": RepAdapterDinov2RegistersLayer}
