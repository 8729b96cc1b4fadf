"""Parameter-efficient adapters of the SLS paper: Convpass and RepAdapter.

* Convpass (Jie & Deng, 2022) for ViT / Swin blocks: a bottleneck beside attention and beside the MLP,
  ``x + attn(norm1(x)) + s * convpass(norm1(x))`` and ``x + mlp(norm2(x)) + s * convpass(norm2(x))``;
  the adapter is a linear down-projection to ``dim``, QuickGELU, a 3x3 convolution over the patch grid
  (every prefix / class token goes through the same convolution alone, as a 1x1 map, as in the
  reference), QuickGELU, dropout, and a zero-initialised linear up-projection (the adapted model
  starts equal to the base model). Grid size, width and number of prefix tokens are read from the
  model and from the token count at run time (any image size, any width).
* Convpass for convolutional blocks (EfficientNet / MobileNet inverted residuals, ConvNeXt, ResNet):
  the same bottleneck on feature maps, parallel to the whole block:
  ``block(x) + s * up(QuickGELU(conv3x3(QuickGELU(down(x)))))`` with 1x1 ``down`` / ``up``, the 3x3
  convolution taking the block's stride and ``up`` the block's output width (zero-initialised).
* RepAdapter (Luo et al., 2023): ``x + s * B(A(x))`` with ``A`` a 1x1 conv ``C -> dim`` and ``B`` a 1x1
  grouped conv ``dim -> C`` (groups 2), applied to ``norm1(x)`` before attention and to ``norm2(x)``
  before the MLP. :func:`merge_adapters` folds it exactly into the following ``qkv`` / ``fc1``.

Adapters live inside the blocks as submodules ``adapter_attn`` / ``adapter_mlp`` (transformers) or
``adapter`` (conv blocks); the block's class is swapped for a subclass whose ``forward`` adds them, so
every base weight keeps its state-dict key and the model stays a plain module (``torch.compile`` works).
The configuration is recorded on the model as ``model.sls_adapters`` (a dict); the base model's
name and checksum as ``model.sls_base`` (used by :mod:`sls_fast.storage`).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .blocks import Block, find_blocks, model_family

__all__ = [
    "QuickGELU",
    "Convpass",
    "ConvpassConv",
    "RepAdapter",
    "add_adapters",
    "merge_adapters",
    "trainable_parameters",
    "adapter_modules",
    "classifier_name",
    "base_checksum",
    "model_name",
    "ADAPTER_KINDS",
]

ADAPTER_KINDS = ("convpass", "repadapter")
DEFAULT_SCALE = {"convpass": 1.0, "repadapter": 1.0}


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's GELU approximation, used by Convpass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _init_conv_identity(conv: nn.Conv2d) -> None:
    # Reference Convpass init: zero kernel plus identity at the centre tap, zero bias.
    nn.init.zeros_(conv.weight)
    with torch.no_grad():
        n = min(conv.out_channels, conv.in_channels // conv.groups)
        idx = torch.arange(n)
        conv.weight[idx, idx, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
    nn.init.zeros_(conv.bias)


def _init_bottleneck(down: nn.Module, conv: nn.Conv2d, up: nn.Module) -> None:
    """Convpass initialisation: Xavier down-projection, identity-like 3x3 conv, zero up-projection
    (so the adapter starts as an exact zero and the adapted model equals the base model)."""
    nn.init.xavier_uniform_(down.weight)
    nn.init.zeros_(down.bias)
    _init_conv_identity(conv)
    nn.init.zeros_(up.weight)
    nn.init.zeros_(up.bias)


class Convpass(nn.Module):
    """Convpass adapter for token sequences (ViT) or token maps (Swin).

    Args:
        in_features: token width C.
        dim: bottleneck width (8 in the paper).
        num_prefix_tokens: class / register tokens in front of the patch tokens (ViT); each goes
            through the 3x3 convolution alone as a 1x1 map.
        grid_size: (H, W) patch grid expected for ``[B, N, C]`` inputs; used when it matches the token
            count, otherwise a square grid is inferred from ``N - num_prefix_tokens``.
        dropout: dropout before the up-projection (0.1 in the reference).

    Shapes: ``[B, N, C] -> [B, N, C]`` or ``[B, H, W, C] -> [B, H, W, C]``.

    Example:
        >>> a = Convpass(192, dim=8, num_prefix_tokens=1, grid_size=(2, 2))
        >>> a(torch.randn(2, 5, 192)).abs().max().item()  # zero-initialised up-projection
        0.0
    """

    def __init__(self, in_features: int, dim: int = 8, num_prefix_tokens: int = 1,
                 grid_size: Optional[Sequence[int]] = None, dropout: float = 0.1):
        super().__init__()
        if dim < 1 or in_features < 1:
            raise ValueError(f"Convpass needs dim >= 1 and in_features >= 1, got dim={dim}, "
                             f"in_features={in_features}")
        self.in_features, self.dim = int(in_features), int(dim)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.grid_size = tuple(int(g) for g in grid_size) if grid_size is not None else None
        self.down = nn.Linear(in_features, dim)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.up = nn.Linear(dim, in_features)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_bottleneck(self.down, self.conv, self.up)

    def _grid(self, n: int):
        if self.grid_size is not None and self.grid_size[0] * self.grid_size[1] == n:
            return self.grid_size
        s = math.isqrt(n)
        if s * s != n:
            raise ValueError(
                f"Convpass: {n} patch tokens (after {self.num_prefix_tokens} prefix tokens) form no "
                f"known grid (model grid {self.grid_size}) and are not a square number")
        return s, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.down(x))
        if h.ndim == 4:  # Swin: [B, H, W, d]
            h = self.conv(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        elif h.ndim == 3:  # ViT: [B, N, d]
            B, N, d = h.shape
            p = self.num_prefix_tokens
            gh, gw = self._grid(N - p)
            patches = h[:, p:].reshape(B, gh, gw, d).permute(0, 3, 1, 2)
            patches = self.conv(patches).permute(0, 2, 3, 1).reshape(B, gh * gw, d)
            if p:
                prefix = h[:, :p].reshape(B * p, d, 1, 1)
                prefix = self.conv(prefix).reshape(B, p, d)
                h = torch.cat([prefix, patches], dim=1)
            else:
                h = patches
        else:
            raise ValueError(f"Convpass expects [B, N, C] or [B, H, W, C], got shape {tuple(x.shape)}")
        return self.up(self.dropout(self.act(h)))


class ConvpassConv(nn.Module):
    """Convpass for feature maps, parallel to a convolutional block.

    ``up(QuickGELU(conv3x3(QuickGELU(down(x)))))`` with 1x1 ``down`` (in_ch -> dim), a 3x3 conv with
    the block's ``stride`` and a zero-initialised 1x1 ``up`` (dim -> out_ch).

    Shapes: ``[B, in_ch, H, W] -> [B, out_ch, ceil(H / stride), ceil(W / stride)]``.

    Example:
        >>> a = ConvpassConv(16, 24, dim=8, stride=2)
        >>> a(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 24, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, dim: int = 8, stride: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        if dim < 1:
            raise ValueError(f"ConvpassConv needs dim >= 1, got {dim}")
        self.in_channels, self.out_channels, self.dim = int(in_channels), int(out_channels), int(dim)
        self.stride = int(stride)
        self.down = nn.Conv2d(in_channels, dim, 1)
        self.conv = nn.Conv2d(dim, dim, 3, stride, 1)
        self.up = nn.Conv2d(dim, out_channels, 1)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_bottleneck(self.down, self.conv, self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.conv(self.act(self.down(x))))))


