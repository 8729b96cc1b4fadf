"""Parameter-efficient adapters on any supported model: add, merge, freeze, count.

The adapter modules themselves are in :mod:`sls_fast.models.petl.modules` (Convpass, its feature-map variant,
RepAdapter); where they go inside a block is decided by the model's family
(:meth:`sls_fast.models.families.Family.insert_adapters`). Every base weight keeps its state-dict key;
adapters are submodules whose names start with ``adapter``. The configuration is recorded in the
model's :class:`sls_fast.models.state.SLSState` (``model.sls_state.adapters``).
"""
from __future__ import annotations

import warnings

from typing import Dict, List, Optional, Sequence, Union

import torch.nn as nn

from sls_fast.models.families import FAMILIES, Block, ensure_state, family_of
from sls_fast.models.petl.lora import ADAPTER_NAME, _replace, is_peft_wrapper, lora_layers, merge_lora
from sls_fast.models.petl.modules import Convpass, ConvpassConv, QuickGELU, RepAdapter, adapter_parts
from sls_fast.models.state import AdapterConfig, classifier_name, get_state

__all__ = [
    "QuickGELU",
    "Convpass",
    "ConvpassConv",
    "RepAdapter",
    "add_adapters",
    "merge_adapters",
    "trainable_parameters",
    "adapter_modules",
    "adapter_kinds",
    "set_trainable",
    "adopt_peft",
]

DEFAULT_DIM = 8  # the bottleneck width (LoRA: the rank)
DEFAULT_SCALE = 1.0
LORA_ALPHA = 16.0


def adapter_kinds() -> tuple:
    """Every adapter kind some registered family accepts (``("convpass", "repadapter")``)."""
    return tuple(sorted({k for f in FAMILIES for k in f.adapter_kinds}))


def adapter_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """{module path: adapter} for every Convpass / ConvpassConv / RepAdapter in ``model`` and the
    trainable parts of its peft LoRA layers (``lora_A`` / ``lora_B``)."""
    return adapter_parts(model)


def _resolve_layers(blocks: List[Block], layers) -> List[int]:
    L = len(blocks)
    if layers is None:
        return list(range(L))
    out = []
    names = {b.name: i for i, b in enumerate(blocks)}
    for l in layers:
        if isinstance(l, str):
            if l not in names:
                raise ValueError(f"unknown block {l!r}; blocks are {list(names)[:4]}...")
            out.append(names[l])
        elif isinstance(l, int) and not isinstance(l, bool):
            i = l + L if l < 0 else l
            if not 0 <= i < L:
                raise ValueError(f"block index {l} out of range for {L} blocks (0-based)")
            out.append(i)
        else:
            raise TypeError(f"layers must hold block indices (int, 0-based) or names, got {l!r}")
    return sorted(set(out))


