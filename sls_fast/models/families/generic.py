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
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn

from sls_fast.models.families._conv import BlockAdapters
from sls_fast.models.families.base import Block, Family, is_container, pool_output
from sls_fast.models.families.probe import (BlockProbe, Recorder, first_tensor,
                                            run_at_recorded_size)

__all__ = ["GenericFamily", "CutHead", "BLOCK_PATHS"]

# Where models keep their blocks: (stage containers, attribute inside a stage holding blocks).
# "" means the stage container holds the blocks itself (or is the flat list of blocks).
BLOCK_PATHS: Tuple[Tuple[str, str], ...] = (
    ("stages", "blocks"), ("layers", "blocks"), ("levels", "blocks"), ("stages", "layers"),
    ("levels", "transformer_encoder"), ("blocks", ""), ("stages", ""), ("layers", ""),
    ("network", ""), ("features", ""),
)
# Where a transformers model keeps them: under its backbone's ``encoder``.
_BACKBONE_PREFIXES = ("", "encoder.")


def _composite(m: nn.Module) -> bool:
    return any(True for _ in m.children())


def _is_stage(m: nn.Module) -> bool:
    """A container of blocks (every child composite), as opposed to one block written as an
    ``nn.Sequential`` of steps (a norm, an activation: leaf modules)."""
    return is_container(m) and any(True for _ in m.children()) and all(
        _composite(c) for c in m.children())


def _at(model: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _scan(root: nn.Module, pre: str) -> Optional[List[Block]]:
    """Blocks under ``root`` (module path prefix ``pre``) by :data:`BLOCK_PATHS`, or None."""
    for outer, inner in BLOCK_PATHS:
        stages: Any = _at(root, outer)  # a ModuleList / Sequential when it passes the check
        if not (is_container(stages) and len(stages) > 0):
            continue
        if inner:
            if not all(is_container(getattr(st, inner, None)) for st in stages):
                continue
            found = [Block(f"{pre}{outer}.{s}.{inner}.{j}", b, s, j)
                     for s, st in enumerate(stages) for j, b in enumerate(getattr(st, inner))]
        elif all(_is_stage(st) for st in stages) or (
                sum(_is_stage(st) for st in stages) >= 2
                and all(_is_stage(st) or (_composite(st) and not is_container(st))
                        for st in stages)):
            # stages of blocks; a module between stages (VOLO's downsampling) is not a block
            found = [Block(f"{pre}{outer}.{s}.{j}", b, s, j)
                     for s, st in enumerate(stages) if _is_stage(st) for j, b in enumerate(st)]
        elif all(_composite(b) for b in stages):  # one flat list of blocks
            found = [Block(f"{pre}{outer}.{i}", b, 0, i) for i, b in enumerate(stages)]
        else:  # leaf layers (a stem's conv, a norm) in the list: not a list of blocks
            continue
        if found:
            return found
    return None


def _numbered(model: nn.Module) -> List[Block]:
    """Blocks of numbered stage attributes: ``s1.b1`` (timm's RegNet), ``stage1.0``
    (Visformer)."""
    stages = [(n, m) for n, m in model.named_children() if re.fullmatch(r"(s|stage)\d+", n)]
    found = []
    for s, (sn, st) in enumerate(stages):
        kids = [(bn, b) for bn, b in st.named_children() if re.fullmatch(r"b?\d+", bn)
                and _composite(b)]
        found += [Block(f"{sn}.{bn}", b, s, j) for j, (bn, b) in enumerate(kids)]
    return found


def _backbones(model: nn.Module):
    """(module, path prefix) where blocks may live: the model, then a transformers backbone
    (a child that has an ``encoder``)."""
    yield model, ""
    for name, child in model.named_children():
        if isinstance(getattr(child, "encoder", None), nn.Module):
            yield child, f"{name}."


def _find(model: nn.Module) -> Optional[List[Block]]:
    """The blocks of ``model``, or None (also for a two-tower model such as CLIP's, whose text
    tower is not an image model)."""
    if hasattr(model, "text_model"):
        return None
    numbered = _numbered(model)
    if numbered:
        return numbered
    for root, pre in _backbones(model):
        for sub in _BACKBONE_PREFIXES:
            inner = _at(root, sub[:-1]) if sub else root
            if inner is None:
                continue
            found = _scan(inner, pre + sub)
            if found:
                return found
    return None


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


class GenericFamily(BlockAdapters, Family):
    name = "generic"
    models = "any other timm or transformers model whose blocks sit in a usual container " \
             "(probed; README's zoo table lists those tested)"
    layout = ", ".join(f"{o}[s].{i}[j]" if i else f"{o}[i]" for o, i in BLOCK_PATHS) \
        + ", s1.b1, stage1[j]; also under a transformers backbone's encoder"
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

    # ------------------------------------------------------------------ the cut
    def truncate(self, model, depth, num_classes):
        blocks = self.blocks(model)
        if depth == len(blocks):
            return [], self._set_head(model, num_classes)
        last = blocks[depth - 1]
        doomed, pr = _after(model, last, self.num_prefix_tokens(model))  # one forward
        holders = {b.name.rsplit(".", k)[0] for b in blocks for k in range(b.name.count(".") + 1)}
        _delete(model, doomed, sliceable=holders)
        pool = self.default_pool(model) if pr.layout == "tokens" and pr.prefix else "mean"
        ref = next(iter(model.parameters()))
        model.sls_head = CutHead(pr.layout, pr.width, num_classes, pool=pool,
                                 num_prefix_tokens=pr.prefix).to(device=ref.device, dtype=ref.dtype)
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
        """The classifier's input: the cut head's, timm's ``forward_head(pre_logits=True)``,
        or (any other model) what the model's own classifier receives in a forward."""
        cut = model.__dict__.get("forward")
        if isinstance(cut, CutForward):
            return model.sls_head.pre_logits(cut.features(x))
        if hasattr(model, "forward_head"):
            return super().pre_logits(model, x)
        from sls_fast.models.state import classifier_name

        name = classifier_name(model)
        if name is None:
            raise TypeError(f"{type(model).__name__} has no linear classifier to read features for")
        seen: List[torch.Tensor] = []
        hook = model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args: seen.append(args[0]))
        try:
            model(x)
        finally:
            hook.remove()
        return seen[0]

    def reset_head(self, model, num_classes):
        head = getattr(model, "sls_head", None)
        old = head.fc if isinstance(head, CutHead) else getattr(model, "classifier", None)
        if isinstance(old, nn.Linear) and (head is not None or not hasattr(model, "reset_classifier")):
            new = nn.Linear(old.in_features, int(num_classes)).to(device=old.weight.device,
                                                                   dtype=old.weight.dtype)
            if isinstance(head, CutHead):
                head.fc = new
            else:  # a transformers classifier
                model.classifier = new
                cfg = getattr(model, "config", None)
                if cfg is not None and hasattr(cfg, "num_labels"):
                    cfg.num_labels = int(num_classes)
            return
        super().reset_head(model, num_classes)


