"""Helpers of the ``sls-fast`` command line: building the model a command names (plain or
adapted, from the command line or a report's meta), reading reports, and printing results."""
from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Optional

from sls_fast.harness.settings import default_of



def _device(args):
    import torch

    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _say(args, *msg):
    """Human-readable progress on stderr (stdout stays clean for --json)."""
    if not args.quiet:
        print(*msg, file=sys.stderr, flush=True)


def _emit(args, result: dict, text: str):
    if args.json:
        print(json.dumps(result, indent=1, default=float))
    else:
        print(text)


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


class NoAdaptersWarning(UserWarning):
    """The scored model has no trained adapters: SLS scores the adapted model."""


_MODEL_KEYS = ("model", "image_size", "checkpoint", "base_checkpoint", "adapter", "adapter_dim",
               "adapter_scale")


def _model_spec(args, meta: Optional[dict] = None) -> dict:
    """How to build the model: the command line first, then a report's meta."""
    meta = meta or {}
    spec = {k: getattr(args, k, None) for k in _MODEL_KEYS}
    for k in _MODEL_KEYS:
        if spec[k] is None:
            spec[k] = meta.get(k)
    if not spec["model"]:
        raise ValueError("no model: pass --model NAME (or --report DIR of a scored model)")
    return spec


def _build(spec: dict, *, num_classes=None, quiet_random: bool = False):
    """The model of ``spec``: plain (``checkpoint`` = base weights) or, with ``adapter``, adapted
    (``checkpoint`` = adapted weights, ``base_checkpoint`` = backbone weights)."""
    from sls_fast.io.checkpoints import load_adapted, size_kwargs
    from sls_fast.models.zoo import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if quiet_random else "default")
        if spec["adapter"] is None:
            return load(spec["model"], checkpoint=spec["checkpoint"], num_classes=num_classes,
                        **size_kwargs(spec["model"], spec["image_size"]))
        return load_adapted(spec["model"], spec["adapter"], checkpoint=spec["checkpoint"],
                            base_checkpoint=spec["base_checkpoint"], image_size=spec["image_size"],
                            dim=spec["adapter_dim"] or default_of("adapter_dim"),
                            scale=spec["adapter_scale"],
                            num_classes=num_classes)


def _data(spec_data: str, split: str, args, model, image_size):
    from sls_fast.io.datasets import from_spec

    return from_spec(spec_data, split, image_size=image_size, model=model, seed=args.seed,
                     on_bad_image=getattr(args, "on_bad_image", "fail"))



def _read_report(folder: str):
    from sls_fast.method.score import LayerReport

    path = os.path.join(folder, "layers.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found; run 'sls-fast score --out {folder}' first")
    try:
        report = LayerReport.from_json(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable sls-fast report ({type(exc).__name__}: {exc})") from None
    if not report.meta.get("model") or not report.meta.get("data"):
        raise ValueError(f"{path} does not say which model/data it scored")
    return report
