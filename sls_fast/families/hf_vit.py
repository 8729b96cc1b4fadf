"""Hugging Face transformers ViT: ``ViTModel`` / ``ViTForImageClassification``.

The blocks are the encoder layers (``vit.layers[i]`` in transformers 5, ``vit.encoder.layer[i]``
in 4.x); the layer feature is the class token of each layer's output before the final layernorm,
which is ``outputs.hidden_states[i + 1][:, 0]``. Extraction hooks the layers and stops the forward
after the last requested one. Truncation slices the layer list, sets
``config.num_hidden_layers`` and gives ``ViTForImageClassification`` a classifier of the requested
width. Adapters: LoRA through peft on the attention projections and the MLP (any transformers
version); Convpass beside and RepAdapter before attention and MLP (transformers 5's ``ViTLayer``),
RepAdapter merged into ``q_proj`` / ``k_proj`` / ``v_proj`` and ``mlp.fc1``.

transformers is optional (``pip install "sls_fast[hf]"``); :meth:`HFViTFamily.detect` never
imports it (it reads ``model.config.model_type``).
"""
from __future__ import annotations

import torch.nn as nn

from .base import Block, Family

__all__ = ["HFViTFamily", "load_hf"]

_MODEL_TYPES = ("vit",)


def _backbone(model: nn.Module):
    """The ``ViTModel`` (the model itself, or ``model.vit``) and its path prefix."""
    inner = getattr(model, "vit", None)
    if isinstance(inner, nn.Module) and hasattr(inner, "embeddings"):
        return inner, "vit."
    return model, ""