class RepAdapter(nn.Module):
    """RepAdapter: ``x + scale * B(dropout(A(x)))`` on the last (channel) dimension.

    ``A`` is a 1x1 conv ``C -> dim`` (xavier init), ``B`` a 1x1 conv ``dim -> C`` with ``groups``
    groups (zero init), as in the reference. Linear in ``x`` at inference, so it can be folded into
    the next linear layer (:meth:`as_affine`, :func:`merge_adapters`).

    Shapes: ``[..., C] -> [..., C]``.

    Example:
        >>> a = RepAdapter(192, dim=8, groups=2)
        >>> x = torch.randn(2, 5, 192)
        >>> torch.equal(a(x), x)  # zero-initialised B
        True
    """

    def __init__(self, in_features: int, dim: int = 8, groups: int = 2, scale: float = 1.0,
                 dropout: float = 0.1):
        super().__init__()
        if dim % groups or in_features % groups:
            raise ValueError(f"RepAdapter: dim ({dim}) and in_features ({in_features}) must be "
                             f"divisible by groups ({groups})")
        self.in_features, self.dim, self.groups = int(in_features), int(dim), int(groups)
        self.scale = float(scale)
        self.conv_A = nn.Conv1d(in_features, dim, 1, groups=1, bias=True)
        self.conv_B = nn.Conv1d(dim, in_features, 1, groups=groups, bias=True)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.conv_A.weight)
        nn.init.zeros_(self.conv_A.bias)
        nn.init.zeros_(self.conv_B.weight)
        nn.init.zeros_(self.conv_B.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        t = x.reshape(shape[0], -1, shape[-1]).transpose(1, 2)  # [B, C, N]
        t = self.conv_B(self.dropout(self.conv_A(t))) * self.scale + t
        return t.transpose(1, 2).reshape(shape)

    @torch.no_grad()
    def as_affine(self):
        """(M [C, C], c [C]) with ``adapter(x) = x @ M.T + c`` in eval mode (float64)."""
        C, d, g = self.in_features, self.dim, self.groups
        A = self.conv_A.weight.double()[:, :, 0]  # [d, C]
        Bg = self.conv_B.weight.double()[:, :, 0]  # [C, d/g]
        B = torch.zeros(C, d, dtype=torch.float64, device=A.device)
        co, ci = C // g, d // g
        for k in range(g):
            B[k * co:(k + 1) * co, k * ci:(k + 1) * ci] = Bg[k * co:(k + 1) * co]
        M = torch.eye(C, dtype=torch.float64, device=A.device) + self.scale * (B @ A)
        c = self.scale * (B @ self.conv_A.bias.double() + self.conv_B.bias.double())
        return M, c


# ----------------------------------------------------------------------------------------------
# Adapted block classes: subclasses of the base block class that only change forward.


class _ConvpassViTBlock:
    def forward(self, x, attn_mask=None, is_causal=False):
        s = self.sls_scale
        h = self.norm1(x)
        x = (x + self.drop_path1(self.ls1(self.attn(h, attn_mask=attn_mask, is_causal=is_causal)))
             + self.drop_path1(self.adapter_attn(h)) * s)
        h = self.norm2(x)
        return x + self.drop_path2(self.ls2(self.mlp(h))) + self.drop_path2(self.adapter_mlp(h)) * s


class _RepAdapterViTBlock:
    def forward(self, x, attn_mask=None, is_causal=False):
        x = x + self.drop_path1(self.ls1(self.attn(self.adapter_attn(self.norm1(x)),
                                                   attn_mask=attn_mask, is_causal=is_causal)))
        return x + self.drop_path2(self.ls2(self.mlp(self.adapter_mlp(self.norm2(x)))))


class _ConvpassSwinBlock:
    def forward(self, x):
        s = self.sls_scale
        B, H, W, C = x.shape
        h = self.norm1(x)
        x = x + self.drop_path1(self._attn(h)) + self.drop_path1(self.adapter_attn(h)) * s
        h = self.norm2(x)
        x = x + self.drop_path2(self.mlp(h)) + self.drop_path2(self.adapter_mlp(h)) * s
        return x


class _RepAdapterSwinBlock:
    def forward(self, x):
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.adapter_attn(self.norm1(x))))
        x = x.reshape(B, -1, C)
        x = x + self.drop_path2(self.mlp(self.adapter_mlp(self.norm2(x))))
        return x.reshape(B, H, W, C)