@torch.no_grad()
def _after(model: nn.Module, last: Block, prefix_tokens: int) -> Tuple[List[str], BlockProbe]:
    """From one forward: the module paths whose first call comes after block ``last`` returned
    (outermost only: what the cut deletes), and ``last``'s probe (what the new head reads)."""
    order: Dict[int, int] = {}
    done: List[int] = []
    tick = [0]

    def pre(mod, _args):
        order.setdefault(id(mod), tick[0])
        tick[0] += 1

    def post(_mod, _args, _out):
        done.append(tick[0])

    def reset() -> None:  # a try at another input size starts afresh
        order.clear()
        done.clear()
        tick[0] = 0
        rec.reset()

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles.append(last.module.register_forward_hook(post))
    with Recorder(model, [last.module], [last.name], prefix_tokens=prefix_tokens) as rec:
        try:
            run_at_recorded_size(model, reset)
        finally:
            for h in handles:
                h.remove()
        probe = rec.probe(0)
    end = done[0]
    named = [(n, m) for n, m in model.named_modules() if n]
    later = {n for n, m in named if order.get(id(m), -1) >= end}
    for n, m in reversed(named):  # a list never called itself goes when all it holds goes
        kids = [f"{n}.{k}" for k, _ in m.named_children()]
        if id(m) not in order and kids and all(k in later for k in kids):
            later.add(n)
    return sorted(n for n in later if not any(n.startswith(q + ".") for q in later if q != n)), probe


def _delete(model: nn.Module, paths: Sequence[str], *, sliceable: Set[str]) -> None:
    """Delete ``paths``: blocks and stages (``sliceable``) at the end of their ModuleList /
    Sequential are sliced off; any other module becomes ``nn.Identity`` in place, keeping the
    lists the forward zips together (Twins' ``pos_block``) at their length. Nothing deleted
    runs: the forward stops before it."""
    by_parent: Dict[str, List[str]] = {}
    for path in paths:
        owner_path, _, leaf = path.rpartition(".")
        by_parent.setdefault(owner_path, []).append(leaf)
    for parent_path, leaves in by_parent.items():
        parent: Any = model.get_submodule(parent_path) if parent_path else model
        full = [f"{parent_path}.{leaf}" if parent_path else leaf for leaf in leaves]
        if is_container(parent) and all(leaf.isdigit() for leaf in leaves) and all(
                f in sliceable for f in full):
            idx = sorted(int(leaf) for leaf in leaves)
            if idx == list(range(len(parent) - len(idx), len(parent))):
                keep = parent[:idx[0]]
                grand, _, name = parent_path.rpartition(".")
                owner = model.get_submodule(grand) if grand else model
                setattr(owner, name, keep)
                continue
        for leaf in leaves:
            setattr(parent, leaf, nn.Identity())
