"""The family object: everything that depends on a model's structure, in one place.

A family answers, for the models it recognises (:meth:`Family.detect`):

* :meth:`~Family.blocks` -- which modules are SLS's layers, in forward order;
* :meth:`~Family.pool` -- how one block output becomes one vector per image;
* :meth:`~Family.insert_adapters` -- where each adapter kind goes inside a block;
* :meth:`~Family.truncate` -- how to keep blocks 1..K, delete the rest and give the model a head
  of the right width;
* :meth:`~Family.trainable` -- the one rule for what trains and what an artifact stores (adapters,
  classifier, modules that truncation created).

Pipeline code (extract, adapters, prune, storage, train) asks :func:`sls_fast.models.families.family_of`
for the family and calls these; it never branches on family names. A new family subclasses
:class:`Family` and is added with :func:`sls_fast.models.families.register`; a new adapter kind is a new
entry in a family's ``adapter_kinds`` and a branch of its ``insert_adapters``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from sls_fast.models.petl.modules import adapter_parts
from sls_fast.models.state import classifier_names, get_state

__all__ = ["Block", "Family", "is_container", "pool_output"]


@dataclass(frozen=True)
class Block:
    """One layer: its module path (``name``), the module, and its stage/index position."""

    name: str
    module: nn.Module
    stage: int  # stage index (0 for flat transformers)
    index: int  # index inside the stage


def is_container(m) -> bool:
    return isinstance(m, (nn.Sequential, nn.ModuleList))


def pool_output(out, pool: str, *, layout: Optional[str] = None,
                num_prefix_tokens: int = 0) -> torch.Tensor:
    """Pool one block output to ``[B, D]`` (float32 accumulation for means).

    ``layout`` is the block's probed layout (:func:`sls_fast.models.families.probe.probe_blocks`):

    * ``"tokens"`` ``[B, N, D]``: "cls" -> token 0; "mean" -> mean over the tokens after the
      ``num_prefix_tokens`` prefix (class / register / distillation tokens), like timm's avg pool;
    * ``"nchw"`` ``[B, C, H, W]`` or ``"nhwc"`` ``[B, H, W, C]``: "mean" over spatial positions;
    * ``"vector"`` ``[B, D]``: unchanged.

    Without a layout, 3-D outputs are read as tokens and 2-D as vectors; a map is refused
    (its channel axis is never guessed).
    """
    from sls_fast.models.families.probe import first_tensor

    out = first_tensor(out)
    if not isinstance(out, torch.Tensor):
        raise TypeError("a block returned no tensor")
    expected = {"vector": 2, "tokens": 3, "nchw": 4, "nhwc": 4}
    if layout is not None and expected.get(layout) != out.ndim:
        raise ValueError(f"a block probed as {layout!r} returned shape {tuple(out.shape)}")
    if out.ndim == 2:
        return out
    if out.ndim == 3:
        if pool == "cls":
            return out[:, 0]
        return out[:, num_prefix_tokens:].mean(dim=1, dtype=torch.float32)
    if out.ndim == 4:
        if pool == "cls":
            raise ValueError(f"pool='cls' needs token outputs [B, T, D]; a block returned a "
                             f"feature map {tuple(out.shape)}")
        if layout is None:
            raise ValueError(f"a feature map {tuple(out.shape)} needs its probed layout "
                             "('nchw' or 'nhwc') to be pooled")
        return out.mean(dim=(1, 2) if layout == "nhwc" else (2, 3), dtype=torch.float32)
    raise ValueError(f"cannot pool a block output of shape {tuple(out.shape)}")


class Family:
    """Base class of a model family; subclasses fill in the class attributes and methods.

    Class attributes (also the README's support table, :func:`sls_fast.models.families.support_table`):
        name: short id ("vit", "swin", ...), recorded in artifacts.
        models: the architectures covered, in words.
        layout: where the blocks are, e.g. ``model.blocks[i]``.
        feature: the per-layer feature (class token, mean over positions).
        adapter_kinds: adapter kinds :meth:`insert_adapters` accepts.
        uses_intermediates: extraction may use timm's ``forward_intermediates``.
        lora_targets: the linear layers inside a block that LoRA adapts by default.
        reference_keys: ``{kind: [(their substring, our substring), ...]}`` mapping the authors'
            (RuiZiHan/SLS) checkpoint keys onto ours; a kind missing here has no such layout.
    """

    name: str = ""
    models: str = ""
    layout: str = ""
    feature: str = "mean over positions"
    adapter_kinds: Tuple[str, ...] = ()
    uses_intermediates: bool = False
    reference_keys: Dict[str, List[Tuple[str, str]]] = {}
    lora_targets: Tuple[str, ...] = ()

    # ------------------------------------------------------------------ structure
    def detect(self, model: nn.Module) -> bool:
        """True when ``model`` has this family's block layout."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> List[Block]:
        """Every block of ``model`` in forward order."""
        raise NotImplementedError

    # ------------------------------------------------------------------ features
    def default_pool(self, model: nn.Module) -> str:
        """The pooling "auto" means for this model ("cls" or "mean")."""
        return "mean"

    def merged_pool_modules(self, model: nn.Module, modules) -> list:
        """``pool="merged"``: the module applied to each block's output before pooling (the
        authors' Swin features); only Swin has one."""
        raise ValueError(f"pool='merged' is the authors' Swin pooling; {self.name} models have "
                         "no patch merging to pool after: use 'auto' or 'mean'")

    def num_prefix_tokens(self, model: nn.Module) -> int:
        """Tokens before the patch tokens (class, register, distillation) in block outputs."""
        return int(getattr(model, "num_prefix_tokens", 0) or 0)

    def pool(self, output, kind: str = "mean", *, model: Optional[nn.Module] = None,
             layout: Optional[str] = None, prefix: Optional[int] = None) -> torch.Tensor:
        """One block output of the probed ``layout`` and ``prefix`` tokens -> ``[B, D]``
        features (see :func:`pool_output`). "cls" on a block whose tokens carry no class token
        (CaiT's patch blocks) is the mean over its tokens."""
        if prefix is None:
            prefix = self.num_prefix_tokens(model) if model is not None else 0
        if kind == "cls" and layout == "tokens" and prefix == 0:
            kind = "mean"
        return pool_output(output, kind, layout=layout, num_prefix_tokens=prefix)

    def probe(self, model: nn.Module, x: Optional[torch.Tensor] = None) -> list:
        """Every block's probed layout and width (:func:`~sls_fast.models.families.probe.probe_blocks`)."""
        from sls_fast.models.families.probe import probe_blocks

        blocks = self.blocks(model)
        return probe_blocks(model, [b.module for b in blocks], [b.name for b in blocks], x,
                            prefix_tokens=self.num_prefix_tokens(model))

    # ------------------------------------------------------------------ adapters
    def check_adapter_kind(self, kind: str) -> None:
        if kind not in self.adapter_kinds:
            raise ValueError(f"{kind} adapters do not exist for {self.name} models ({self.models}); "
                             f"this family takes {', '.join(repr(k) for k in self.adapter_kinds)}")

    def default_dropout(self, kind: str) -> float:
        return 0.0 if kind == "lora" else 0.1  # peft's LoRA default; the references' adapters

    def insert_adapters(self, model: nn.Module, kind: str, layers: Sequence[int], *, dim: int,
                        scale: float, dropout: float, groups: int,
                        targets: Optional[Sequence[str]] = None) -> None:
        """Put adapters of ``kind`` into the blocks ``layers`` (0-based), in place."""
        raise NotImplementedError

    def default_lora_targets(self, model: nn.Module) -> Tuple[str, ...]:
        """The LoRA targets of ``model`` when none are given (:attr:`lora_targets`; a family whose
        layer layout varies picks them from the model)."""
        return tuple(self.lora_targets)

    def insert_lora(self, model: nn.Module, layers: Sequence[int], *, rank: int, alpha: float,
                    dropout: float, targets: Optional[Sequence[str]] = None) -> List[str]:
        """peft LoRA on ``targets`` (default :meth:`default_lora_targets`, paths inside a block) of the
        blocks ``layers``. Returns the targets used."""
        from sls_fast.models.petl.lora import insert_lora

        targets = list(targets or self.default_lora_targets(model))
        if not targets:
            raise ValueError(f"{self.name} models have no default LoRA targets; pass targets=[...]")
        blocks = self.blocks(model)
        insert_lora(model, [f"{blocks[i].name}.{t}" for i in layers for t in targets],
                    rank=rank, alpha=alpha, dropout=dropout)
        return targets

    def merge_adapters(self, model: nn.Module) -> None:
        """Fold linear adapters into the base weights, in place (RepAdapter on transformers)."""
        raise ValueError(f"{self.name} models have no mergeable adapters")

    # ------------------------------------------------------------------ truncation
    def truncate(self, model: nn.Module, depth: int, num_classes: int) -> Tuple[List[str], bool]:
        """Keep blocks 1..``depth`` of ``model`` in place, delete the rest, set a head of
        ``num_classes``. Returns (module paths created, whether the head is new)."""
        raise NotImplementedError

    def num_classes(self, model: nn.Module) -> int:
        """The width of the model's classifier (0: none)."""
        return int(getattr(model, "num_classes", 0) or 0)

    def pre_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input ``[B, D]`` (timm's ``forward_head(..., pre_logits=True)``)."""
        # timm's methods: nn.Module's typing knows only tensors and submodules as attributes
        return model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]

    def reset_head(self, model: nn.Module, num_classes: int) -> None:
        """A new classifier of ``num_classes`` (timm's ``reset_classifier``)."""
        if not hasattr(model, "reset_classifier"):
            raise TypeError(f"{type(model).__name__} has no reset_classifier(); cannot set num_classes")
        model.reset_classifier(int(num_classes))  # type: ignore[operator]  # timm's method

    def _set_head(self, model: nn.Module, num_classes: int) -> bool:
        """A new classifier when the class count changes; True when one was made."""
        if num_classes != getattr(model, "num_classes", None):
            self.reset_head(model, num_classes)
            return True
        return False

    # ------------------------------------------------------------------ trained / stored parts
    def trainable(self, model: nn.Module) -> List[str]:
        """Module paths that train and that an artifact stores: every adapter, the classifier and
        the modules truncation created (outermost paths only, sorted)."""
        names = list(adapter_parts(model))
        names += classifier_names(model)
        st = get_state(model)
        if st is not None:
            names += list(st.new_modules)
        names = sorted(set(names))
        return [p for p in names if not any(p != q and p.startswith(q + ".") for q in names)]

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}: {self.models}>"