def set_trainable(model: nn.Module) -> List[str]:
    """Freeze everything, then unfreeze what the family says trains (adapters, classifier,
    modules new from truncation). Returns those module paths."""
    names = family_of(model).trainable(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        for p in model.get_submodule(n).parameters():
            p.requires_grad_(True)
    return names


def add_adapters(model: nn.Module, kind: str = "convpass", dim: int = DEFAULT_DIM, scale: Optional[float] = None,
                 layers: Optional[Sequence[Union[int, str]]] = None, *, dropout: Optional[float] = None,
                 groups: int = 2, num_classes: Optional[int] = None, freeze: bool = True,
                 rank: Optional[int] = None, lora_alpha: Optional[float] = None,
                 targets: Optional[Sequence[str]] = None,
                 alpha: Optional[float] = None) -> nn.Module:
    """Insert Convpass, RepAdapter or LoRA adapters into ``model``'s blocks, in place; returns
    ``model``.

    Args:
        model: a model of a supported family (:func:`sls_fast.models.families.support_table`): timm
            ViT/DeiT (``vision_transformer.Block``), Swin, EfficientNet/MobileNet, ConvNeXt,
            ResNet, or the generic family (Convpass beside / RepAdapter before whole blocks as
            their probed layout allows, LoRA on their linear layers). EfficientNet and ResNet
            take only ``kind="convpass"`` (the feature-map variant, parallel to each block).
        kind: ``"convpass"``, ``"repadapter"`` or ``"lora"`` (peft's LoRA, :mod:`sls_fast.models.petl.lora`;
            needs ``pip install "sls_fast[peft]"``).
        dim: bottleneck width (8 in the paper); for LoRA the rank (also ``rank=``).
        scale: the adapters' output scale ``s`` (default 1.0); for LoRA peft's ``lora_alpha``
            (also ``lora_alpha=``, default 16: the update is scaled by lora_alpha / rank).
        layers: blocks to adapt (0-based indices into :func:`sls_fast.models.families.find_blocks` or
            block names); all blocks by default.
        dropout: adapter dropout (default: 0.1 for transformer adapters as in the references, 0 for
            conv Convpass).
        groups: RepAdapter groups of the up-projection (2 in the paper).
        num_classes: if given, the classifier is replaced by a new one with that many classes
            (trained from its random init together with the adapters; :func:`sls_fast.finetune`
            probe-initialises only heads that :func:`sls_fast.truncate` creates).
        rank, lora_alpha: LoRA's rank and peft's lora_alpha (aliases of ``dim`` and ``scale``).
        alpha: deprecated name of ``lora_alpha`` (``alpha`` is SLS's threshold everywhere
            else); accepted with a DeprecationWarning until the next version.
        targets: LoRA only: the linear layers inside each block to adapt (default: the family's
            ``lora_targets``, for timm ViT / Swin ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``).
        freeze: freeze the backbone (``requires_grad=False``, batch norms converted to timm's
            ``FrozenBatchNorm2d`` so their statistics never change): only adapters and the head train.

    Adapters start as an identity: the adapted model's outputs equal the base model's.
    The configuration is recorded in ``model.sls_state.adapters``. A model the user already
    wrapped with peft (``get_peft_model``) is not adapted again: pass it to
    :func:`sls_fast.truncate` / :func:`sls_fast.score_layers` as it is
    (:func:`adopt_peft`).

    Example:
        >>> import timm, sls_fast
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> m = sls_fast.add_adapters(m, "convpass", dim=8, num_classes=10)
        >>> sls_fast.trainable_parameters(m)["trainable"] < 0.1 * sls_fast.trainable_parameters(m)["total"]
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"add_adapters needs an nn.Module, got {type(model).__name__}")
    if is_peft_wrapper(model):
        raise ValueError("this model is already wrapped by peft: pass it to sls_fast as it is "
                         "(sls_fast.models.adapters.adopt_peft(model) gives the adapted model inside)")
    if kind not in adapter_kinds():
        raise ValueError(f"kind must be one of {adapter_kinds()}, got {kind!r}")
    if alpha is not None:
        warnings.warn("add_adapters(alpha=...) is now lora_alpha=... (alpha is SLS's threshold "
                      "everywhere else); alpha= goes in the next version", DeprecationWarning,
                      stacklevel=2)
        lora_alpha = alpha if lora_alpha is None else lora_alpha
    if rank is not None:
        dim = rank
    if lora_alpha is not None:
        scale = lora_alpha
    if targets is not None and kind != "lora":
        raise ValueError(f"targets= is a LoRA option; {kind} adapters go where the family puts them")
    st = get_state(model)
    if st is not None and st.adapters is not None:
        raise ValueError(f"model already has {st.adapters.kind} adapters; add them once")
    if st is not None and st.pruned:
        raise ValueError("add adapters before truncate(), not after (the pruned model is rebuilt from "
                         "the base model in that order)")
    if isinstance(dim, bool) or int(dim) < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    fam = family_of(model)
    fam.check_adapter_kind(kind)
    scale = (LORA_ALPHA if kind == "lora" else DEFAULT_SCALE) if scale is None else float(scale)
    dropout = fam.default_dropout(kind) if dropout is None else float(dropout)
    idx = _resolve_layers(fam.blocks(model), layers)
    st = ensure_state(model)
    extra = {}
    if kind == "lora":
        extra["targets"] = list(targets or fam.default_lora_targets(model))
    fam.insert_adapters(model, kind, idx, dim=int(dim), scale=scale, dropout=dropout,
                        groups=int(groups), **extra)
    for a in adapter_modules(model).values():  # new adapters follow the model's mode
        a.train(model.training)
    if num_classes is not None:
        fam.reset_head(model, int(num_classes))
    st.adapters = AdapterConfig(kind=kind, dim=int(dim), scale=scale, layers=idx, dropout=dropout,
                                groups=int(groups), targets=extra.get("targets"))
    if freeze:
        from timm.layers import freeze_batch_norm_2d

        freeze_batch_norm_2d(model)
        set_trainable(model)
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every RepAdapter into the following ``attn.qkv`` / ``mlp.fc1``, or merge every LoRA
    layer into its base weight through peft's own ``merge`` (in place; returns model; a peft
    wrapper gives back the merged model inside it).

    ``qkv(A(x)) = W (M x + c) + b = (W M) x + (W c + b)`` with ``A(x) = M x + c`` the adapter in eval
    mode (dropout off). The adapter modules are removed and the blocks get their base class back:
    the merged model has the base model's parameter count (a ``qkv`` / ``fc1`` without bias gains
    one) and the same outputs (float64 fold, ~1e-6 in float32). Swin caveat: when the feature map
    is padded to a multiple of the window, padded tokens see ``W c + b`` instead of ``b``; merge is
    exact when H and W are multiples of the window size (the usual case).

    Example:
        >>> import timm, sls_fast
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> m = sls_fast.add_adapters(m, "repadapter")
        >>> m = sls_fast.merge_adapters(m)
        >>> len(sls_fast.models.adapters.adapter_modules(m))
        0
    """
    model = adopt_peft(model)
    st = get_state(model)
    cfg = st.adapters if st is not None else None
    if cfg is None or cfg.merged:
        raise ValueError("merge_adapters: the model has no adapters (call add_adapters first)")
    if cfg.kind == "lora":
        merge_lora(model)
    elif cfg.kind == "repadapter":
        family_of(model).merge_adapters(model)
    else:
        raise ValueError(f"only RepAdapter and LoRA can be merged (linear at inference); this "
                         f"model has {cfg.kind} adapters")
    cfg.merged = True
    return model


def trainable_parameters(model: nn.Module) -> Dict[str, int]:
    """Parameter counts: ``total``, ``trainable`` (requires_grad), ``adapters``, ``head``, ``frozen``.

    Example:
        >>> import torch.nn as nn
        >>> trainable_parameters(nn.Linear(4, 2))["total"]
        10
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = sum(p.numel() for m in adapter_modules(model).values() for p in m.parameters())
    clf = classifier_name(model)
    head = sum(p.numel() for p in model.get_submodule(clf).parameters()) if clf else 0
    return dict(total=total, trainable=trainable, frozen=total - trainable, adapters=adapters, head=head)


def adopt_peft(model: nn.Module, blocks: Optional[Sequence[str]] = None) -> nn.Module:
    """The model inside a peft wrapper, ready for sls_fast (in place; returns it).

    ``modules_to_save`` wrappers are replaced by their trained copy, and the LoRA configuration
    (rank, alpha, dropout, adapted blocks, targets relative to a block) is recorded in
    ``model.sls_state``. A model that is not a peft wrapper is returned unchanged.

    Raises ValueError for what sls_fast cannot rebuild on a fresh base: several adapters, an
    adapter not named "default", LoRA outside the blocks, or a non-LoRA peft method.
    """
    if not is_peft_wrapper(model):
        return model
    from peft.utils import ModulesToSaveWrapper

    cfgs = dict(getattr(model, "peft_config", {}) or {})
    if len(cfgs) != 1:
        raise ValueError(f"sls_fast takes a peft model with one adapter; this one has {sorted(cfgs)}")
    (adapter, cfg), = cfgs.items()
    if type(cfg).__name__ != "LoraConfig":
        raise ValueError(f"sls_fast takes LoRA peft models; this adapter is {type(cfg).__name__}")
    if adapter != ADAPTER_NAME:
        raise ValueError(f"the peft adapter is named {adapter!r}; sls_fast artifacts use peft's "
                         f"default name {ADAPTER_NAME!r} (rename it when you create it)")
    if getattr(cfg, "rank_pattern", None) or getattr(cfg, "alpha_pattern", None):
        raise ValueError("sls_fast needs one LoRA rank and alpha for all layers (rank_pattern / "
                         "alpha_pattern are set)")
    inner = model.get_base_model()  # type: ignore[operator]  # peft's method
    for name, m in list(inner.named_modules()):
        if isinstance(m, ModulesToSaveWrapper):
            _replace(inner, name, m.modules_to_save[adapter])
    inner.__dict__.pop("peft_config", None)
    fam = family_of(inner)
    blk = [b.name for b in fam.blocks(inner)]
    layers, targets = [], set()
    for name in lora_layers(inner):
        owner = next((i for i, b in enumerate(blk) if name.startswith(b + ".")), None)
        if owner is None:
            raise ValueError(f"LoRA on {name!r} is outside the model's blocks; sls_fast can only "
                             "keep LoRA inside blocks")
        layers.append(owner)
        targets.add(name[len(blk[owner]) + 1:])
    if not layers:
        raise ValueError("the peft model holds no LoRA layers")
    st = ensure_state(inner)
    if st.adapters is None:
        st.adapters = AdapterConfig(kind="lora", dim=int(cfg.r), scale=float(cfg.lora_alpha),
                                    layers=sorted(set(layers)), dropout=float(cfg.lora_dropout),
                                    targets=sorted(targets))
    set_trainable(inner)
    return inner
