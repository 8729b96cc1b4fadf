"""The adapter modules of the SLS paper's PETL methods: Convpass and RepAdapter.

* :class:`Convpass` (Jie & Deng, 2022) for transformer blocks: a bottleneck beside attention and
  beside the MLP. A linear down-projection to ``dim``, QuickGELU, a 3x3 convolution over the patch
  grid (every prefix / class token goes through the same convolution alone, as a 1x1 map, as in
  the reference), QuickGELU, dropout, and a zero-initialised linear up-projection, times the
  scale ``s``: the adapted model starts equal to the base model. Grid size, width and number of
  prefix tokens are read from the model and from the token count at run time.
* :class:`ConvpassConv`: the same bottleneck on feature maps, parallel to a whole convolutional
  block (EfficientNet / MobileNet, ConvNeXt, ResNet): 1x1 ``down``, 3x3 conv with the block's
  stride, zero-initialised 1x1 ``up`` of the block's output width.
* LoRA is peft's own (:mod:`sls_fast.models.petl.lora`); :func:`adapter_parts` lists its trainable parts
  beside the modules here.
* :class:`RepAdapter` (Luo et al., 2023): ``x + s * B(A(x))`` with ``A`` a 1x1 conv ``C -> dim``
  and ``B`` a grouped 1x1 conv ``dim -> C``; linear at inference, so it folds exactly into the
  next linear layer (:meth:`RepAdapter.as_affine`).

Where the adapters go inside a block is the family's business (:mod:`sls_fast.models.families`).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = ["QuickGELU", "Convpass", "ConvpassConv", "RepAdapter", "ADAPTER_TYPES", "adapter_parts"]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's GELU approximation, used by Convpass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _bias(layer: Union[nn.Linear, nn.Conv1d, nn.Conv2d]) -> torch.Tensor:
    """``layer.bias``: every layer here is built with one (torch types it Optional)."""
    assert layer.bias is not None
    return layer.bias


def _init_conv_identity(conv: nn.Conv2d) -> None:
    # Reference Convpass init: zero kernel plus identity at the centre tap, zero bias.
    nn.init.zeros_(conv.weight)
    with torch.no_grad():
        n = min(conv.out_channels, conv.in_channels // conv.groups)
        idx = torch.arange(n)
        conv.weight[idx, idx, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
    nn.init.zeros_(_bias(conv))


def _init_bottleneck(down: Union[nn.Linear, nn.Conv2d], conv: nn.Conv2d,
                     up: Union[nn.Linear, nn.Conv2d]) -> None:
    """Convpass initialisation: Xavier down-projection, identity-like 3x3 conv, zero up-projection
    (so the adapter starts as an exact zero and the adapted model equals the base model)."""
    nn.init.xavier_uniform_(down.weight)
    nn.init.zeros_(_bias(down))
    _init_conv_identity(conv)
    nn.init.zeros_(up.weight)
    nn.init.zeros_(_bias(up))


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
        scale: the output scale ``s`` (the reference multiplies the adapter's output by it).

    Shapes: ``[B, N, C] -> [B, N, C]`` or ``[B, H, W, C] -> [B, H, W, C]``.

    Example:
        >>> a = Convpass(192, dim=8, num_prefix_tokens=1, grid_size=(2, 2))
        >>> a(torch.randn(2, 5, 192)).abs().max().item()  # zero-initialised up-projection
        0.0
    """

    def __init__(self, in_features: int, dim: int = 8, num_prefix_tokens: int = 1,
                 grid_size: Optional[Sequence[int]] = None, dropout: float = 0.1,
                 scale: float = 1.0):
        super().__init__()
        if dim < 1 or in_features < 1:
            raise ValueError(f"Convpass needs dim >= 1 and in_features >= 1, got dim={dim}, "
                             f"in_features={in_features}")
        self.in_features, self.dim, self.scale = int(in_features), int(dim), float(scale)
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
        return self.up(self.dropout(self.act(h))) * self.scale


class ConvpassConv(nn.Module):
    """Convpass for feature maps, parallel to a convolutional block.

    ``scale * up(QuickGELU(conv3x3(QuickGELU(down(x)))))`` with 1x1 ``down`` (in_ch -> dim), a 3x3
    conv with the block's ``stride`` and a zero-initialised 1x1 ``up`` (dim -> out_ch).

    Shapes: ``[B, in_ch, H, W] -> [B, out_ch, ceil(H / stride), ceil(W / stride)]``.

    Example:
        >>> a = ConvpassConv(16, 24, dim=8, stride=2)
        >>> a(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 24, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, dim: int = 8, stride: int = 1,
                 dropout: float = 0.0, scale: float = 1.0):
        super().__init__()
        if dim < 1:
            raise ValueError(f"ConvpassConv needs dim >= 1, got {dim}")
        self.in_channels, self.out_channels, self.dim = int(in_channels), int(out_channels), int(dim)
        self.stride, self.scale = int(stride), float(scale)
        self.down = nn.Conv2d(in_channels, dim, 1)
        self.conv = nn.Conv2d(dim, dim, 3, stride, 1)
        self.up = nn.Conv2d(dim, out_channels, 1)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_bottleneck(self.down, self.conv, self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.conv(self.act(self.down(x)))))) * self.scale


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
        nn.init.zeros_(_bias(self.conv_A))
        nn.init.zeros_(self.conv_B.weight)
        nn.init.zeros_(_bias(self.conv_B))

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


ADAPTER_TYPES = (Convpass, ConvpassConv, RepAdapter)


def adapter_parts(model: nn.Module) -> dict:
    """{module path: module} of every adapter in ``model``: the :data:`ADAPTER_TYPES` modules and
    the trainable parts of peft LoRA layers (``...attn.qkv.lora_A``; :func:`sls_fast.models.petl.lora.lora_parts`)."""
    from sls_fast.models.petl.lora import lora_parts

    out: Dict[str, nn.Module] = {n: m for n, m in model.named_modules()
                                 if isinstance(m, ADAPTER_TYPES)}
    out.update(lora_parts(model))
    return out