class _ConvpassConvBlock:
    def forward(self, x):
        return super().forward(x) + self.adapter(x) * self.sls_scale


_MIXINS = {
    ("convpass", "vit"): _ConvpassViTBlock,
    ("repadapter", "vit"): _RepAdapterViTBlock,
    ("convpass", "swin"): _ConvpassSwinBlock,
    ("repadapter", "swin"): _RepAdapterSwinBlock,
    ("convpass", "conv"): _ConvpassConvBlock,
}
_CLASS_CACHE: Dict[tuple, type] = {}


def _adapted_class(base: type, mixin: type) -> type:
    key = (base, mixin)
    if key not in _CLASS_CACHE:
        name = mixin.__name__.lstrip("_").replace("Block", "") + base.__name__
        _CLASS_CACHE[key] = type(name, (mixin, base), {"sls_base_class": base})
    return _CLASS_CACHE[key]


def _check_vit_block(blk: nn.Module) -> None:
    from timm.models.vision_transformer import Block as VitBlock

    if type(blk).forward is not VitBlock.forward:
        raise TypeError(
            f"add_adapters supports timm's vision_transformer.Block (norm1/attn/ls1/norm2/mlp/ls2) for "
            f"flat transformers, got {type(blk).__module__}.{type(blk).__name__}")


