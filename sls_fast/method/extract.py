"""Per-layer features of every block in one forward pass per batch (SLS step 1).

(Over 400 lines because the two extraction paths, the buffers they share and the layout checks
that refuse a guessed pooling axis belong together: splitting them would split one pass.)

For each batch the model runs once; every block's output is pooled to one vector per image the
moment it is produced and written straight into preallocated buffers on the model's device; the
pass stops after the last requested block (final norm and head never run).

* timm ViT / DeiT (flat ``model.blocks``): timm's ``forward_intermediates`` (block granularity,
  ``stop_early``, class token split off with ``return_prefix_tokens``).
* Everything else (Swin, EfficientNet / MobileNet, ConvNeXt, ResNet, the generic family,
  explicit ``layers=``): one forward hook per block, the pass cut short by the last block's
  hook; each block pooled as its probed layout says (:mod:`sls_fast.models.families.probe`).

Buffers: ``[N, D_i]`` per layer, or one ``[L, N, D]`` when all widths agree. On CUDA they are
CuPy arrays (written through torch views obtained with DLPack, no host round trip) when CuPy
imports and ``dtype`` is float32/float16; torch CUDA tensors otherwise. On CPU, torch tensors.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset

from sls_fast.common.arrays import ArrayLike, as_tensor
from sls_fast.common.buffers import allocate_buffers, estimate_bytes
from sls_fast.common.arrays import to_numpy as host_numpy
from sls_fast.common.utils import as_loader, autocast, check_amp, model_device, progress_bar, split_batch
from sls_fast.models.families import find_blocks, find_family, pool_output
from sls_fast.models.families.probe import Recorder

__all__ = ["LayerFeatures", "extract_features", "estimate_bytes", "pool_output"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_POOLS = ("auto", "cls", "mean", "merged")


# --------------------------------------------------------------------------- result
@dataclass
class LayerFeatures:
    """Features of L layers for N images.

    Attributes:
        features: one ``[L, N, D]`` array when every width agrees, else a list of L ``[N, D_i]``
            arrays (CuPy on CUDA when available, else torch; NumPy after :meth:`to_numpy`).
            ``features[i]`` is layer i's ``[N, D_i]`` either way.
        labels: ``[N]`` int64 labels in data order (same library/device as the features).
        layer_names: the L module paths (e.g. ``"blocks.3"``, ``"layers.2.blocks.5"``).
        widths: the L feature widths D_i.
        pool: the pooling used per layer ("cls" or "mean").
    """

    features: Union[ArrayLike, List[ArrayLike]]
    labels: ArrayLike
    layer_names: List[str]
    widths: List[int]
    pool: List[str] = field(default_factory=list)

    @property
    def stacked(self) -> bool:
        """True when ``features`` is one ``[L, N, D]`` array."""
        return not isinstance(self.features, (list, tuple))

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        return self.num_layers

    def __getitem__(self, i):
        """Layer i's features ``[N, D_i]``."""
        return self.features[i]

    def to_numpy(self) -> "LayerFeatures":
        """The same result with every array as NumPy in host memory (a device-to-host copy on
        CUDA; zero-copy for CPU float32/float16 tensors; bfloat16 is widened to float32)."""
        conv = host_numpy
        feats = conv(self.features) if self.stacked else [conv(f) for f in self.features]
        return LayerFeatures(feats, conv(self.labels), list(self.layer_names), list(self.widths),
                             list(self.pool))

    def to_torch(self) -> "LayerFeatures":
        """The same data as torch tensors on the same device (zero-copy via DLPack)."""
        conv = lambda a: as_tensor(a)[0]  # noqa: E731  (zero-copy via DLPack)
        feats = conv(self.features) if self.stacked else [conv(f) for f in self.features]
        return LayerFeatures(feats, conv(self.labels), list(self.layer_names), list(self.widths),
                             list(self.pool))

    def __repr__(self):
        lib = type(self.features if self.stacked else self.features[0]).__module__.split(".")[0]
        return (f"LayerFeatures(L={self.num_layers}, N={self.num_samples}, widths={self.widths}, "
                f"stacked={self.stacked}, library={lib})")


# --------------------------------------------------------------------------- pooling
def _resolve_pool(model, family, pool: str) -> str:
    if pool not in _POOLS:
        raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
    if pool == "merged":  # the family says whether it has a merge to pool after
        if family is None:
            raise ValueError(f"pool='merged' (the authors' Swin features) needs a Swin model; "
                             f"{type(model).__name__} is not one: use 'auto' or 'mean'")
        return pool
    auto = family.default_pool(model) if family is not None else (
        "cls" if getattr(model, "cls_token", None) is not None else "mean")
    if pool == "cls" and auto != "cls":
        raise ValueError(f"pool='cls' but {type(model).__name__} has no class token; use 'mean' or 'auto'")
    return auto if pool == "auto" else pool


