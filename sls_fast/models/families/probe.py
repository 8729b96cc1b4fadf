"""What each block computes, probed rather than guessed: one forward pass with hooks.

For every block, :func:`probe_blocks` records the shape of its output and the width its own
parameters declare (the output width of the last parameterised module that ran inside it:
a linear layer's ``out_features``, a convolution's ``out_channels``, a norm's or a layer
scale's size). From the two it decides the block's layout:

* ``"tokens"``: ``[B, N, C]`` (with the model's prefix tokens, if any, first);
* ``"nchw"``: a channels-first map ``[B, C, H, W]``;
* ``"nhwc"``: a channels-last map ``[B, H, W, C]`` (Swin, MambaOut);
* ``"vector"``: ``[B, C]``.

A map whose channel axis the parameters cannot tell (no parameters, or ``C`` equal to a
spatial size) is probed a second time at another input size: the axes that follow the input
are spatial. When the output agrees with neither reading, the model is refused with a
ValueError that names the block: features are never pooled on a guessed axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["BlockProbe", "LAYOUTS", "Recorder", "probe_blocks", "run_at_recorded_size", "stage_cut", "first_tensor",
           "declared_width"]

LAYOUTS = ("tokens", "nchw", "nhwc", "vector")


@dataclass(frozen=True)
class BlockProbe:
    """One block's probed output: layout, channel width, input width and spatial stride
    (1 for tokens and vectors), spatial grid (H, W) or token count N at the probe's size, and
    the prefix tokens (class, register, distillation) the block's tokens start with."""

    name: str
    layout: str
    width: int
    in_width: int
    stride: int
    grid: Optional[Tuple[int, int]] = None
    tokens: Optional[int] = None
    prefix: int = 0


def first_tensor(value: Any) -> Optional[torch.Tensor]:
    """The tensor a block passes on: itself, or the first tensor of a tuple / list / model
    output (transformers layers return tuples)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    items = getattr(value, "values", None)  # a transformers ModelOutput
    if callable(items):
        return next((v for v in items() if isinstance(v, torch.Tensor)), None)
    return None


def declared_width(module: nn.Module) -> Optional[int]:
    """The output width ``module``'s own parameters declare, or None."""
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels)
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        return int(getattr(module, "num_features", getattr(module, "num_channels", 0))) or None
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    own = [p for p in module.parameters(recurse=False)]
    vectors = [p for p in own if p.ndim == 1]
    if vectors:  # a layer scale, an RMS norm, a bias-only module
        return int(vectors[-1].numel())
    if own and own[-1].ndim >= 2:
        return int(own[-1].shape[0])
    return None