def _check_swin_block(blk: nn.Module) -> None:
    from timm.models.swin_transformer import SwinTransformerBlock

    if type(blk).forward is not SwinTransformerBlock.forward:
        raise TypeError(f"add_adapters supports timm's SwinTransformerBlock for Swin models, got "
                        f"{type(blk).__module__}.{type(blk).__name__}")


# ----------------------------------------------------------------------------------------------
# Model-level helpers shared with prune / storage / train.


def classifier_name(model: nn.Module) -> Optional[str]:
    """Module path of the final linear classifier (``model.get_classifier()``), or None."""
    get = getattr(model, "get_classifier", None)
    clf = get() if callable(get) else None
    if clf is None:
        for name in ("head", "classifier", "fc"):
            if isinstance(getattr(model, name, None), nn.Linear):
                return name
        return None
    for name, m in model.named_modules():
        if m is clf and name:
            return name
    return None


def adapter_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """{module path: adapter} for every Convpass / ConvpassConv / RepAdapter in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (Convpass, ConvpassConv, RepAdapter))}


def model_name(model: nn.Module) -> str:
    """The architecture name timm recorded on the model (``pretrained_cfg['architecture']``)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _frozen_items(model: nn.Module, exclude_prefixes: Iterable[str]):
    ex = tuple(p + "." for p in exclude_prefixes if p)
    for k, v in sorted(model.state_dict().items()):
        if k.endswith("num_batches_tracked") or ".adapter" in "." + k or k.startswith(ex):
            continue
        yield k, v


def base_checksum(model: nn.Module, exclude: Iterable[str] = ()) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the model's frozen weights.

    Excluded: adapters, the classifier (``get_classifier()``), batch-norm ``num_batches_tracked``
    counters and the module paths in ``exclude``; so a base model, the same model after
    :func:`add_adapters` (batch norms frozen) and after a new head hash the same.

    Example:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> len(base_checksum(m))
        64
    """
    import hashlib

    h = hashlib.sha256()
    clf = classifier_name(model)
    for k, v in _frozen_items(model, list(exclude) + ([clf] if clf else [])):
        t = v.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(v.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _record_base(model: nn.Module) -> None:
    if getattr(model, "sls_base", None) is None:
        model.sls_base = {"name": model_name(model), "checksum": base_checksum(model)}


def _probe_size(model: nn.Module) -> tuple:
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is None:
        return (64, 64)
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


@torch.no_grad()
def block_shapes(model: nn.Module, blocks: Optional[List[Block]] = None) -> List[dict]:
    """Input/output shapes of every block from one dummy forward pass (eval mode, batch 1).

    Returns one dict per block: ``in_ch``, ``out_ch`` (channel width), ``stride`` (spatial
    down-sampling of the block, 1 for transformers). Training mode is restored afterwards.
    """
    blocks = blocks if blocks is not None else find_blocks(model)
    family = model_family(model)
    records: Dict[int, dict] = {}

    def hook(i):
        def fn(mod, inp, out):
            x = inp[0]
            if family in ("vit", "swin"):
                records[i] = dict(in_ch=x.shape[-1], out_ch=out.shape[-1], stride=1)
            else:
                records[i] = dict(in_ch=x.shape[1], out_ch=out.shape[1],
                                  stride=max(1, round(x.shape[-1] / out.shape[-1])))
        return fn

    handles = [b.module.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    was_training = model.training
    p = next(iter(model.parameters()))
    try:
        model.eval()
        model(torch.zeros(1, 3, *_probe_size(model), device=p.device, dtype=p.dtype))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    missing = [blocks[i].name for i in range(len(blocks)) if i not in records]
    if missing:
        raise ValueError(f"blocks {missing} did not run in a forward pass of {type(model).__name__}")
    return [records[i] for i in range(len(blocks))]


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


def _set_trainable(model: nn.Module) -> None:
    """Freeze everything, then unfreeze adapters, the classifier and modules new from truncation."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = list(adapter_modules(model))
    clf = classifier_name(model)
    if clf:
        names.append(clf)
    names += list(getattr(model, "sls_new_modules", ()) or ())
    mods = dict(model.named_modules())
    for n in names:
        if n in mods:
            for p in mods[n].parameters():
                p.requires_grad_(True)


