"""Helpers of the ``sls-fast`` command line: the model options a command was given, progress
lines on stderr and the printed result."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from sls_fast.harness.tasks import ModelSpec


def _say(args, *msg):
    """Human-readable progress on stderr (stdout stays clean for --json)."""
    if not args.quiet:
        print(*msg, file=sys.stderr, flush=True)


def _emit(args, data: dict, text: str) -> dict:
    """Print ``data`` as JSON with --json, else ``text``; returns ``data``."""
    if args.json:
        print(json.dumps(data, indent=1, default=float))
    else:
        print(text)
    return data


def _emit_result(args, result) -> dict:
    """Print a typed result (:mod:`sls_fast.harness.reports`): its JSON form with --json, else
    its summary; returns the JSON form."""
    return _emit(args, result.to_dict(), result.summary())


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with each option's default where it says something: not for flags (their name
    says it), not for None (the help says what None means), not twice (the settings' help
    already carries its default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is argparse.SUPPRESS
                or isinstance(action.default, bool) or "(default" in text):
            return text
        return super()._get_help_string(action) or text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


_MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelSpec))


def _model_overrides(args) -> dict:
    """The model options given on the command line (a folder's meta fills in the rest)."""
    return {k: getattr(args, k, None) for k in _MODEL_KEYS}


def _model_spec(args) -> ModelSpec:
    """The model the command line names."""
    return ModelSpec.resolve(_model_overrides(args))