def _layers(backbone: nn.Module):
    """(the ModuleList of encoder layers, its path inside the backbone)."""
    layers = getattr(backbone, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers, "layers"
    enc = getattr(backbone, "encoder", None)
    layers = getattr(enc, "layer", None)
    if isinstance(layers, nn.ModuleList):
        return layers, "encoder.layer"
    return None, None


class HFViTFamily(Family):
    name = "hf-vit"
    models = "ViTModel, ViTForImageClassification (transformers; 4.x: vit.encoder.layer[i])"
    layout = "model.vit.layers[i]"
    feature = "class token before the final layernorm (= hidden_states[i + 1][:, 0])"
    adapter_kinds = ("convpass", "repadapter", "lora")

    def detect(self, model):
        cfg = getattr(model, "config", None)
        if getattr(cfg, "model_type", None) not in _MODEL_TYPES:
            return False
        backbone, _ = _backbone(model)
        return _layers(backbone)[0] is not None

    def blocks(self, model):
        backbone, pre = _backbone(model)
        layers, path = _layers(backbone)
        return [Block(f"{pre}{path}.{i}", b, 0, i) for i, b in enumerate(layers)]

    def default_pool(self, model):
        return "cls"

    @property
    def lora_targets(self):
        """The encoder layer's linear layers (names of the installed transformers version)."""
        import transformers

        if int(transformers.__version__.split(".")[0]) >= 5:
            return ("attention.q_proj", "attention.k_proj", "attention.v_proj",
                    "attention.o_proj", "mlp.fc1", "mlp.fc2")
        return ("attention.attention.query", "attention.attention.key",
                "attention.attention.value", "attention.output.dense", "intermediate.dense",
                "output.dense")

    def insert_adapters(self, model, kind, layers, *, dim, scale, dropout, groups, targets=None):
        self.check_adapter_kind(kind)
        if kind == "lora":
            self.insert_lora(model, layers, rank=dim, alpha=scale, dropout=dropout,
                             targets=targets)
            return
        from ..petl import Convpass, RepAdapter

        blocks = self.blocks(model)
        for i in layers:
            if not hasattr(getattr(blocks[i].module, "attention", None), "q_proj"):
                raise TypeError(f"{kind} adapters on transformers ViT need transformers 5's "
                                f"ViTLayer; {blocks[i].name} is {type(blocks[i].module).__name__} "
                                "of an older layout (LoRA works on both)")
        from ._hf_adapted import ConvpassHFViTLayer, RepAdapterHFViTLayer, ViTLayer

        cfg = model.config
        grid = (cfg.image_size // cfg.patch_size,) * 2
        p = next(iter(model.parameters()))
        for i in layers:
            blk = blocks[i].module
            if type(blk) is not ViTLayer:
                raise TypeError(f"{kind} adapters go into transformers' ViTLayer; {blocks[i].name} "
                                f"is {type(blk).__name__}")
            for slot in ("adapter_attn", "adapter_mlp"):
                if kind == "convpass":
                    a = Convpass(cfg.hidden_size, dim, num_prefix_tokens=1, grid_size=grid,
                                 dropout=dropout, scale=scale)
                else:
                    a = RepAdapter(cfg.hidden_size, dim, groups=groups, scale=scale, dropout=dropout)
                setattr(blk, slot, a.to(device=p.device, dtype=p.dtype))
            blk.__class__ = ConvpassHFViTLayer if kind == "convpass" else RepAdapterHFViTLayer

    def merge_adapters(self, model):
        from ..petl import RepAdapter
        from ._transformer import _fold_into_linear

        for b in self.blocks(model):
            blk = b.module
            if not isinstance(getattr(blk, "adapter_attn", None), RepAdapter):
                continue
            for lin in (blk.attention.q_proj, blk.attention.k_proj, blk.attention.v_proj):
                _fold_into_linear(blk.adapter_attn, lin)
            _fold_into_linear(blk.adapter_mlp, blk.mlp.fc1)
            del blk.adapter_attn
            del blk.adapter_mlp
            blk.__class__ = type(blk).sls_base_class

    def num_classes(self, model):
        if not isinstance(getattr(model, "classifier", None), nn.Linear):
            return 0
        return int(model.classifier.out_features)

    def pre_logits(self, model, x):
        backbone, _ = _backbone(model)
        return backbone(x).last_hidden_state[:, 0]

    def reset_head(self, model, num_classes):
        clf = getattr(model, "classifier", None)
        if not isinstance(clf, nn.Module):
            raise TypeError(f"{type(model).__name__} has no classifier; load the model with "
                            "AutoModelForImageClassification (ViTForImageClassification) for a head")
        p = next(iter(model.parameters()))
        model.classifier = nn.Linear(model.config.hidden_size, int(num_classes)).to(
            device=p.device, dtype=p.dtype)
        model.config.num_labels = int(num_classes)
        model.num_labels = int(num_classes)

    def truncate(self, model, depth, num_classes):
        backbone, _ = _backbone(model)
        layers, path = _layers(backbone)
        owner = backbone.get_submodule(path.rpartition(".")[0]) if "." in path else backbone
        setattr(owner, path.rpartition(".")[2], nn.ModuleList(list(layers)[:depth]))
        model.config.num_hidden_layers = depth
        if backbone is not model:
            backbone.config.num_hidden_layers = depth
        if num_classes != self.num_classes(model):
            self.reset_head(model, num_classes)
            return [], True
        return [], False


def load_hf(path: str, *, num_classes=None) -> nn.Module:
    """A transformers ViT from a local folder (``config.json`` + weights), never from the hub:
    ``AutoModelForImageClassification`` when the folder's config names a classifier (or
    ``num_classes`` is given), else ``AutoModel``. In eval mode, with a timm-style
    ``pretrained_cfg`` (input size, mean, std from ``preprocessor_config.json``)."""
    import os

    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"hf:{path} must be a local folder with config.json and the weights "
                         "(save_pretrained output); sls_fast never downloads from the hub")
    try:
        import transformers
    except ImportError:
        raise ImportError('hf: models need transformers: pip install "sls_fast[hf]"') from None
    cfg = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(cfg, "model_type", None) not in _MODEL_TYPES:
        raise ValueError(f"hf:{path} is a {cfg.model_type!r} model; sls_fast's transformers family "
                         f"takes {', '.join(_MODEL_TYPES)}")
    archs = getattr(cfg, "architectures", None) or []
    kw = {}
    if num_classes is not None:
        kw = dict(num_labels=int(num_classes), ignore_mismatched_sizes=True)
    if num_classes is not None or any("ForImageClassification" in a for a in archs):
        cls = transformers.AutoModelForImageClassification
    else:
        cls = transformers.AutoModel
    model = cls.from_pretrained(path, local_files_only=True, **kw).eval()
    model.pretrained_cfg = _input_config(path, cfg, type(model).__name__)
    return model


def _input_config(path: str, cfg, arch: str) -> dict:
    """timm-style ``pretrained_cfg`` (input size, mean, std) from the folder's
    ``preprocessor_config.json`` (transformers' ViT defaults, mean = std = 0.5, without one), so
    sls_fast's data sets normalise the way the model was trained."""
    import json
    import os

    pre = {}
    f = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(f):
        with open(f) as fh:
            pre = json.load(fh)
    size = int(getattr(cfg, "image_size", 224))
    return dict(architecture=arch, input_size=(3, size, size),
                mean=tuple(pre.get("image_mean", (0.5, 0.5, 0.5))),
                std=tuple(pre.get("image_std", (0.5, 0.5, 0.5))), interpolation="bilinear")
