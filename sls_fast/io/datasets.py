"""Data sets that work offline, in the formats users already have.

Every loader returns a map-style :class:`torch.utils.data.Dataset` of ``(image, label)`` pairs,
``image`` a float tensor ``[3, H, W]`` already resized and normalised, ``label`` an ``int``. Each
dataset also carries ``.labels`` (``[N]`` int64 NumPy array, data order), ``.num_classes`` and
``.classes`` (class names).

* :func:`digits` -- scikit-learn's bundled ``load_digits`` (1,797 8x8 images, 10 classes), the
  embedded default; upscaled (bicubic) to any size, three channels, normalised.
* :func:`lfw` -- scikit-image's bundled ``lfw_subset`` (100 faces, 100 non-faces, 25x25).
* :func:`vtab` -- a VTAB-1k task folder as the SLS / NOAH reference code reads it: list files
  ``train800.txt``, ``val200.txt``, ``train800val200.txt``, ``test.txt``, each line
  ``relative/path.jpg label``.
* :func:`image_folder` -- one sub-folder per class (torchvision's ImageFolder layout).
* :func:`from_spec` -- ``"digits" | "lfw" | "vtab:PATH" | "folder:PATH"`` (used by the CLI).

Normalisation: pass ``model=`` to take the mean/std (and, when ``image_size`` is None, the input
size) from a timm model's pretrained config (:func:`data_config`), or ``mean=``/``std=``
explicitly. Defaults are ImageNet's mean/std, which the embedded default model
(EfficientNet-Lite0, ImageNet weights) expects.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sls_fast.io.imagefiles import FileListDataset, image_folder, read_vtab_list, vtab
from sls_fast.io.preprocess import (IMAGENET_MEAN, IMAGENET_STD, SPLITS, VTAB_SPLITS,
                                    _resolve_norm, data_config, normalization, stratified_split)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "VTAB_SPLITS",
    "data_config",
    "normalization",
    "ArrayImageDataset",
    "FileListDataset",
    "digits",
    "lfw",
    "vtab",
    "image_folder",
    "read_vtab_list",
    "from_spec",
    "default_image_size",
    "BUNDLED_IMAGE_SIZE",
    "stratified_split",
]

# --------------------------------------------------------------------------- in-memory images
class ArrayImageDataset(Dataset):
    """Images held in memory (``[N, H, W]`` grey or ``[N, H, W, 3]`` RGB, values in [0, 1]),
    resized on access to ``image_size`` with bicubic interpolation, clamped to [0, 1], made three
    channels and normalised. Items: ``(float tensor [3, H', W'], int label)``.

    Batched access (``__getitems__``, used by ``DataLoader``) resizes a whole batch at once.
    """

    def __init__(self, images, labels, *, image_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 classes: Optional[Sequence[str]] = None, name: str = "images"):
        images = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        if images.ndim == 3:
            images = images[:, None]
        elif images.ndim == 4 and images.shape[-1] in (1, 3):
            images = images.permute(0, 3, 1, 2)
        else:
            raise ValueError(f"images must be [N, H, W] or [N, H, W, 1|3], got {tuple(images.shape)}")
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != images.shape[0]:
            raise ValueError(f"{len(labels)} labels for {images.shape[0]} images")
        self.images = images.contiguous()
        self.labels = labels
        self.image_size, self.mean, self.std = _resolve_norm(None, image_size, mean, std, 64)
        self._mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std).view(1, 3, 1, 1)
        self.classes = list(classes) if classes is not None else [str(c) for c in np.unique(labels)]
        self.num_classes = len(self.classes)
        self.name = name

    def __len__(self):
        return self.images.shape[0]

    def _transform(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, h, w] in [0, 1]
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False)
            x = x.clamp_(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self._mean) / self._std

    def __getitem__(self, i):
        i = int(i)
        return self._transform(self.images[i:i + 1])[0], int(self.labels[i])

    def __getitems__(self, indices):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        x = self._transform(self.images[idx])
        return [(x[k], int(self.labels[j])) for k, j in enumerate(idx.tolist())]

    def __repr__(self):
        return (f"{type(self).__name__}({self.name}, n={len(self)}, classes={self.num_classes}, "
                f"image_size={self.image_size})")


def digits(split: str = "train", *, image_size=64, seed: int = 0, mean=None, std=None, model=None,
           fractions: Sequence[float] = (0.6, 0.2, 0.2)) -> ArrayImageDataset:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), offline.

    Pixel values 0..16 are scaled to [0, 1], upscaled bicubically to ``image_size``, repeated to
    three channels and normalised (ImageNet mean/std unless ``mean``/``std`` or ``model`` say
    otherwise). ``split``: "train" | "val" | "test" (a stratified 60/20/20 split fixed by
    ``seed``) or "all" (data order).

    Returns a Dataset of ``(float tensor [3, image_size, image_size], int label)``.

    Example:
        >>> ds = digits("train", image_size=32)
        >>> x, y = ds[0]; x.shape, len(ds), ds.num_classes
        (torch.Size([3, 32, 32]), 1077, 10)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    idx = stratified_split(labels, split, seed=seed, fractions=fractions)
    size, mean, std = _resolve_norm(model, image_size, mean, std, 64)
    return ArrayImageDataset(images[idx], labels[idx], image_size=size, mean=mean, std=std,
                             classes=[str(c) for c in range(10)], name=f"digits/{split}")


def lfw(split: str = "train", *, image_size=64, seed: int = 0, mean=None, std=None, model=None,
        fractions: Sequence[float] = (0.6, 0.2, 0.2)) -> ArrayImageDataset:
    """scikit-image's bundled ``lfw_subset``: 200 grey 25x25 images, the first 100 faces
    (label 1), the other 100 non-faces (label 0). Same splits and transform as :func:`digits`.

    Example:
        >>> ds = lfw("all", image_size=32); len(ds), ds.classes
        (200, ['non-face', 'face'])
    """
    from skimage.data import lfw_subset

    images = np.asarray(lfw_subset(), dtype=np.float32)
    labels = np.zeros(len(images), dtype=np.int64)
    labels[:100] = 1
    idx = stratified_split(labels, split, seed=seed, fractions=fractions)
    size, mean, std = _resolve_norm(model, image_size, mean, std, 64)
    return ArrayImageDataset(images[idx], labels[idx], image_size=size, mean=mean, std=std,
                             classes=["non-face", "face"], name=f"lfw/{split}")


BUNDLED_IMAGE_SIZE = 64  # digits (8 px) and faces (62 x 47) upscaled; the model's size is wasted


def default_image_size(spec: str, model: str = "") -> Optional[int]:
    """The input size a job uses for the data ``spec`` when none is given: 64 px for the
    bundled sets, None (the model's own input size) for image files and for a transformers
    model (``hf:FOLDER``: its configuration fixes the size). Every job resolves it here, so
    ``run`` and ``score`` see the same images."""
    kind = str(spec).partition(":")[0].lower()
    if str(model).startswith("hf:"):
        return None
    return BUNDLED_IMAGE_SIZE if kind in ("digits", "lfw") else None


def from_spec(spec: str, split: str = "train", *, image_size=None, model=None, seed: int = 0,
              on_bad_image: str = "fail", **kwargs) -> Union[ArrayImageDataset, FileListDataset]:
    """A dataset from a short spec (the CLI's ``--data``):

    * ``"digits"`` / ``"lfw"`` -- bundled sets (stratified split fixed by ``seed``);
    * ``"vtab:PATH"`` -- a VTAB-1k task folder (train -> train800, val -> val200, test -> test,
      all -> train800val200; the VTAB names work too);
    * ``"folder:PATH"`` -- an ImageFolder layout (``PATH/<split>/`` if present, else a split).

    ``image_size`` None means the model's input size when ``model`` is given, else 64 px for the
    bundled sets and 224 px for image files. ``on_bad_image`` ("fail" | "skip") applies to image
    files (:class:`sls_fast.io.imagefiles.FileListDataset`).

    Example:
        >>> ds = from_spec("digits", "val", image_size=32); len(ds)
        360
    """
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"spec must be a non-empty string, got {spec!r}")
    kind, _, arg = spec.partition(":")
    kind = kind.lower()
    if kind in ("digits", "lfw"):
        if arg:
            raise ValueError(f"{kind!r} takes no path, got {spec!r}")
        fn = digits if kind == "digits" else lfw
        return fn(split, image_size=image_size, seed=seed, model=model, **kwargs)
    if kind in ("vtab", "folder"):
        if not arg:
            raise ValueError(f"{kind!r} needs a path: '{kind}:PATH'")
        if kind == "vtab":
            return vtab(arg, split, image_size=image_size, model=model, on_bad_image=on_bad_image,
                        **kwargs)
        return image_folder(arg, split, image_size=image_size, model=model, seed=seed,
                            on_bad_image=on_bad_image, **kwargs)
    raise ValueError(f"unknown data spec {spec!r}; use 'digits', 'lfw', 'vtab:PATH' or 'folder:PATH'")

