"""Small helpers shared by the pipeline modules: where a model lives, progress bars, the one AMP
vocabulary, the one data-loader adapter, atomic file writes, and what a run records (seeds,
versions, device name, class count)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Optional, Union

import torch
import torch.nn as nn

AMP_MODES = (None, "auto", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def model_device(model: nn.Module, device=None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (or buffer), else
    the CPU."""
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``) when ``enabled``; else
    ``iterable`` itself (``None`` for a manual bar)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


# --------------------------------------------------------------------------- mixed precision
def check_amp(amp) -> None:
    """ValueError unless ``amp`` is one of :data:`AMP_MODES`: None (off), "auto" (bf16 on CUDA
    when supported, else off), "bf16", "fp16"."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES} (None = off, 'auto' = bf16 on CUDA when "
                         f"supported), got {amp!r}")


def amp_dtype(amp, device: torch.device):
    """The autocast dtype ``amp`` means on ``device``, or None for full precision."""
    check_amp(amp)
    if amp == "auto":
        ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if ok else None
    return _AMP_DTYPES.get(amp)


def autocast(amp, device: torch.device):
    """A context manager: ``torch.autocast`` for ``amp`` on ``device``, or a no-op."""
    dtype = amp_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- data
def as_loader(data, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """A ``DataLoader`` over ``data`` (returned as is when it already is one): in order, or
    shuffled by a local generator seeded with ``seed`` (the global RNG is never touched)."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, DataLoader):
        return data
    if not isinstance(data, (Dataset, IterableDataset)):
        raise TypeError(f"data must be a torch DataLoader or Dataset of (image, label) pairs, "
                        f"got {type(data).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if hasattr(data, "__len__") and len(data) == 0:
        raise ValueError("data is empty")
    gen = None
    if shuffle:
        gen = torch.Generator()
        gen.manual_seed(int(seed))
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0)


def logits_of(out):
    """The logits of a forward's result: the tensor itself (timm), or ``out.logits``
    (transformers' ``ImageClassifierOutput``)."""
    return out if isinstance(out, torch.Tensor) else getattr(out, "logits", out)


def split_batch(batch):
    """``(images, labels)`` of one batch: a pair / list, or a dict with image and label keys."""
    if isinstance(batch, dict):
        keys = [k for k in ("image", "images", "pixel_values", "x") if k in batch]
        lkeys = [k for k in ("label", "labels", "target", "y") if k in batch]
        if keys and lkeys:
            return batch[keys[0]], batch[lkeys[0]]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError("each batch must be an (images, labels) pair; got "
                    f"{type(batch).__name__}" + (f" of length {len(batch)}" if hasattr(batch, "__len__") else ""))


# --------------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path`` in
    one rename, on failure it is removed: readers never see a half-written file.

    Example:
        >>> with atomic_path("out/report.json") as tmp:       # doctest: +SKIP
        ...     open(tmp, "w").write("{}")
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    stem, suffix = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        yield tmp
        os.chmod(tmp, 0o644)  # again: a writer may have replaced the file (safetensors: 0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def text_table(rows, headers) -> str:
    """``rows`` under ``headers`` as left-aligned text columns."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------- runs
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict:
    """The versions of the libraries a result depends on."""
    import platform

    import numpy
    import sklearn
    import timm

    from sls_fast._version import __version__

    v = dict(sls_fast=__version__, torch=torch.__version__, timm=timm.__version__,
             numpy=numpy.__version__, sklearn=sklearn.__version__, python=platform.python_version())
    for name in ("triton", "openTSNE"):
        try:
            v[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional
            pass
    return v


def proc_bytes(path: str, key: str) -> Optional[int]:
    """Bytes of the ``key: N kB`` line of a Linux ``/proc`` file (None where there is none)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``device`` as a torch device; None: CUDA when available, else the CPU."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a device torch knows: {exc}") from None


def device_name(dev: torch.device) -> str:
    import platform

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def num_classes_of(ds) -> int:
    """The number of classes of a dataset (its ``num_classes``, else max label + 1)."""
    n = getattr(ds, "num_classes", None)
    if n:
        return int(n)
    import numpy as np

    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = [ds[i][1] for i in range(len(ds))]
    return int(np.max(np.asarray(labels))) + 1


def dataclass_from_dict(cls, d: dict, what: str):
    """``cls(**d)`` for a dataclass, with a ValueError naming any key ``cls`` does not have."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; known: {sorted(names)}")
    return cls(**d)
