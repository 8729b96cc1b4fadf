"""Small helpers shared by the pipeline modules: where a model lives, and progress bars."""
from __future__ import annotations

import torch
import torch.nn as nn


def model_device(model: nn.Module, device=None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (or buffer), else
    the CPU."""
    if device is not None:
        return torch.device(device)
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``) when ``enabled``; else
    ``iterable`` itself (``None`` for a manual bar)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
