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
  estimated from one image at a small size.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from sls_fast.common.buffers import _fmt_bytes, _free_bytes
from sls_fast.common.utils import num_classes_of, resolve_device
from sls_fast.models.throughput import forward_costs
from sls_fast.models.zoo import check_model_name

__all__ = ["check_out", "check_device", "check_weights", "check_data", "check_first_batch"]

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


def check_first_batch(model: nn.Module, *, batch_size: int, image_size: Optional[int],
                      device: torch.device, probe_size: int = 32) -> Optional[int]:
    """Refuse a batch whose activations cannot fit: the activation bytes of one image at
    ``probe_size`` px (:func:`sls_fast.models.throughput.forward_costs`), scaled by the area
    and the batch,
    against :data:`MEMORY_SHARE` of the device's free memory. Returns the estimate (None when
    the size is the model's own and unknown)."""
    if not image_size:
        return None
    size = int(image_size)
    probe = min(size, probe_size)
    x = torch.zeros(1, 3, probe, probe, device=next(model.parameters()).device)
    one = forward_costs(model, x)["activation_bytes"]
    if one is None:  # a fixed-size model refuses another size: no estimate
        return None
    need = int(one * (size / probe) ** 2 * batch_size)
    free = _free_bytes(device)
    if free is not None and need > MEMORY_SHARE * free:
        raise ValueError(f"image size {size} at batch size {batch_size} needs about "
                         f"{_fmt_bytes(need)} of activations for the first batch; "
                         f"{device.type} has {_fmt_bytes(free)} free: lower --image-size or "
                         "--batch-size")
    return need
