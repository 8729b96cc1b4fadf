"""A content-addressed cache of pipeline stages, so that cells of a sweep that share a stage's
inputs compute it once.

Every entry is named by a key: the SHA-256 of the stage's name and of everything that decides
its output (model weights by checksum, data by fingerprint, settings by value). A stage whose
key is in the cache is read back instead of computed. Entries are written atomically (a
temporary name, then one rename), so a crash or Ctrl-C never leaves a half-written entry, and
two processes computing the same entry at once both write a complete one.

Layout: ``ROOT/<stage>/<key>.safetensors`` (tensors, with a JSON record in the header) or
``ROOT/<stage>/<key>.json`` (a record alone).

Example:
    >>> import tempfile, torch
    >>> cache = StageCache(tempfile.mkdtemp())
    >>> key = cache_key("demo", size=3)
    >>> cache.get(key, "demo") is None
    True
    >>> cache.put(key, "demo", {"x": torch.zeros(3)}, {"note": "hi"})
    >>> tensors, record = cache.get(key, "demo")
    >>> record["note"], tensors["x"].shape
    ('hi', torch.Size([3]))
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from sls_fast.common.utils import atomic_path, write_text

__all__ = ["StageCache", "cache_key", "weights_checksum", "data_fingerprint",
           "features_to_tensors", "features_from_tensors"]


def cache_key(stage: str, **parts) -> str:
    """The key of ``stage`` computed from ``parts`` (JSON-serialisable values)."""
    text = json.dumps(dict(stage=stage, **parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor of ``model.state_dict()`` (names, dtypes, shapes, bytes):
    base weights, adapters and head together."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(data) -> str:
    """A SHA-256 that changes when the images, labels or preprocessing of ``data`` change.

    In-memory images (:class:`sls_fast.data.ArrayImageDataset`) hash their pixels; image files
    (:class:`sls_fast.io.imagefiles.FileListDataset`) hash each file's path, size and modification
    time; a ``Subset`` hashes its indices over its dataset's fingerprint. Any other dataset
    hashes every item it yields (slow, but never wrong).
    """
    h = hashlib.sha256()
    _fingerprint_into(h, data)
    return h.hexdigest()


def _fingerprint_into(h, data) -> None:
    from torch.utils.data import Subset

    from sls_fast.io.datasets import ArrayImageDataset
    from sls_fast.io.imagefiles import FileListDataset

    if isinstance(data, Subset):
        h.update(b"subset|" + np.asarray(data.indices, np.int64).tobytes())
        _fingerprint_into(h, data.dataset)
        return
    norm = lambda d: f"{d.image_size}|{tuple(d.mean)}|{tuple(d.std)}|".encode()  # noqa: E731
    if isinstance(data, ArrayImageDataset):
        h.update(b"arrays|" + norm(data))
        h.update(data.images.numpy().tobytes())
        h.update(np.asarray(data.labels, np.int64).tobytes())
        return
    if isinstance(data, FileListDataset):
        h.update(b"files|" + norm(data))
        for path, label in data.samples:
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
        return
    h.update(f"items|{type(data).__name__}|{len(data)}|".encode())
    for i in range(len(data)):
        x, y = data[i]
        h.update(torch.as_tensor(x).contiguous().numpy().tobytes())
        h.update(str(int(y)).encode())


class StageCache:
    """Stage results under ``root``: :meth:`get` reads one back (or None), :meth:`put` writes one.

    Args:
        root: the cache folder (made on first write).
    """

    def __init__(self, root: str):
        self.root = os.fspath(root)
        self.hits: Dict[str, int] = {}
        self.misses: Dict[str, int] = {}

    def _path(self, key: str, stage: str, suffix: str) -> str:
        return os.path.join(self.root, stage, key + suffix)

    def get(self, key: str, stage: str) -> Optional[Tuple[Dict[str, torch.Tensor], dict]]:
        """``(tensors, record)`` of the entry, or None when it is not cached. An entry that
        cannot be read (truncated by a disk fault, another version's layout) counts as absent."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        tpath, jpath = self._path(key, stage, ".safetensors"), self._path(key, stage, ".json")
        try:
            if os.path.isfile(tpath):
                with safe_open(tpath, framework="pt") as f:
                    record = json.loads((f.metadata() or {}).get("record", "{}"))
                out = (load_file(tpath), record)
            elif os.path.isfile(jpath):
                with open(jpath) as f:
                    out = ({}, json.load(f))
            else:
                out = None
        except (OSError, ValueError, SafetensorError):
            out = None
        counter = self.misses if out is None else self.hits
        counter[stage] = counter.get(stage, 0) + 1
        return out

    def put(self, key: str, stage: str, tensors: Optional[Dict[str, torch.Tensor]],
            record: dict) -> None:
        """Write an entry atomically: ``tensors`` (may be empty) and a JSON ``record``."""
        from safetensors.torch import save_file

        os.makedirs(os.path.join(self.root, stage), exist_ok=True)
        text = json.dumps(record, default=float)
        if tensors:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            with atomic_path(self._path(key, stage, ".safetensors")) as tmp:
                save_file(tensors, tmp, metadata={"record": text})
        else:
            write_text(self._path(key, stage, ".json"), text)


def features_to_tensors(feats) -> tuple:
    """A :class:`sls_fast.LayerFeatures` as ``(tensors, record)`` for :meth:`StageCache.put`."""
    f = feats.to_numpy()
    tensors = {"labels": torch.from_numpy(f.labels)}
    layers = [f.features] if f.stacked else list(f.features)
    for i, x in enumerate(layers):
        tensors[f"features.{i}"] = torch.from_numpy(x).contiguous()
    record = dict(layer_names=f.layer_names, widths=f.widths, pool=f.pool, stacked=f.stacked)
    return tensors, record


def features_from_tensors(tensors, record, device):
    """Inverse of :func:`features_to_tensors`, on ``device``."""
    from sls_fast.method.extract import LayerFeatures

    feats = [tensors[f"features.{i}"].to(device) for i in range(len(tensors) - 1)]
    return LayerFeatures(feats[0] if record["stacked"] else feats,
                         tensors["labels"].to(device), record["layer_names"], record["widths"],
                         record["pool"])
