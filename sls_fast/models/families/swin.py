"""Swin: ``model.layers[s].blocks[j]``, NHWC token maps, the mean over positions as the feature."""
from __future__ import annotations

from sls_fast.models.families._transformer import TransformerFamily, new_like_norm
from sls_fast.models.families.base import Block, is_container
from sls_fast.models.families.probe import stage_cut

__all__ = ["SwinFamily"]


class SwinFamily(TransformerFamily):
    name = "swin"
    models = "Swin Transformer (timm)"
    layout = "model.layers[s].blocks[j]"
    # The authors' Swin Convpass carries an extra channel attention: no layout of ours matches it.
    reference_keys = {"repadapter": []}

    def detect(self, model):
        from timm.models.swin_transformer import SwinTransformer

        layers = getattr(model, "layers", None)
        return (isinstance(model, SwinTransformer) and is_container(layers) and len(layers) > 0
                and all(hasattr(s, "blocks") for s in layers))

    def blocks(self, model):
        return [Block(f"layers.{s}.blocks.{j}", b, s, j)
                for s, stage in enumerate(model.layers) for j, b in enumerate(stage.blocks)]

    def merged_pool_modules(self, model, modules):
        """``pool="merged"``: for each block module, the PatchMerging that follows its stage
        (timm keeps it at the start of the next stage, ``layers[s + 1].downsample``), or
        ``None`` for the last stage. This is what the authors pool for Swin
        (``visualization.py``, their ``forward_Swin_features``): every block of stages 1-3 is
        scored on ``avgpool(downsample(x))``, width 2C, the last stage on its raw output."""
        stages = list(model.layers)
        where = {id(b): s for s, st in enumerate(stages) for b in st.blocks}
        out = []
        for m in modules:
            if id(m) not in where:
                raise ValueError("pool='merged' works on the Swin blocks themselves; drop layers=")
            s = where[id(m)]
            out.append(stages[s + 1].downsample if s + 1 < len(stages) else None)
        return out

    def _block_classes(self):
        from timm.models.swin_transformer import SwinTransformerBlock

        from sls_fast.models.families._adapted import ConvpassSwinBlock, RepAdapterSwinBlock

        return SwinTransformerBlock, {"convpass": ConvpassSwinBlock, "repadapter": RepAdapterSwinBlock}

    def truncate(self, model, depth, num_classes):
        """K counts blocks across stages; the cut falls inside stage s (its patch merging kept),
        later stages are deleted. When stage s is narrower than the final width, the final norm
        and the head are new modules of stage s's width."""
        blocks = self.blocks(model)
        new, fresh = [], False
        if depth < len(blocks):
            width = self.probe(model)[depth - 1].width
            s, j = stage_cut([len(st.blocks) for st in model.layers], depth)
            model.layers[s].blocks = model.layers[s].blocks[:j]
            model.layers = model.layers[:s + 1]
            if hasattr(model, "_ref_window_sizes"):
                model._ref_window_sizes = model._ref_window_sizes[:s + 1]
            if hasattr(model, "feature_info"):
                model.feature_info = model.feature_info[:s + 1]
            if width != model.num_features:
                ref = next(iter(model.parameters()))
                model.norm = new_like_norm(model.norm, width, ref)
                model.num_features = model.head_hidden_size = width
                if hasattr(model.head, "in_features"):  # timm <= 1.0.29 resets the head from it
                    model.head.in_features = width
                model.reset_classifier(num_classes)
                new.append("norm")
                fresh = True
        return new, self._set_head(model, num_classes) or fresh
