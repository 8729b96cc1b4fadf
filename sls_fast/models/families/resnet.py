"""ResNet: ``model.layer1..layer4[j]`` (timm's ResNet, ResNeXt, SE-ResNet...)."""
from __future__ import annotations

import torch.nn as nn

from sls_fast.models.families._conv import ConvFamily
from sls_fast.models.families.base import Block, is_container

__all__ = ["ResNetFamily"]

_STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNetFamily(ConvFamily):
    name = "resnet"
    models = "ResNet, ResNeXt, SE-ResNet (timm)"
    layout = "model.layer1..layer4[j]"
    adapter_kinds = ("convpass",)  # no linear layers in the blocks: no LoRA

    def detect(self, model):
        from timm.models.resnet import ResNet

        first = getattr(model, "layer1", None)
        return isinstance(model, ResNet) and is_container(first) and len(first) > 0 and all(
            is_container(getattr(model, s, None)) or isinstance(getattr(model, s, None), nn.Identity)
            for s in _STAGES)

    def blocks(self, model):
        out = []
        for s, stage in enumerate(_STAGES):
            layer = getattr(model, stage)
            if is_container(layer):  # a truncated ResNet has nn.Identity for deleted stages
                out += [Block(f"{stage}.{j}", b, s, j) for j, b in enumerate(layer)]
        return out

    def truncate(self, model, depth, num_classes):
        """Cut after block K inside its stage; later stages become ``nn.Identity`` (their
        parameters are gone); global pooling, then a new linear head of block K's width."""
        blocks = self.blocks(model)
        if depth == len(blocks):
            return [], self._set_head(model, num_classes)
        width = self.probe(model)[depth - 1].width
        s, j = blocks[depth - 1].stage, blocks[depth - 1].index + 1
        stage = getattr(model, _STAGES[s])
        setattr(model, _STAGES[s], stage[:j])
        for later in _STAGES[s + 1:]:
            setattr(model, later, nn.Identity())
        if hasattr(model, "feature_info"):
            model.feature_info = model.feature_info[:s + 2]  # stem + kept stages
        model.num_features = model.head_hidden_size = width
        model.reset_classifier(num_classes)
        return [], True
