"""Image files on disk: a list of ``(path, label)``, a VTAB-1k task folder, an ImageFolder tree.

Unreadable images are handled by ``on_bad_image``: ``"fail"`` (default) raises a ValueError
naming the file when it is read; ``"skip"`` opens every image once up front, drops the unreadable
ones and warns with their count (:class:`BadImagesWarning`).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from sls_fast.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, SPLITS, VTAB_SPLITS, _VTAB_ALIASES, _resolve_norm, \
    stratified_split

__all__ = ["FileListDataset", "BadImagesWarning", "ON_BAD_IMAGE", "read_vtab_list", "vtab",
           "image_folder"]

ON_BAD_IMAGE = ("fail", "skip")


class BadImagesWarning(UserWarning):
    """Some image files could not be read and were skipped (``on_bad_image="skip"``)."""


def _file_transform(image_size, mean, std, interpolation="bicubic"):
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    mode = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}.get(interpolation)
    if mode is None:
        raise ValueError(f"interpolation must be bicubic, bilinear or nearest, got {interpolation!r}")
    return transforms.Compose([
        transforms.Resize(tuple(image_size), interpolation=mode),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def _open_rgb(path):
    """The image at ``path`` as RGB; ValueError naming the file when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc} (pass "
                         "on_bad_image='skip' / --on-bad-image skip to leave such files out)") from None


def _readable(samples):
    """The samples whose image decodes, and the number left out."""
    good = []
    for p, y in samples:
        try:
            _open_rgb(p)
        except ValueError:
            continue
        good.append((p, y))
    return good, len(samples) - len(good)


class FileListDataset(Dataset):
    """Images listed as ``(path, label)``; each opened with PIL as RGB, resized to
    ``image_size`` (bicubic by default) and normalised. Items: ``(float tensor [3, H, W], int)``.

    ``on_bad_image``: "fail" (an unreadable file is a ValueError naming it, when read) or
    "skip" (every file is decoded once now; unreadable ones are dropped with a
    :class:`BadImagesWarning` giving their count).
    """

    def __init__(self, samples, *, image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 interpolation="bicubic", classes: Optional[Sequence[str]] = None, name="files",
                 on_bad_image: str = "fail"):
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.skipped = 0
        if on_bad_image == "skip":
            self.samples, self.skipped = _readable(self.samples)
            if self.skipped:
                warnings.warn(f"{name}: skipped {self.skipped} unreadable image file(s) of "
                              f"{self.skipped + len(self.samples)}", BadImagesWarning, stacklevel=2)
            if not self.samples:
                raise ValueError(f"{name}: none of the image files could be read")
        self.labels = np.asarray([y for _, y in self.samples], dtype=np.int64)
        self.image_size, self.mean, self.std = _resolve_norm(None, image_size, mean, std, 224)
        self.transform = _file_transform(self.image_size, self.mean, self.std, interpolation)
        if classes is None:
            classes = [str(c) for c in np.unique(self.labels)]
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.name = name

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, y = self.samples[int(i)]
        return self.transform(_open_rgb(path)), y

    def __repr__(self):
        return (f"{type(self).__name__}({self.name}, n={len(self)}, classes={self.num_classes}, "
                f"image_size={self.image_size})")


def read_vtab_list(list_file) -> list:
    """Parse a VTAB-1k list file: one ``relative/path.jpg label`` per line (blank lines skipped).
    Returns ``[(relative_path, int label), ...]`` in file order; malformed lines raise ValueError
    with the line number."""
    out = []
    with open(list_file, "r") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise ValueError(f"{list_file}:{lineno}: expected 'relative/path.jpg label', got {line!r}")
            try:
                label = int(parts[1])
            except ValueError:
                raise ValueError(f"{list_file}:{lineno}: label {parts[1]!r} is not an integer") from None
            out.append((parts[0], label))
    return out