# --------------------------------------------------------------------------- helpers
class _StopForward(Exception):
    """Raised by the last block's hook: the rest of the forward (final norm, head) is skipped."""


def _expected_rows(loader: DataLoader) -> Optional[int]:
    """N when the loader knows it (map-style dataset, default batch sampler); None otherwise."""
    if isinstance(loader.dataset, IterableDataset):
        return None
    bs = loader.batch_sampler
    if bs is None:  # batch_size=None: the dataset items are already batches
        return None
    if type(bs) is not BatchSampler:
        return None
    try:
        n = len(bs.sampler)  # type: ignore[arg-type]  # a Sampler need not be Sized: TypeError below
    except TypeError:
        return None
    return (n // bs.batch_size) * bs.batch_size if bs.drop_last else n


def _check_images(model, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch tensor [B, C, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"images must be floating point (normalised), got {x.dtype}")
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    strict = getattr(pe, "strict_img_size", False) and not getattr(pe, "dynamic_img_pad", False)
    if img_size is not None and strict and tuple(x.shape[-2:]) != tuple(img_size):
        raise ValueError(f"images are {tuple(x.shape[-2:])} (H, W) but {type(model).__name__} expects "
                         f"{tuple(img_size)}; resize them (e.g. sls_fast.data.digits(image_size="
                         f"{img_size[0]})) or build the model with img_size={tuple(x.shape[-2:])}")
    in_chans = None
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first, str):
        try:
            in_chans = getattr(model.get_submodule(first), "in_channels", None)
        except AttributeError:
            in_chans = None
    if in_chans is not None and x.shape[1] != in_chans:
        raise ValueError(f"images have {x.shape[1]} channels, {type(model).__name__} expects {in_chans}")


def _channels_last_weights(model: nn.Module, device: torch.device) -> List[nn.Parameter]:
    """On the CPU, the 4-D weights of a model with 2-D convolutions in channels-last order (the
    oneDNN convolutions of torch run about 1.25x faster on them: EfficientNet-Lite0 at 64 px,
    2 cores); returns the converted parameters, for :func:`_restore_weights`."""
    if device.type != "cpu" or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return []
    converted = []
    for p in model.parameters():
        if p.dim() == 4 and p.is_contiguous():
            p.data = p.data.contiguous(memory_format=torch.channels_last)
            converted.append(p)
    return converted


def _restore_weights(params: List[nn.Parameter]) -> None:
    for p in params:
        p.data = p.data.contiguous()


def _resolve_layers(model, layers):
    if layers is None:
        blocks = find_blocks(model)
        return [b.name for b in blocks], [b.module for b in blocks], True
    if isinstance(layers, (nn.Module, str)):
        layers = [layers]
    names_by_id = {id(m): n for n, m in model.named_modules()}
    names, modules = [], []
    for item in layers:
        if isinstance(item, str):
            try:
                mod = model.get_submodule(item)
            except AttributeError:
                raise ValueError(f"layer {item!r} is not a submodule of {type(model).__name__}") from None
            names.append(item)
            modules.append(mod)
        elif isinstance(item, nn.Module):
            if id(item) not in names_by_id:
                raise ValueError(f"layer {type(item).__name__} is not a submodule of {type(model).__name__}")
            names.append(names_by_id[id(item)])
            modules.append(item)
        else:
            raise TypeError(f"layers must hold modules or module paths, got {type(item).__name__}")
    if not modules:
        raise ValueError("layers is empty")
    if len({id(m) for m in modules}) != len(modules):
        raise ValueError("layers lists the same module twice")
    return names, modules, False


def _use_intermediates(model, family, is_all_blocks: bool, method: str) -> bool:
    if method == "hooks":
        return False
    ok = False
    if is_all_blocks and family is not None and family.uses_intermediates and hasattr(
            model, "forward_intermediates"):
        try:
            params = inspect.signature(model.forward_intermediates).parameters
            ok = all(k in params for k in (
                "indices", "return_prefix_tokens", "stop_early", "output_fmt", "intermediates_only"))
        except (ValueError, TypeError):
            ok = False
    if method == "intermediates" and not ok:
        raise ValueError(f"method='intermediates' needs a timm ViT-style model with "
                         f"forward_intermediates (all blocks); {type(model).__name__} does not qualify")
    return ok


# --------------------------------------------------------------------------- main entry
def extract_features(model: nn.Module, data: Union[DataLoader, Dataset], *, pool: str = "auto",
                     device: Union[str, torch.device, None] = None,
                     dtype: torch.dtype = torch.float32, batch_size: int = 64,
                     amp: Optional[str] = None, progress: bool = True,
                     layers: Union[nn.Module, str, Sequence[Union[nn.Module, str]], None] = None,
                     max_bytes: Optional[int] = None, method: str = "auto") -> LayerFeatures:
    """Pooled output of every block for every image, in one forward pass per batch.

    Args:
        model: a model of a supported family (layers found by
            :func:`sls_fast.models.families.find_blocks`, pooled by the family) or any
            module when ``layers`` is given. Run in eval mode under ``torch.inference_mode()``
            (every submodule's training flag is restored afterwards).
        data: a ``DataLoader`` or a ``Dataset`` of ``(image [3, H, W], label)`` pairs (batched
            with ``batch_size``, in order). Labels are kept in iteration order.
        pool: "auto" (class token for models with one (ViT, DeiT), else the mean over tokens /
            spatial positions: Swin NHWC maps, conv NCHW maps), "cls", "mean", or "merged"
            (Swin only, the authors' choice: a block of stages 1-3 is pooled after the
            PatchMerging that follows its stage, width 2C instead of C; the last stage as
            "mean". "auto" pools the raw block output, as for every other model: the two
            differ by one linear map + norm per stage, which changes silhouettes and can move
            the depth; pass "merged" to reproduce the paper's Swin numbers).
        device: where to run; default the model's device (the model is moved when given).
        dtype: buffer dtype, float32 (default), float16 (half the memory) or bfloat16.
        amp: autocast of the forward: None (off), "auto" (bf16 on CUDA when supported), "bf16"
            or "fp16".
        progress: tqdm bar over batches.
        layers: explicit list of modules or module paths instead of every block.
        max_bytes: refuse (ValueError) when the buffers would exceed this many bytes; the
            limit otherwise is the free memory of the device (host RAM on CPU).
        method: "auto" (``forward_intermediates`` for timm ViTs, hooks otherwise), "hooks" or
            "intermediates".

    Buffers are allocated once, for all N images (N from the data's length), as soon as the
    first batch's forward has revealed the widths, and before anything is written into them;
    the memory check (free device memory or ``max_bytes``) happens then, before allocating.
    When the data has no length (an ``IterableDataset``, a custom batch sampler), the buffers
    start at one batch and double whenever they fill, then are trimmed to N (one extra copy).

    Returns:
        :class:`LayerFeatures`: ``features[i]`` ``[N, D_i]`` (one ``[L, N, D]`` array when the
        widths agree), ``labels`` ``[N]``, ``layer_names``, ``widths``.

    Example:
        >>> import timm, sls_fast
        >>> m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> lf = extract_features(m, sls_fast.data.digits("val", image_size=32), progress=False)
        >>> lf.features.shape, lf.labels.shape      # 12 blocks, 360 images, width 192
        (torch.Size([12, 360, 192]), torch.Size([360]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be one of {_DTYPES}, got {dtype}")
    check_amp(amp)
    if method not in ("auto", "hooks", "intermediates"):
        raise ValueError(f"method must be 'auto', 'hooks' or 'intermediates', got {method!r}")
    names, modules, all_blocks = _resolve_layers(model, layers)
    family = find_family(model)
    pool_kind = _resolve_pool(model, family, pool)
    if pool_kind == "merged":
        assert family is not None  # _resolve_pool refuses "merged" without a family
        merges = family.merged_pool_modules(model, modules)
    else:
        merges = [None] * len(modules)
    npt = int(getattr(model, "num_prefix_tokens", 0) or 0)
    use_fi = _use_intermediates(model, family, all_blocks, method)
    kind = "mean" if pool_kind == "merged" else pool_kind  # merged: mean after the merge
    probes: List[Any] = [None] * len(modules)  # probed on the first batch
    if family is not None and all_blocks:
        npt = family.num_prefix_tokens(model)

        def pool_fn(i, out):
            return family.pool(out, kind, model=model, layout=probes[i].layout,
                               prefix=probes[i].prefix)
    else:
        def pool_fn(i, out):
            return pool_output(out, kind, layout=probes[i].layout,
                               num_prefix_tokens=probes[i].prefix)

    if device is not None:
        device = torch.device(device)
        model.to(device)
    else:
        device = model_device(model)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    loader = as_loader(data, batch_size)
    n_hint = _expected_rows(loader)
    if n_hint == 0:
        raise ValueError("data is empty: no images to extract features from")
    try:
        n_batches = len(loader)
    except TypeError:
        n_batches = None

    L = len(modules)
    state = {"start": 0, "stop": 0, "fired": 0}
    bufs = None
    pending: dict = {}  # the first batch's pooled features, until the buffers exist

    def write(i, pooled):
        if bufs is None:
            pending[i] = pooled
        else:
            bufs.views[i][state["start"]:state["stop"]].copy_(pooled)

    def make_hook(i):
        def hook(_m, _inp, out):
            if recorder is not None and recorder.busy:  # the probe's second reading
                return
            if state["fired"] & (1 << i):
                raise ValueError(f"layer {names[i]} ran twice in one forward pass; pass distinct layers")
            if merges[i] is not None:
                out = merges[i](out[0] if isinstance(out, (tuple, list)) else out)
            if recorder is not None and probes[i] is None:
                probes[i] = recorder.probe(i)
            write(i, pool_fn(i, out))
            state["fired"] |= 1 << i
            if state["fired"] == (1 << L) - 1:
                raise _StopForward
        return hook

    if use_fi:
        fi_params = dict(indices=list(range(L)), return_prefix_tokens=npt > 0, norm=False,
                         stop_early=True, output_fmt="NLC", intermediates_only=True)

        def forward(x):
            outs = model.forward_intermediates(x, **fi_params)
            for i, o in enumerate(outs):
                if isinstance(o, (tuple, list)):  # (spatial tokens, prefix tokens)
                    spatial, prefix = o
                    pooled = prefix[:, 0] if pool_kind == "cls" else spatial.mean(dim=1, dtype=torch.float32)
                else:
                    pooled = pool_output(o, pool_kind, num_prefix_tokens=0)
                write(i, pooled)
    else:
        def forward(x):
            state["fired"] = 0
            try:
                model(x)
            except _StopForward:
                return
            missing = [names[i] for i in range(L) if not state["fired"] & (1 << i)]
            raise ValueError(f"layers {missing[:5]} did not run during the forward pass of "
                             f"{type(model).__name__}")

    training = [m for m in model.modules() if m.training]  # restored exactly afterwards
    # the first batch's forward also probes every block's layout (checked against its weights);
    # the recorder's hooks go first, so a block's record is complete when its feature is pooled
    recorder = None if use_fi else Recorder(model, modules, names, prefix_tokens=npt)
    handles = [] if use_fi else [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    labels: List[torch.Tensor] = []
    n = 0
    channels_last = _channels_last_weights(model, device)  # restored afterwards
    try:
        if training:
            model.eval()
        bar = progress_bar(loader, progress, total=n_batches, desc="extract features",
                           unit="batch", leave=False)
        for batch in bar:
            x, y = split_batch(batch)
            if bufs is None:
                _check_images(model, x)
            x = x.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(y).reshape(-1).to(torch.int64)
            b = x.shape[0]
            if y.shape[0] != b:
                raise ValueError(f"a batch has {b} images but {y.shape[0]} labels")
            if bufs is not None:
                bufs.ensure(n + b)
            state["start"], state["stop"] = n, n + b
            with torch.inference_mode(), autocast(amp, device):
                forward(x)
            if bufs is None:  # first batch: widths known now; check memory, allocate, write it
                widths = [int(pending[i].shape[-1]) for i in range(L)]
                bufs = allocate_buffers(widths, n_hint, b, dtype, device, max_bytes)
                bufs.ensure(n + b)
                for i in range(L):
                    bufs.views[i][n:n + b].copy_(pending.pop(i))
                if recorder is not None:
                    recorder.close()  # probed: later batches run without its hooks
            labels.append(y)
            n += b
    finally:
        for h in handles:
            h.remove()
        if recorder is not None:
            recorder.close()
        for m in training:
            m.training = True
        _restore_weights(channels_last)
    if n == 0:
        raise ValueError("data is empty: no images to extract features from")
    assert bufs is not None  # the first batch allocated them
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    lab = torch.cat([t.to(device) for t in labels])
    lab_out = bufs.cupy.from_dlpack(lab) if bufs.cupy is not None else lab
    return LayerFeatures(bufs.result(n), lab_out, names, list(bufs.widths), [pool_kind] * L)