def _recorded_sizes(model: nn.Module) -> List[Tuple[int, int]]:
    """Input sizes the model records (a patch embedding's ``img_size``, ``model.img_size``, a
    transformers config's ``image_size``, timm's ``pretrained_cfg`` input size), then 64 px."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    embeds = (m for m in model.modules() if hasattr(m, "img_size") and m is not model)
    candidates = (getattr(getattr(model, "patch_embed", None), "img_size", None),
                  getattr(model, "img_size", None),
                  getattr(next(embeds, None), "img_size", None),
                  getattr(getattr(model, "config", None), "image_size", None),
                  cfg.get("input_size") if isinstance(cfg, dict) else None, 64)
    out: List[Tuple[int, int]] = []
    for size in candidates:
        if isinstance(size, (tuple, list)) and len(size) >= 2:
            hw = (int(size[-2]), int(size[-1]))
        elif isinstance(size, int) and size > 0:
            hw = (size, size)
        else:
            continue
        if hw not in out:
            out.append(hw)
    return out


def run_at_recorded_size(model: nn.Module, reset: Callable[[], None]) -> Tuple[int, int]:
    """One eval forward of a zero image at the first of the sizes the model records (see
    :func:`_recorded_sizes`) that it runs at; returns that size. The caller's hooks see the
    run: ``reset()`` clears what they saw before each try. ValueError when no size runs."""
    p = next(iter(model.parameters()))
    sizes = _recorded_sizes(model)
    first_error: Optional[BaseException] = None
    for hw in sizes:
        reset()
        try:
            _forward(model, torch.zeros(1, 3, *hw, device=p.device, dtype=p.dtype))
            return hw
        except Exception as exc:  # noqa: BLE001 - a size this model refuses: try the next
            if len(sizes) == 1:
                raise
            first_error = first_error or exc
    raise ValueError(f"{type(model).__name__} runs at none of the input sizes it records "
                     f"{sizes}: {type(first_error).__name__}: {str(first_error)[:200]}")


class Recorder:
    """Hooks that record each block's input / output shapes and declared width while the model
    runs (the probe's own forward, or the first batch of a feature extraction: one pass).
    :meth:`probe` then reads block i's layout; use as a context manager (hooks removed on exit)."""

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module],
                 names: Optional[Sequence[str]] = None, *, prefix_tokens: int = 0):
        from sls_fast.models.petl.modules import ADAPTER_TYPES

        self.model, self.blocks, self.prefix_tokens = model, list(blocks), int(prefix_tokens)
        self.names = list(names) if names is not None else [f"block {i}" for i in
                                                            range(len(self.blocks))]
        self.seen: Dict[int, dict] = {}
        self.input_shape: Optional[Tuple[int, ...]] = None
        self._other: Optional[Dict[int, dict]] = None
        self.busy = False  # True during the second reading's forward
        self.handles: list = []
        self.patches: Optional[int] = None  # tokens the patch embedding makes (no prefix)
        self.handles.append(model.register_forward_pre_hook(self._model_input))
        embed = getattr(model, "patch_embed", None)
        if isinstance(embed, nn.Module):
            self.handles.append(embed.register_forward_hook(self._patches))
        for i, blk in enumerate(self.blocks):
            skip = {id(m) for a in blk.modules() if isinstance(a, ADAPTER_TYPES)
                    for m in a.modules()}
            for m in blk.modules():
                if id(m) not in skip and any(True for _ in m.parameters(recurse=False)):
                    self.handles.append(m.register_forward_hook(self._leaf_hook(i)))
            self.handles.append(blk.register_forward_hook(self._block_hook(i)))

    def reset(self) -> None:
        """Forget what was recorded (a try at another input size starts afresh)."""
        self.seen.clear()
        self.input_shape = None
        self.patches = None
        self._other = None

    def _model_input(self, _mod, args):
        t = first_tensor(args)
        if t is not None and self.input_shape is None:
            self.input_shape = tuple(t.shape)

    def _patches(self, _mod, _args, out):
        t = first_tensor(out)
        if t is not None and self.patches is None and t.ndim in (3, 4):
            self.patches = int(t.shape[1]) if t.ndim == 3 else None
            if t.ndim == 4:  # a map: channels are the axis the embedding's weights declare
                w = declared_width(_mod) if not any(True for _ in _mod.children()) else None
                c = 1 if w is None or t.shape[1] == w else 3
                self.patches = int(t.shape[2] * (t.shape[3] if c == 1 else t.shape[1]))

    def _block_hook(self, i):
        def fn(_mod, args, out):
            if self.busy:  # the second reading records into its own Recorder
                return
            t_in, t_out = first_tensor(args), first_tensor(out)
            rec = self.seen.setdefault(i, {})
            if "out" in rec:
                rec["twice"] = True
            rec.update(inp=None if t_in is None else tuple(t_in.shape),
                       out=None if t_out is None else tuple(t_out.shape))
        return fn

    def _leaf_hook(self, i):
        def fn(mod, _args, _out):
            w = None if self.busy else declared_width(mod)
            if w is not None:
                self.seen.setdefault(i, {})["declared"] = w
        return fn

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _other_shape(self, i: int) -> Optional[Tuple[int, ...]]:
        """Block i's output shape at twice the input size (None: the model refuses it)."""
        if self._other is None:
            self._other = {}
            if self.input_shape is not None and len(self.input_shape) == 4:
                p = next(iter(self.model.parameters()))
                h, w = self.input_shape[-2:]
                x = torch.zeros(1, self.input_shape[1], 2 * h, 2 * w, device=p.device,
                                dtype=p.dtype)
                again = Recorder(self.model, self.blocks, self.names,
                                 prefix_tokens=self.prefix_tokens)
                self.busy = True
                try:
                    _forward(self.model, x)
                    self._other = again.seen
                except Exception:  # noqa: BLE001 - a fixed-size model: no second reading
                    pass
                finally:
                    self.busy = False
                    again.close()
        return self._other.get(i, {}).get("out")

    def _prefix(self, n: int) -> int:
        """Prefix tokens of a block with ``n`` tokens: what exceeds the patch embedding's
        tokens (a block that runs before the class token is added, as in CaiT and XCiT, has
        none), else the model's."""
        if self.patches is not None and 0 <= n - self.patches <= self.prefix_tokens:
            return n - self.patches
        return self.prefix_tokens if n > self.prefix_tokens else 0

    def probe(self, i: int) -> BlockProbe:
        """Block i's :class:`BlockProbe`; ValueError naming the block when the block did not run,
        ran twice, returned no tensor or a shape its parameters contradict."""
        what, nm, rec = type(self.model).__name__, self.names[i], self.seen.get(i, {})
        if "out" not in rec:
            raise ValueError(f"{what}: block {nm} did not run in a forward pass")
        if rec.get("twice"):
            raise ValueError(f"{what}: block {nm} ran twice in one forward pass; its output is "
                             "not one layer's feature")
        if rec["out"] is None or rec["inp"] is None:
            raise ValueError(f"{what}: block {nm} takes or returns no tensor")
        shape, ishape, declared = rec["out"], rec["inp"], rec.get("declared")
        if len(shape) == 2:
            return BlockProbe(nm, "vector", shape[1], ishape[-1], 1)
        if len(shape) == 3:
            if declared is not None and shape[2] != declared and shape[1] == declared:
                raise ValueError(f"{what}: block {nm} returns {list(shape)} whose channels seem "
                                 f"to be on axis 1 (its parameters declare width {declared}); "
                                 "sls_fast reads tokens as [B, N, C] and will not guess")
            return BlockProbe(nm, "tokens", shape[2], ishape[-1], 1, tokens=shape[1],
                              prefix=self._prefix(shape[1]))
        if len(shape) != 4:
            raise ValueError(f"{what}: block {nm} returns a {len(shape)}-D tensor "
                             f"{list(shape)}; sls_fast pools tokens [B, N, C] or maps")
        layout = _map_layout(shape, declared, None) or _map_layout(shape, declared,
                                                                    self._other_shape(i))
        if layout is None:
            raise ValueError(
                f"{what}: block {nm} returns {list(shape)} and neither its parameters "
                f"(declared width {declared}) nor a second input size tell its channel axis; "
                "refusing to pool on a guessed axis")
        if layout == "nchw":
            width, grid = shape[1], (shape[2], shape[3])
            in_w = ishape[1] if len(ishape) == 4 else ishape[-1]
            in_side = ishape[-1] if len(ishape) == 4 else None
        else:
            width, grid = shape[3], (shape[1], shape[2])
            in_w, in_side = ishape[-1], (ishape[2] if len(ishape) == 4 else None)
        stride = max(1, round(in_side / grid[1])) if in_side else 1
        return BlockProbe(nm, layout, width, in_w, stride, grid=grid)


