"""Checks that run before any compute: what a user can get wrong is refused in about a second,
each with a ValueError naming the problem (the command line: one line, exit 2), never minutes
into a run and never as an "internal error".

Every job (:func:`~sls_fast.harness.pipeline.run_task`, :func:`~sls_fast.harness.tasks.score_task`,
``prune_task``, ``bench_task``, :func:`~sls_fast.harness.sweep.run_sweep`) calls the checks
that apply to it, before it writes anything:

* :func:`check_out`: the output folder can be created and written;
* :func:`check_device`: the device exists (CUDA asked for on a machine without it);
* :func:`check_weights`: the model name is known (with "did you mean") and a checkpoint is a
  readable file;
* :func:`check_data`: at least 2 classes, every split non-empty, more scored points than the
  perplexity (scikit-learn's rule; the neighbour-based backends say when they need 3 x);
* :func:`check_first_batch`: the first batch's activations fit in the device's free memory,
  from shapes traced on fake tensors at the real size (:func:`first_batch_bytes`).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from sls_fast.common.buffers import _fmt_bytes, _free_bytes
from sls_fast.common.utils import num_classes_of, resolve_device
from sls_fast.models.zoo import check_model_name

__all__ = ["check_out", "check_device", "check_weights", "check_data", "check_first_batch",
           "first_batch_bytes"]

MEMORY_SHARE = 0.8  # the first batch may use at most this share of the free memory


def check_out(out: Union[str, os.PathLike]) -> str:
    """``out`` if it is (or can be created as) a writable folder; nothing is created here."""
    path = os.path.abspath(os.fspath(out))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"output folder {os.fspath(out)!r} is a file")
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise ValueError(f"output folder {os.fspath(out)!r}: {existing!r} is not a folder")
    try:  # access() is not enough (read-only mounts, ACLs): write and remove a probe file
        fd, probe = tempfile.mkstemp(prefix=".sls-write-probe-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"output folder {os.fspath(out)!r} is not writable "
                         f"({exc.strerror or exc}: {existing})") from None
    return path


def check_device(device: Union[str, torch.device, None]) -> torch.device:
    """The torch device ``device`` names, checked to exist here."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(dev)!r}: torch sees no CUDA device on this machine "
                             "(torch.cuda.is_available() is False); pass --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(dev)!r}: this machine has {count} CUDA device(s)")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"device {str(dev)!r}: sls_fast runs on cpu or cuda")
    return dev


def check_weights(model: str, checkpoint: Union[str, Mapping[str, Any], None] = None,
                  *more: Optional[str]) -> None:
    """The model name is known (or its ``hf:`` folder exists) and every checkpoint given is
    an existing, readable file (or a peft adapter folder)."""
    check_model_name(model)
    for path in (checkpoint, *more):
        if path is None:
            continue
        path = os.fspath(path)  # type: ignore[arg-type]
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "adapter_config.json")):
            continue
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint {path!r} does not exist")
        if not os.access(path, os.R_OK):
            raise ValueError(f"checkpoint {path!r} is not readable")


def check_data(splits: Mapping[str, Any], *, scored: Optional[int] = None,
               perplexity: Optional[float] = None, scored_split: str = "train") -> None:
    """Every split has images, the scored split (``scored_split``) at least 2 classes, and its
    scored points (``scored``, default all its images) exceed ``perplexity``."""
    for name, data in splits.items():
        if len(data) == 0:
            raise ValueError(f"the {name} split has no images")
    train = splits.get(scored_split)
    if train is not None:
        classes = num_classes_of(train)
        if classes < 2:
            raise ValueError(f"the {scored_split} split has {classes} class(es): SLS scores "
                             "how well features separate classes, so it needs at least 2")
        n = len(train) if scored is None else min(int(scored), len(train))
        if perplexity is not None and n <= perplexity:
            raise ValueError(f"{n} scored images is too few for perplexity {perplexity:g}: "
                             "t-SNE needs more images than the perplexity (score more "
                             "images, or lower --perplexity)")


def first_batch_bytes(model: nn.Module, image_size: int) -> Optional[int]:
    """A lower bound on the activation memory one image needs in ``model``'s forward at
    ``image_size`` px: the largest input + output of any leaf module, which must be alive
    together. Shapes come from a forward on fake tensors (torch's ``FakeTensorMode``): exact
    at the real size, for fixed-size models and attention alike, and nothing is allocated.
    None when the forward cannot run on fake tensors or refuses the size."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def nbytes(value: Any) -> Dict[int, int]:
        items = value if isinstance(value, (tuple, list)) else [value]
        return {id(t): t.numel() * t.element_size() for t in items if isinstance(t, torch.Tensor)}

    largest = [0]

    def count(_module: nn.Module, inputs: Any, output: Any) -> None:
        live = {**nbytes(inputs), **nbytes(output)}  # an in-place op's output is its input
        largest[0] = max(largest[0], sum(live.values()))

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if not any(True for _ in m.children())]
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), torch.inference_mode():
            model(torch.empty(1, 3, int(image_size), int(image_size)))
    except Exception:  # noqa: BLE001 - an op without a fake kernel, or a size the model refuses
        return None
    finally:
        for h in hooks:
            h.remove()
    return largest[0] or None


def check_first_batch(model: nn.Module, *, batch_size: int, image_size: Optional[int],
                      device: torch.device) -> Optional[int]:
    """Refuse a first batch that cannot fit: :func:`first_batch_bytes` times the batch size
    against :data:`MEMORY_SHARE` of the device's free memory. A lower bound, so nothing that
    fits is refused. Returns the estimate (None when the size is the model's own and unknown,
    or the forward cannot be traced)."""
    if not image_size:
        return None
    size = int(image_size)
    one = first_batch_bytes(model, size)
    if one is None:
        return None
    need = one * int(batch_size)
    free = _free_bytes(device)
    if free is not None and need > MEMORY_SHARE * free:
        raise ValueError(f"image size {size} at batch size {batch_size} needs at least "
                         f"{_fmt_bytes(need)} of activations for the first batch; "
                         f"{device.type} has {_fmt_bytes(free)} free: lower --image-size or "
                         "--batch-size")
    return need