def vtab(task_dir, split: str = "train800", *, image_size=224, mean=None, std=None, model=None,
         interpolation: str = "bicubic", check_files: bool = True,
         on_bad_image: str = "fail") -> FileListDataset:
    """A VTAB-1k task folder as the reference code reads it.

    ``task_dir`` holds ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and ``test.txt``;
    each line is ``relative/path.jpg label`` (path relative to ``task_dir``). ``split`` is one of
    those names (aliases: "train" -> train800, "val" -> val200, "all"/"trainval" ->
    train800val200). Images are resized to ``image_size`` (bicubic, like the reference's
    ``Resize((224, 224), interpolation=3)``) and normalised with ``mean``/``std`` or the model's
    pretrained config.

    Example:
        >>> ds = vtab("vtab-1k/cifar", "train800", model=model)   # doctest: +SKIP
        >>> x, y = ds[0]; x.shape                                   # doctest: +SKIP
        torch.Size([3, 224, 224])
    """
    split = _VTAB_ALIASES.get(split, split)
    if split not in VTAB_SPLITS:
        raise ValueError(f"VTAB split must be one of {VTAB_SPLITS} (or train/val/all), got {split!r}")
    task_dir = os.fspath(task_dir)
    if not os.path.isdir(task_dir):
        raise ValueError(f"VTAB task folder {task_dir!r} does not exist")
    list_file = os.path.join(task_dir, f"{split}.txt")
    if not os.path.isfile(list_file):
        present = sorted(f for f in os.listdir(task_dir) if f.endswith(".txt"))
        raise ValueError(f"{list_file!r} not found; list files present: {present or 'none'}")
    entries = read_vtab_list(list_file)
    if not entries:
        raise ValueError(f"{list_file!r} lists no images")
    samples = [(os.path.join(task_dir, p), y) for p, y in entries]
    if check_files:
        missing = [p for p, _ in samples if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"{len(missing)} image(s) listed in {list_file!r} are missing, "
                             f"e.g. {missing[:3]}")
    size, mean, std = _resolve_norm(model, image_size, mean, std, 224)
    n_classes = int(max(y for _, y in samples)) + 1
    return FileListDataset(samples, image_size=size, mean=mean, std=std, interpolation=interpolation,
                           classes=[str(c) for c in range(n_classes)], on_bad_image=on_bad_image,
                           name=f"vtab:{os.path.basename(os.path.normpath(task_dir))}/{split}")


_IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def image_folder(path, split: Optional[str] = None, *, image_size=224, mean=None, std=None,
                 model=None, seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                 interpolation: str = "bicubic", on_bad_image: str = "fail") -> FileListDataset:
    """Images in one sub-folder per class (``path/<class>/<image>``), classes sorted by name.

    ``split``: None or "all" (every image); "train" | "val" | "test": ``path/<split>/`` when that
    folder exists, otherwise a stratified split of all images fixed by ``seed``.

    Example:
        >>> ds = image_folder("my_images", "train", image_size=224)   # doctest: +SKIP
    """
    path = os.fspath(path)
    if split not in (None, "all") and split not in SPLITS:
        raise ValueError(f"split must be None or one of {SPLITS}, got {split!r}")
    if split not in (None, "all") and os.path.isdir(os.path.join(path, split)):
        return image_folder(os.path.join(path, split), None, image_size=image_size, mean=mean,
                            std=std, model=model, interpolation=interpolation,
                            on_bad_image=on_bad_image)
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path!r} does not exist")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    samples = []
    for c, name in enumerate(classes):
        for root, _, files in sorted(os.walk(os.path.join(path, name))):
            for f in sorted(files):
                if f.lower().endswith(_IMG_EXT):
                    samples.append((os.path.join(root, f), c))
    if not samples:
        raise ValueError(f"no images found in {path!r} (expected one sub-folder per class "
                         f"holding {', '.join(_IMG_EXT)} files)")
    if split not in (None, "all"):
        idx = stratified_split([y for _, y in samples], split, seed=seed, fractions=fractions)
        samples = [samples[i] for i in idx]
    size, mean, std = _resolve_norm(model, image_size, mean, std, 224)
    return FileListDataset(samples, image_size=size, mean=mean, std=std, interpolation=interpolation,
                           classes=classes, on_bad_image=on_bad_image,
                           name=f"folder:{os.path.basename(os.path.normpath(path))}")
