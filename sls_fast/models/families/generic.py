"""Any model whose blocks sit in one of the usual containers: the generic family.

Blocks are found by where the model keeps them (:data:`BLOCK_PATHS`, first match wins), and
everything else comes from what the blocks compute (:mod:`sls_fast.models.families.probe`):

* features: each block's output pooled as its probed layout says (class token for a model
  with one and token outputs, else the mean over tokens after the prefix, or over positions);
* adapters: Convpass beside / RepAdapter before each whole block, shaped by its probe
  (:func:`~sls_fast.models.families._conv.insert_block_adapters`); LoRA (peft) on every
  ``nn.Linear`` inside the adapted blocks;
* the cut (:meth:`GenericFamily.truncate`): the model's own forward runs up to block K and
  stops there (a hook on block K); every module that would run only after block K is
  deleted; a new head (:class:`CutHead`: pooling as probed, a LayerNorm of block K's width,
  a linear classifier) reads block K's output.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from sls_fast.models.families._conv import insert_block_adapters
from sls_fast.models.families.base import Block, Family, is_container, pool_output
from sls_fast.models.families.probe import first_tensor, probe_size

__all__ = ["GenericFamily", "CutHead", "BLOCK_PATHS"]

# Where models keep their blocks: (stage containers, attribute inside a stage holding blocks).
# "" means the stage container holds the blocks itself.
BLOCK_PATHS: Tuple[Tuple[str, str], ...] = (
    ("stages", "blocks"), ("layers", "blocks"), ("levels", "blocks"), ("stages", "layers"),
    ("blocks", ""), ("stages", ""), ("layers", ""), ("features", ""),
)


def _container(model: nn.Module, path: str) -> Optional[nn.Module]:
    m = getattr(model, path, None)
    return m if is_container(m) and len(m) > 0 else None


def _find(model: nn.Module) -> Optional[List[Block]]:
    """The blocks of ``model`` by :data:`BLOCK_PATHS` (then numbered stages ``s1.b1``), or
    None."""
    numbered = _numbered(model)
    if numbered:
        return numbered
    for outer, inner in BLOCK_PATHS:
        stages = _container(model, outer)
        if stages is None:
            continue
        if inner:
            if not all(is_container(getattr(s, inner, None)) for s in stages):
                continue
            found = [Block(f"{outer}.{s}.{inner}.{j}", b, s, j)
                     for s, st in enumerate(stages) for j, b in enumerate(getattr(st, inner))]
        elif all(is_container(s) and not _is_block_like(s) for s in stages):
            found = [Block(f"{outer}.{s}.{j}", b, s, j)
                     for s, st in enumerate(stages) for j, b in enumerate(st)]
        else:
            found = [Block(f"{outer}.{i}", b, 0, i) for i, b in enumerate(stages)]
        if found:
            return found
    return None


def _numbered(model: nn.Module) -> List[Block]:
    """Blocks ``b1, b2, ...`` of stages ``s1, s2, ...`` (timm's RegNet)."""
    stages = [(n, m) for n, m in model.named_children() if re.fullmatch(r"s\d+", n)]
    found = []
    for s, (sn, st) in enumerate(stages):
        found += [Block(f"{sn}.{bn}", b, s, j) for j, (bn, b) in enumerate(
            (bn, b) for bn, b in st.named_children() if re.fullmatch(r"b\d+", bn))]
    return found


def _is_block_like(m: nn.Module) -> bool:
    """A container that is itself one block (an ``nn.Sequential`` of different steps), as
    opposed to a stage holding repeated blocks of one class."""
    kinds = {type(c) for c in m.children()}
    return len(kinds) > 1


def _cut_exit(module, args, output):
    """Forward hook on a cut model's last block: stop the forward, handing its output on."""
    raise _BlockOutput(output)


class _BlockOutput(Exception):
    def __init__(self, value):
        super().__init__("block output")
        self.value = value


class CutHead(nn.Module):
    """The head of a generically cut model: block K's output pooled as probed, a LayerNorm of
    its width, and a linear classifier ``fc``."""

    def __init__(self, layout: str, width: int, num_classes: int, *, pool: str = "mean",
                 num_prefix_tokens: int = 0):
        super().__init__()
        self.layout, self.pool, self.num_prefix_tokens = layout, pool, int(num_prefix_tokens)
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pool_output(x, self.pool, layout=self.layout,
                                     num_prefix_tokens=self.num_prefix_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(x))


class CutForward:
    """The forward of a generically cut model: its own forward up to the last kept block (whose
    hook stops it), then :class:`CutHead`. Set as the model's ``forward``; a plain object
    (not a module), so it pickles with the model."""

    def __init__(self, model: nn.Module):
        self.model = model

    def features(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        try:
            type(self.model).forward(self.model, x, *args, **kwargs)
        except _BlockOutput as stop:
            out = first_tensor(stop.value)
            assert out is not None  # the probe checked that the block returns a tensor
            return out
        raise RuntimeError("the cut model's last block did not run")

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        head: Any = self.model.sls_head
        return head(self.features(x, *args, **kwargs))


class GenericFamily(Family):
    name = "generic"
    models = "any model with blocks in stages[s].blocks[j], layers[s].blocks[j], blocks[i], " \
             "blocks[s][j], stages[s][j], features[i] or s1.b1 (timm), probed"
    layout = " | ".join(f"model.{o}[s].{i}[j]" if i else f"model.{o}[i]" for o, i in BLOCK_PATHS)
    feature = "as probed: class token, mean over tokens or over positions"
    adapter_kinds = ("convpass", "repadapter", "lora")

    def detect(self, model):
        return _find(model) is not None

    def blocks(self, model):
        return _find(model) or []

    def default_pool(self, model):
        has_cls = getattr(model, "cls_token", None) is not None and self.num_prefix_tokens(model)
        return "cls" if has_cls else "mean"

    def default_dropout(self, kind):
        return 0.0 if kind == "lora" else 0.1

    # ------------------------------------------------------------------ adapters
    def insert_adapters(self, model, kind, layers: Sequence[int], *, dim, scale, dropout, groups,
                        targets=None):
        self.check_adapter_kind(kind)
        if kind == "lora":
            self.insert_lora(model, layers, rank=dim, alpha=scale, dropout=dropout,
                             targets=targets)
            return
        insert_block_adapters(self, model, kind, self.blocks(model), self.probe(model), layers,
                              dim=dim, scale=scale, dropout=dropout, groups=groups)

    def insert_lora(self, model, layers, *, rank, alpha, dropout, targets=None):
        """peft LoRA on ``targets`` (paths inside a block) or, by default, on every
        ``nn.Linear`` inside each adapted block. Returns the targets used."""
        from sls_fast.models.petl.lora import insert_lora

        blocks = self.blocks(model)
        if targets:
            return super().insert_lora(model, layers, rank=rank, alpha=alpha, dropout=dropout,
                                       targets=targets)
        paths, rel = [], []
        for i in layers:
            names = [n for n, m in blocks[i].module.named_modules()
                     if isinstance(m, nn.Linear) and n]
            if not names:
                raise ValueError(f"LoRA needs nn.Linear layers; block {blocks[i].name} "
                                 f"({type(blocks[i].module).__name__}) has none")
            paths += [f"{blocks[i].name}.{n}" for n in names]
            rel += [n for n in names if n not in rel]
        insert_lora(model, paths, rank=rank, alpha=alpha, dropout=dropout)
        return rel

    # ------------------------------------------------------------------ the cut
    def truncate(self, model, depth, num_classes):
        blocks = self.blocks(model)
        if depth == len(blocks):
            return [], self._set_head(model, num_classes)
        probes = self.probe(model)
        last = blocks[depth - 1]
        doomed = _after(model, last.module)
        _delete(model, doomed)
        pr = probes[depth - 1]
        pool = self.default_pool(model) if pr.layout == "tokens" else "mean"
        ref = next(iter(model.parameters()))
        model.sls_head = CutHead(pr.layout, pr.width, num_classes, pool=pool,
                                 num_prefix_tokens=self.num_prefix_tokens(model)
                                 ).to(device=ref.device, dtype=ref.dtype)
        last.module.register_forward_hook(_cut_exit)
        object.__setattr__(model, "forward", CutForward(model))
        kept = self.blocks(model)
        if len(kept) != depth:
            raise RuntimeError(f"the cut kept {len(kept)} blocks, expected {depth}")
        for attr in ("num_features", "head_hidden_size"):
            if hasattr(model, attr):
                setattr(model, attr, pr.width)
        return ["sls_head"], True

    def pre_logits(self, model, x):
        cut = model.__dict__.get("forward")
        if isinstance(cut, CutForward):
            return model.sls_head.pre_logits(cut.features(x))
        return super().pre_logits(model, x)

    def reset_head(self, model, num_classes):
        head = getattr(model, "sls_head", None)
        if isinstance(head, CutHead):
            old = head.fc
            head.fc = nn.Linear(old.in_features, int(num_classes)).to(
                device=old.weight.device, dtype=old.weight.dtype)
            return
        super().reset_head(model, num_classes)


@torch.no_grad()
def _after(model: nn.Module, last: nn.Module) -> List[str]:
    """Module paths whose first call in a forward comes after ``last`` returned (outermost
    only): what the cut deletes."""
    order: Dict[int, int] = {}
    done: List[int] = []
    handles = []
    tick = [0]

    def pre(mod, _args):
        order.setdefault(id(mod), tick[0])
        tick[0] += 1

    def post(_mod, _args, _out):
        done.append(tick[0])

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
    handles.append(last.register_forward_hook(post))
    p = next(iter(model.parameters()))
    training = [m for m in model.modules() if m.training]
    try:
        model.eval()
        model(torch.zeros(1, 3, *probe_size(model), device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        for m in training:
            m.training = True
    end = done[0]
    later = [n for n, m in model.named_modules() if n and order.get(id(m), -1) >= end]
    return [n for n in later if not any(n.startswith(q + ".") for q in later if q != n)]


def _delete(model: nn.Module, paths: Sequence[str]) -> None:
    """Delete ``paths``: trailing entries of a ModuleList / Sequential are sliced off, any other
    module becomes ``nn.Identity`` (it never runs: the forward stops before it)."""
    by_parent: Dict[str, List[str]] = {}
    for p in paths:
        parent, _, leaf = p.rpartition(".")
        by_parent.setdefault(parent, []).append(leaf)
    for parent_path, leaves in by_parent.items():
        parent = model.get_submodule(parent_path) if parent_path else model
        if is_container(parent) and all(leaf.isdigit() for leaf in leaves):
            idx = sorted(int(leaf) for leaf in leaves)
            if idx == list(range(len(parent) - len(idx), len(parent))):
                keep = parent[:idx[0]]
                grand, _, name = parent_path.rpartition(".")
                owner = model.get_submodule(grand) if grand else model
                setattr(owner, name, keep)
                continue
        for leaf in leaves:
            setattr(parent, leaf, nn.Identity())
