"""Preprocessing shared by every data set: normalisation constants and a model's data config,
the split names, and the stratified split of in-memory data sets. Below both
:mod:`sls_fast.io.datasets` and :mod:`sls_fast.io.imagefiles`."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SPLITS", "VTAB_SPLITS", "data_config",
           "normalization", "stratified_split"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test", "all")
VTAB_SPLITS = ("train800", "val200", "train800val200", "test")
_VTAB_ALIASES = {"train": "train800", "val": "val200", "all": "train800val200", "trainval": "train800val200"}


# --------------------------------------------------------------------------- configuration
def data_config(model) -> dict:
    """The input configuration of a timm model: ``input_size`` (C, H, W), ``mean``, ``std``,
    ``interpolation`` (timm's :func:`timm.data.resolve_data_config`).

    Example:
        >>> import timm
        >>> cfg = data_config(timm.create_model("efficientnet_lite0", pretrained=False))
        >>> cfg["mean"], cfg["input_size"]
        ((0.485, 0.456, 0.406), (3, 224, 224))
    """
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation") if k in cfg}


def normalization(model) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(mean, std)`` a timm model was pretrained with (3 floats each)."""
    cfg = data_config(model)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def _resolve_norm(model, image_size, mean, std, default_size):
    if model is not None:
        cfg = data_config(model)
        if mean is None:
            mean = cfg["mean"]
        if std is None:
            std = cfg["std"]
        if image_size is None:
            image_size = cfg["input_size"][-2:]
    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    image_size = default_size if image_size is None else image_size
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size}")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got mean={mean}, std={std}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return image_size, mean, std


def stratified_split(labels, split: str, *, seed: int = 0,
                     fractions: Sequence[float] = (0.6, 0.2, 0.2)) -> np.ndarray:
    """Indices of ``split`` ("train" | "val" | "test" | "all") in a stratified split of
    ``labels`` fixed by ``seed`` (default 60/20/20). The three splits are disjoint and cover
    every index; "all" returns every index in data order. Indices come back sorted.

    Example:
        >>> idx = stratified_split(np.repeat(np.arange(3), 10), "val", seed=0)
        >>> len(idx)
        6
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    idx = np.arange(len(labels))
    if split == "all":
        return idx
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr <= 0) or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 positive numbers summing to 1, got {tuple(fractions)}")
    rest, test = train_test_split(idx, test_size=fr[2], stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=fr[1] / (fr[0] + fr[1]), stratify=labels[rest],
                                  random_state=seed)
    return np.sort({"train": train, "val": val, "test": test}[split])
