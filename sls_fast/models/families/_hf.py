"""What the Hugging Face transformers families share (``hf-vit``, ``hf-dinov2``, ``hf-clip``).

A transformers vision model is a backbone (the model itself, or ``model.vit`` / ``model.dinov2`` /
``model.vision_model``) whose encoder layers are SLS's blocks, plus for classifiers a
``classifier`` linear layer. Each family module says only what differs: the model types, the
backbone attribute, where the layers are, the layer's attribute names (for the adapters and the
RepAdapter merge), the LoRA targets and the head rule (what the classifier reads from the final
hidden states: the class token for ViT, [class token, mean of patch tokens] for DINOv2, the mean
of patch tokens for CLIP). The rest is here:

* the feature: the class token of each layer's output before the final norm, which is
  ``hidden_states[i + 1][:, 0]``; extraction hooks the layers and stops after the last requested;
* truncation: slice the layer list, set ``num_hidden_layers`` in the (vision) config, and put a
  ``classifier`` of the requested width on the family's head input;
* adapters: LoRA through peft on any layout, Convpass beside and RepAdapter before attention and
  MLP through layer subclasses defined at import (:mod:`sls_fast.models.families._hf_adapted`);
* :func:`load_hf`: a model from a local folder (``config.json`` + weights), never from the hub.

transformers is optional (``pip install "sls_fast[hf]"``): nothing here imports it before a model
is loaded or adapted; :meth:`HFFamily.detect` reads ``model.config.model_type``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from sls_fast.models.families.base import Block, Family

__all__ = ["HFFamily", "load_hf"]

# torchvision / timm constants (transformers' IMAGENET_DEFAULT_* and OPENAI_CLIP_*)
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _config(model: nn.Module) -> Any:
    """``model.config``, transformers' configuration (a plain attribute, which nn.Module's typed
    ``__getattr__`` would call a tensor or a module)."""
    return model.config


class HFFamily(Family):
    """Base of the transformers families; subclasses set the class attributes below and
    :meth:`head_input`.

    Class attributes:
        model_types: ``config.model_type`` values of the family.
        backbone_attr: the backbone's attribute in a classifier (``vit``, ``dinov2``, ...).
        layer_paths: where the encoder layers may be inside the backbone, first match wins.
        lora_candidates: target sets (paths inside a layer), the first one a model's layer has
            is its default (transformers 5, 4.x and variant layouts).
        attn_attr: the layer's attention module (its ``q_proj`` / ``k_proj`` / ``v_proj`` take
            the RepAdapter merge).
        head_classes: the classifier class, for error messages.
        mean_std: input normalisation when the folder has no ``preprocessor_config.json``.
    """

    model_types: Tuple[str, ...] = ()
    backbone_attr: str = ""
    layer_paths: Tuple[str, ...] = ()
    lora_candidates: Tuple[Tuple[str, ...], ...] = ()
    attn_attr: str = "attention"
    head_class: str = ""
    mean_std = HALF_MEAN_STD
    adapter_kinds = ("convpass", "repadapter", "lora")

    # ------------------------------------------------------------------ structure
    def backbone(self, model: nn.Module) -> Tuple[nn.Module, str]:
        """The backbone (the model itself, or ``model.<backbone_attr>``) and its path prefix."""
        inner = getattr(model, self.backbone_attr, None)
        if isinstance(inner, nn.Module) and hasattr(inner, "embeddings"):
            return inner, f"{self.backbone_attr}."
        return model, ""

    def _layers(self, backbone: nn.Module):
        """(the ModuleList of encoder layers, its path inside the backbone), or (None, None)."""
        for path in self.layer_paths:
            try:
                layers = backbone.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(layers, nn.ModuleList):
                return layers, path
        return None, None

    def detect(self, model):
        cfg = getattr(model, "config", None)
        if getattr(cfg, "model_type", None) not in self.model_types:
            return False
        if hasattr(model, "text_model"):  # a two-tower model (CLIPModel): not an image classifier
            return False
        return self._layers(self.backbone(model)[0])[0] is not None

    def blocks(self, model):
        backbone, pre = self.backbone(model)
        layers, path = self._layers(backbone)
        return [Block(f"{pre}{path}.{i}", b, 0, i) for i, b in enumerate(layers)]

    def default_pool(self, model):
        return "cls"

    def num_prefix_tokens(self, model):
        return 1  # the class token (DeiT and DINOv2 with registers say more)

    # ------------------------------------------------------------------ head
    def head_input(self, model: nn.Module, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """What the classifier reads from the backbone's ``last_hidden_state`` ``[B, T, D]``."""
        raise NotImplementedError

    def head_width(self, model: nn.Module) -> int:
        """The classifier's input width (the hidden size unless :meth:`head_input` widens it)."""
        return int(_config(self.backbone(model)[0]).hidden_size)

    def num_classes(self, model):
        clf = getattr(model, "classifier", None)
        return int(clf.out_features) if isinstance(clf, nn.Linear) else 0

    def pre_logits(self, model, x):
        return self.head_input(model, self.backbone(model)[0](x).last_hidden_state)

    def reset_head(self, model, num_classes):
        if not isinstance(getattr(model, "classifier", None), nn.Module):
            raise TypeError(f"{type(model).__name__} has no classifier to set: use "
                            f"{self.head_class} (sls_fast.models.load('hf:FOLDER') loads a "
                            "folder of the whole model as one)")
        p = next(iter(model.parameters()))
        model.classifier = nn.Linear(self.head_width(model), int(num_classes)).to(
            device=p.device, dtype=p.dtype)
        model.config.num_labels = int(num_classes)
        model.num_labels = int(num_classes)

    # ------------------------------------------------------------------ truncation
    def truncate(self, model, depth, num_classes):
        backbone, _ = self.backbone(model)
        layers, path = self._layers(backbone)
        owner, _, attr = path.rpartition(".")
        setattr(backbone.get_submodule(owner) if owner else backbone, attr,
                nn.ModuleList(list(layers)[:depth]))
        backbone.config.num_hidden_layers = depth
        outer = model.config
        if outer is not backbone.config:  # a classifier's config: its vision part, or itself
            getattr(outer, "vision_config", outer).num_hidden_layers = depth
        if num_classes != self.num_classes(model):
            self.reset_head(model, num_classes)
            return [], True
        return [], False

    # ------------------------------------------------------------------ adapters
    def default_lora_targets(self, model):
        first = self.blocks(model)[0].module
        names = {n for n, _ in first.named_modules()}
        for cand in self.lora_candidates:
            if all(t in names for t in cand):
                return cand
        raise ValueError(f"{type(first).__name__} has none of the known LoRA target sets "
                         f"{self.lora_candidates}; pass targets=[...] (paths inside a layer)")

    @property
    def lora_targets(self):
        return self.lora_candidates[0]

    def _adapted_classes(self) -> Tuple[type, Dict[str, type]]:
        """(transformers' layer class, {kind: its adapted subclass}) (imports transformers)."""
        raise NotImplementedError

    def _merge_linears(self, blk: nn.Module):
        """(the attention's q/k/v linears, the MLP's input linears): the RepAdapter merge targets;
        AttributeError when the layer has another layout (transformers 4.x)."""
        attn = blk.get_submodule(self.attn_attr)
        layer: Any = blk  # a transformers layer: its MLP is an attribute
        return [attn.q_proj, attn.k_proj, attn.v_proj], self._mlp_inputs(layer.mlp)

    def _mlp_inputs(self, mlp: nn.Module):
        """The linears that read the MLP's input (RepAdapter's ``adapter_mlp`` folds into them)."""
        return [mlp.fc1]

    def insert_adapters(self, model, kind, layers: Sequence[int], *, dim, scale, dropout, groups,
                        targets=None):
        self.check_adapter_kind(kind)
        if kind == "lora":
            self.insert_lora(model, layers, rank=dim, alpha=scale, dropout=dropout,
                             targets=targets)
            return
        from sls_fast.models.petl.modules import Convpass, RepAdapter
        from sls_fast.models.families._transformer import attach_block_adapters

        base, adapted = self._adapted_classes()
        blocks = self.blocks(model)
        for i in layers:
            blk = blocks[i].module
            try:
                self._merge_linears(blk)
                ok = type(blk) is base
            except AttributeError:
                ok = False
            if not ok:
                raise TypeError(f"{kind} adapters go into transformers 5's {base.__name__}; "
                                f"{blocks[i].name} is {type(blk).__name__} of another layout "
                                "(LoRA works on every layout)")
        backbone, _ = self.backbone(model)
        cfg = _config(backbone)
        grid = (cfg.image_size // cfg.patch_size,) * 2  # other sizes: a square grid is inferred
        p = next(iter(model.parameters()))
        prefix = self.num_prefix_tokens(model)
        if kind == "convpass":
            def make():
                return Convpass(cfg.hidden_size, dim, num_prefix_tokens=prefix, grid_size=grid,
                                dropout=dropout, scale=scale)
        else:
            def make():
                return RepAdapter(cfg.hidden_size, dim, groups=groups, scale=scale, dropout=dropout)
        for i in layers:
            attach_block_adapters(blocks[i].module, make, adapted[kind], p)

    def merge_adapters(self, model):
        from sls_fast.models.petl.modules import RepAdapter
        from sls_fast.models.families._transformer import fold_block_adapters

        for b in self.blocks(model):
            blk = b.module
            if not isinstance(getattr(blk, "adapter_attn", None), RepAdapter):
                continue
            fold_block_adapters(blk, *self._merge_linears(blk))

    # ------------------------------------------------------------------ loading
    def model_class(self, transformers, cfg, num_classes: Optional[int]):
        """The transformers class a folder of this family loads as: the family's classifier (the
        folder's head, or a fresh one when the folder holds a backbone only), since SLS cuts and
        retrains a classifier."""
        return transformers.AutoModelForImageClassification


def load_hf(path: str, *, families: Sequence["Family"], num_classes: Optional[int] = None) -> nn.Module:
    """A transformers vision model from a local folder (``config.json`` + weights), never from the
    hub. The folder's ``config.model_type`` picks the family, which loads it as its classifier
    (``ViTForImageClassification``, ``Dinov2ForImageClassification``,
    ``CLIPForImageClassification``), also from a backbone-only folder (``ViTModel``,
    ``Dinov2Model``, the two-tower ``CLIPModel``): the folder's head when it has one, a fresh one
    otherwise (``num_classes`` wide when given, else the config's ``num_labels``). A CLIP
    vision-tower folder (``clip_vision_model``) loads as ``CLIPVisionModel``, without a head.
    In eval mode, with a timm-style ``pretrained_cfg`` (input size, mean, std from
    ``preprocessor_config.json``).

    Example:
        >>> m = load_hf("vit-in21k", num_classes=10)   # doctest: +SKIP
    """
    import os

    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"hf:{path} must be a local folder with config.json and the weights "
                         "(save_pretrained output); sls_fast never downloads from the hub")
    try:
        import transformers
    except ImportError:
        raise ImportError('hf: models need transformers: pip install "sls_fast[hf]"') from None
    cfg = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    fams = [f for f in families if isinstance(f, HFFamily)]  # the registry's, in its order
    fam = next((f for f in fams if cfg.model_type in f.model_types), None)
    if fam is None:
        known = ", ".join(t for f in fams for t in f.model_types)
        raise ValueError(f"hf:{path} is a {cfg.model_type!r} model; sls_fast's transformers "
                         f"families take {known}")
    cls = fam.model_class(transformers, cfg, num_classes)
    kw = {}
    if num_classes is not None:
        kw = dict(num_labels=int(num_classes), ignore_mismatched_sizes=True)
    model = cls.from_pretrained(path, local_files_only=True, **kw).eval()
    model.pretrained_cfg = _input_config(path, fam.backbone(model)[0].config, type(model).__name__,
                                         fam.mean_std)
    return model


def _input_config(path: str, cfg, arch: str, mean_std) -> dict:
    """timm-style ``pretrained_cfg`` (input size, mean, std) from the folder's
    ``preprocessor_config.json`` (its ``crop_size``, else ``size``, else the config's image size;
    the family's mean and std without one), so sls_fast's data sets normalise the way the model
    was trained."""
    import json
    import os

    pre = {}
    f = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(f):
        with open(f) as fh:
            pre = json.load(fh)
    size = int(getattr(cfg, "image_size", 224))
    for key in ("crop_size", "size"):
        v = pre.get(key)
        if isinstance(v, dict):
            v = v.get("height", v.get("shortest_edge"))
        if isinstance(v, int) and v > 0:
            size = v
            break
    return dict(architecture=arch, input_size=(3, size, size),
                mean=tuple(pre.get("image_mean", mean_std[0])),
                std=tuple(pre.get("image_std", mean_std[1])), interpolation="bilinear")
