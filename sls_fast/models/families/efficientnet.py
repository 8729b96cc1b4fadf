"""EfficientNet / MobileNet: ``model.blocks[s][j]`` (timm's _efficientnet_blocks)."""
from __future__ import annotations

import torch.nn as nn

from sls_fast.models.families._conv import ConvFamily
from sls_fast.models.families.base import Block, is_container

__all__ = ["EfficientNetFamily"]


class EfficientNetFamily(ConvFamily):
    name = "efficientnet"
    models = "EfficientNet, EfficientNet-Lite, MobileNet (timm)"
    layout = "model.blocks[s][j]"
    adapter_kinds = ("convpass",)  # no linear layers in the blocks: no LoRA

    def detect(self, model):
        from timm.models.efficientnet import EfficientNet
        from timm.models.mobilenetv3 import MobileNetV3

        blocks = getattr(model, "blocks", None)
        return isinstance(model, (EfficientNet, MobileNetV3)) and is_container(blocks) and len(blocks) > 0 and all(is_container(s) for s in blocks)

    def blocks(self, model):
        return [Block(f"blocks.{s}.{j}", b, s, j)
                for s, stage in enumerate(model.blocks) for j, b in enumerate(stage)]

    def truncate(self, model, depth, num_classes):
        """Cut after block K inside its stage; delete later blocks and stages and the head
        convolution (``conv_head`` + ``bn2``, whose input width no longer matches); global
        pooling, then a new linear head of block K's width."""
        blocks = self.blocks(model)
        if depth == len(blocks):
            return [], self._set_head(model, num_classes)
        width = self.probe(model)[depth - 1].width
        s, j = blocks[depth - 1].stage, blocks[depth - 1].index + 1
        model.blocks[s] = model.blocks[s][:j]
        model.blocks = model.blocks[:s + 1]
        if hasattr(model, "stage_ends"):
            model.stage_ends = [e for e in model.stage_ends if e <= s + 1]
        model.conv_head = nn.Identity()
        for later in ("bn2", "norm_head"):  # EfficientNet's / MobileNetV3-V4's head norm
            if hasattr(model, later):
                setattr(model, later, nn.Identity())
        model.num_features = model.head_hidden_size = width
        model.reset_classifier(num_classes)
        return [], True
