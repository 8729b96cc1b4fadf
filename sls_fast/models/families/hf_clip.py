"""Hugging Face transformers CLIP vision tower: ``CLIPVisionModel``,
``CLIPVisionModelWithProjection`` and ``CLIPForImageClassification`` (not the two-tower
``CLIPModel``: an ``hf:`` folder of one loads as ``CLIPForImageClassification``, its vision tower
and a fresh classifier).

CLIP is pre-norm with other names: ``embeddings`` -> ``pre_layrnorm`` -> ``encoder.layers[i]``
(``self_attn.q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``, ``layer_norm1`` / ``layer_norm2``,
``mlp.fc1`` / ``fc2``) -> ``post_layernorm`` on the class token. The blocks are the encoder
layers; the layer feature is the class token of each layer's output before ``post_layernorm``
(``hidden_states[i + 1][:, 0]``). The head rule is ``CLIPForImageClassification``'s: the
classifier reads the mean of the patch tokens of the last layer's output (no norm), ``hidden``
wide; ``CLIPVisionModel`` has no classifier (truncation keeps it head-less). Adapters: LoRA on
the attention projections and the MLP; Convpass beside and RepAdapter before attention and MLP,
RepAdapter merged into ``q_proj`` / ``k_proj`` / ``v_proj`` and ``mlp.fc1``. Shared code:
:mod:`sls_fast.models.families._hf`.
"""
from __future__ import annotations

from sls_fast.models.families._hf import HFFamily

__all__ = ["HFCLIPFamily"]

OPENAI_CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


class HFCLIPFamily(HFFamily):
    name = "hf-clip"
    models = "CLIPVisionModel, CLIPVisionModelWithProjection, CLIPForImageClassification (transformers)"
    layout = "model.vision_model.encoder.layers[i]"
    feature = "class token before post_layernorm (= hidden_states[i + 1][:, 0])"
    model_types = ("clip", "clip_vision_model")
    backbone_attr = "vision_model"
    layer_paths = ("encoder.layers",)
    lora_candidates = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                        "self_attn.out_proj", "mlp.fc1", "mlp.fc2"),)
    attn_attr = "self_attn"
    head_class = "CLIPForImageClassification"
    mean_std = OPENAI_CLIP_MEAN_STD

    def head_input(self, model, last_hidden_state):
        """The mean of the patch tokens, as ``CLIPForImageClassification`` reads them."""
        return last_hidden_state[:, 1:].mean(dim=1)

    def model_class(self, transformers, cfg, num_classes):
        if cfg.model_type == "clip":  # CLIPModel or CLIPForImageClassification: the vision tower
            return transformers.CLIPForImageClassification  # and a classifier
        if num_classes is not None:
            raise ValueError("a CLIP vision-tower folder (clip_vision_model) has no classifier "
                             "layout; save the whole CLIPModel (or CLIPForImageClassification) "
                             "for a model with a classifier")
        return transformers.CLIPVisionModel

    def _adapted_classes(self):
        from sls_fast.models.families._hf_adapted import CLIPEncoderLayer, ConvpassCLIPLayer, RepAdapterCLIPLayer

        return CLIPEncoderLayer, {"convpass": ConvpassCLIPLayer, "repadapter": RepAdapterCLIPLayer}