def _forward(model: nn.Module, x: torch.Tensor) -> None:
    """One eval-mode forward without gradients; training flags restored."""
    training = [m for m in model.modules() if m.training]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for m in training:
            m.training = True


def _map_layout(out: Tuple[int, ...], declared: Optional[int],
                other: Optional[Tuple[int, ...]]) -> Optional[str]:
    """"nchw" / "nhwc" for a 4-D output, or None when nothing tells them apart."""
    first, last = out[1], out[3]
    if declared is not None and (first == declared) != (last == declared):
        return "nchw" if first == declared else "nhwc"
    if other is not None and len(other) == 4:  # the axes that followed the input are spatial
        first_fixed, last_fixed = other[1] == first, other[3] == last
        if first_fixed != last_fixed:
            return "nchw" if first_fixed else "nhwc"
    return None


def probe_blocks(model: nn.Module, blocks: Sequence[nn.Module],
                 names: Optional[Sequence[str]] = None,
                 x: Optional[torch.Tensor] = None, *, prefix_tokens: int = 0) -> List[BlockProbe]:
    """The layout, width and stride of every block of ``model`` from one forward pass of ``x``
    (default: one zero image at the first size the model records and runs at,
    :func:`run_at_recorded_size`), checked against each block's parameters
    (:meth:`Recorder.probe`)."""
    with Recorder(model, blocks, names, prefix_tokens=prefix_tokens) as rec:
        if x is None:
            run_at_recorded_size(model, rec.reset)
        else:
            _forward(model, x[:1])
        return [rec.probe(i) for i in range(len(rec.blocks))]


def stage_cut(counts: List[int], depth: int):
    """Flat depth K (1-based count) -> (stage s, number of blocks kept in stage s)."""
    acc = 0
    for s, n in enumerate(counts):
        if depth <= acc + n:
            return s, depth - acc
        acc += n
    raise ValueError(f"depth {depth} is beyond the model's {acc} blocks")
