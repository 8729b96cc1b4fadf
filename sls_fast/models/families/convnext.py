"""ConvNeXt and other staged models: ``model.stages[s].blocks[j]``."""
from __future__ import annotations

import torch.nn as nn

from sls_fast.models.families._conv import ConvFamily
from sls_fast.models.families.base import Block, is_container

__all__ = ["ConvNeXtFamily"]


class ConvNeXtFamily(ConvFamily):
    name = "convnext"
    models = "ConvNeXt (timm)"
    layout = "model.stages[s].blocks[j]"

    def detect(self, model):
        from timm.models.convnext import ConvNeXt

        stages = getattr(model, "stages", None)
        return (isinstance(model, ConvNeXt) and is_container(stages) and len(stages) > 0
                and all(hasattr(s, "blocks") for s in stages))

    def blocks(self, model):
        return [Block(f"stages.{s}.blocks.{j}", b, s, j)
                for s, stage in enumerate(model.stages) for j, b in enumerate(stage.blocks)]

    def truncate(self, model, depth, num_classes):
        """Cut after block K inside its stage, delete later blocks and stages; when the width
        changes, the head (norm + pooling + linear) is a new ``NormMlpClassifierHead``."""
        blocks = self.blocks(model)
        if depth == len(blocks):
            return [], self._set_head(model, num_classes)
        from timm.layers import NormMlpClassifierHead

        width = self.probe(model)[depth - 1].width
        s, j = blocks[depth - 1].stage, blocks[depth - 1].index + 1
        model.stages[s].blocks = model.stages[s].blocks[:j]
        model.stages = model.stages[:s + 1]
        if hasattr(model, "feature_info"):
            model.feature_info = model.feature_info[:s + 1]
        new = []
        if width != model.num_features:
            ref = next(iter(model.parameters()))
            old = model.head
            model.norm_pre = nn.Identity()
            norm_layer = type(getattr(old, "norm", nn.Identity()))
            if norm_layer is nn.Identity:
                norm_layer = nn.LayerNorm
            model.head = NormMlpClassifierHead(
                width, num_classes, pool_type=getattr(old.global_pool, "pool_type", "avg"),
                drop_rate=getattr(getattr(old, "drop", None), "p", 0.0),
                norm_layer=norm_layer).to(device=ref.device, dtype=ref.dtype)
            model.num_features = model.head_hidden_size = width
            new.append("head")
        self._set_head(model, num_classes)
        return new, True