def add_adapters(model: nn.Module, kind: str = "convpass", dim: int = 8, scale: Optional[float] = None,
                 layers: Optional[Sequence[Union[int, str]]] = None, *, dropout: Optional[float] = None,
                 groups: int = 2, num_classes: Optional[int] = None, freeze: bool = True) -> nn.Module:
    """Insert Convpass or RepAdapter adapters into ``model``'s blocks, in place; returns ``model``.

    Args:
        model: a timm ViT/DeiT (``vision_transformer.Block``), Swin, EfficientNet/MobileNet,
            ConvNeXt or ResNet. Convolutional models accept only ``kind="convpass"`` (the
            feature-map variant, parallel to each block).
        kind: ``"convpass"`` or ``"repadapter"``.
        dim: bottleneck width (8 in the paper).
        scale: the adapters' output scale ``s`` (default 1.0).
        layers: blocks to adapt (0-based indices into :func:`sls_fast.blocks.find_blocks` or block
            names); all blocks by default.
        dropout: adapter dropout (default: 0.1 for transformer adapters as in the references, 0 for
            conv Convpass).
        groups: RepAdapter groups of the up-projection (2 in the paper).
        num_classes: if given, the classifier is replaced by a new one with that many classes
            (trained from its random init together with the adapters; :func:`sls_fast.finetune`
            probe-initialises only heads that :func:`sls_fast.truncate` creates).
        freeze: freeze the backbone (``requires_grad=False``, batch norms converted to timm's
            ``FrozenBatchNorm2d`` so their statistics never change): only adapters and the head train.

    Adapters start as an identity: the adapted model's outputs equal the base model's.
    The configuration is stored in ``model.sls_adapters``.

    Example:
        >>> import timm, sls_fast
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> m = sls_fast.add_adapters(m, "convpass", dim=8, num_classes=10)
        >>> sls_fast.trainable_parameters(m)["trainable"] < 0.1 * sls_fast.trainable_parameters(m)["total"]
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"add_adapters needs an nn.Module, got {type(model).__name__}")
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"kind must be one of {ADAPTER_KINDS}, got {kind!r}")
    if getattr(model, "sls_adapters", None):
        raise ValueError(f"model already has {model.sls_adapters['kind']} adapters; add them once")
    if int(dim) < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if getattr(model, "sls_pruned", None):
        raise ValueError("add adapters before truncate(), not after (the pruned model is rebuilt from "
                         "the base model in that order)")
    scale = DEFAULT_SCALE[kind] if scale is None else float(scale)
    family = model_family(model)
    blocks = find_blocks(model)
    idx = _resolve_layers(blocks, layers)
    _record_base(model)
    if family in ("vit", "swin"):
        dropout = 0.1 if dropout is None else float(dropout)
        check = _check_vit_block if family == "vit" else _check_swin_block
        for i in idx:
            check(blocks[i].module)
    else:
        if kind != "convpass":
            raise ValueError(f"{kind} exists for transformer blocks only; {family} models take "
                             f"kind='convpass' (the feature-map variant)")
        dropout = 0.0 if dropout is None else float(dropout)
    shapes = block_shapes(model, blocks) if family not in ("vit", "swin") else None
    p = next(iter(model.parameters()))
    grid = tuple(getattr(getattr(model, "patch_embed", None), "grid_size", None) or ()) or None
    n_prefix = int(getattr(model, "num_prefix_tokens", 1 if family == "vit" else 0))
    for i in idx:
        blk = blocks[i].module
        if family in ("vit", "swin"):
            C = blk.norm1.weight.shape[0] if getattr(blk.norm1, "weight", None) is not None else \
                blk.mlp.fc1.in_features
            if kind == "convpass":
                mk = lambda: Convpass(C, dim, num_prefix_tokens=n_prefix if family == "vit" else 0,
                                      grid_size=grid if family == "vit" else None, dropout=dropout)
            else:
                mk = lambda: RepAdapter(C, dim, groups=groups, scale=scale, dropout=dropout)
            blk.adapter_attn = mk().to(device=p.device, dtype=p.dtype)
            blk.adapter_mlp = mk().to(device=p.device, dtype=p.dtype)
            blk.__class__ = _adapted_class(type(blk), _MIXINS[(kind, family)])
        else:
            sh = shapes[i]
            blk.adapter = ConvpassConv(sh["in_ch"], sh["out_ch"], dim, stride=sh["stride"],
                                       dropout=dropout).to(device=p.device, dtype=p.dtype)
            blk.__class__ = _adapted_class(type(blk), _MIXINS[(kind, "conv")])
        blk.sls_scale = scale
    if num_classes is not None:
        if not hasattr(model, "reset_classifier"):
            raise TypeError(f"{type(model).__name__} has no reset_classifier(); cannot set num_classes")
        model.reset_classifier(int(num_classes))
    model.sls_adapters = dict(kind=kind, dim=int(dim), scale=scale, layers=idx, dropout=dropout,
                              groups=int(groups), family=family, num_blocks=len(blocks))
    if freeze:
        from timm.layers import freeze_batch_norm_2d

        freeze_batch_norm_2d(model)
        _set_trainable(model)
    return model


def _unswap(blk: nn.Module) -> None:
    base = getattr(type(blk), "sls_base_class", None)
    if base is not None:
        blk.__class__ = base
    if "sls_scale" in blk.__dict__:
        del blk.__dict__["sls_scale"]


@torch.no_grad()
def _fold_into_linear(adapter: RepAdapter, lin: nn.Linear) -> None:
    """lin(adapter(x)) == lin'(x): W' = W M, b' = W c + b (computed in float64)."""
    M, c = adapter.as_affine()
    W = lin.weight.double()
    new_w = W @ M
    new_b = W @ c + (lin.bias.double() if lin.bias is not None else 0.0)
    lin.weight.copy_(new_w.to(lin.weight.dtype))
    if lin.bias is None:
        lin.bias = nn.Parameter(new_b.to(lin.weight.dtype), requires_grad=lin.weight.requires_grad)
    else:
        lin.bias.copy_(new_b.to(lin.bias.dtype))


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every RepAdapter into the following ``attn.qkv`` / ``mlp.fc1`` (in place; returns model).

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
        >>> len(sls_fast.adapters.adapter_modules(m))
        0
    """
    cfg = getattr(model, "sls_adapters", None)
    if not cfg:
        raise ValueError("merge_adapters: the model has no adapters (call add_adapters first)")
    if cfg["kind"] != "repadapter":
        raise ValueError(f"only RepAdapter can be merged (linear at inference); this model has "
                         f"{cfg['kind']} adapters")
    for b in find_blocks(model):
        blk = b.module
        if not hasattr(blk, "adapter_attn"):
            continue
        qkv = getattr(blk.attn, "qkv", None)
        fc1 = getattr(blk.mlp, "fc1", None)
        if not isinstance(qkv, nn.Linear) or not isinstance(fc1, nn.Linear):
            raise TypeError(f"{b.name}: merge needs attn.qkv and mlp.fc1 to be nn.Linear")
        _fold_into_linear(blk.adapter_attn, qkv)
        _fold_into_linear(blk.adapter_mlp, fc1)
        del blk.adapter_attn
        del blk.adapter_mlp
        _unswap(blk)
    model.sls_adapters = dict(cfg, merged=True)
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
