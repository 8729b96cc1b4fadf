"""Command-line options generated from the settings' one source
(:mod:`sls_fast.harness.settings`): every :class:`TaskSettings` field is an option of
``sls-fast run`` and, unless it is given per cell, of ``sls-fast sweep``; the sweep's axes take
several values; :class:`SweepOptions` are the sweep's Ray options. Options the user did not give
stay out of the namespace, so the settings' own defaults (or ``--quick``'s) apply."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Iterable, Tuple

from sls_fast.harness.settings import (AXES, SweepOptions, TaskSettings, default_of,
                                      setting_fields)
from sls_fast.harness.sweep.spec import SHARED, SweepSpec, read_spec_file, spec_keys

__all__ = ["add_task_options", "add_sweep_options", "add_setting_option", "settings_from_args",
           "sweep_from_args"]


def _flag(f, plural: bool = False) -> str:
    if plural:
        return "--" + AXES[f.name].replace("_", "-")
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _add(parser, f, *, plural: bool = False, default: Any = argparse.SUPPRESS,
         flag: str = "", dest: str = "", **overrides: Any) -> None:
    meta = f.metadata
    dest = dest or (AXES[f.name] if plural else f.name)
    choices = meta.get("choices")
    help_text = meta["help"]
    if plural:  # NAME [NAME ...], the choices in the help
        help_text += "; one cell per value" + (
            "; one of " + ", ".join(choices) + " or all" if choices else "")
    if f.default is not None and meta["kind"] is not bool:  # None and flags say it in the help
        help_text += f" (default: {f.default})"
    kw: Dict[str, Any] = dict(dest=dest, default=default, help=help_text)
    if meta["kind"] is bool:
        kw.update(action="store_const", const=not f.default)
    else:
        kw.update(type=meta["kind"], metavar=meta.get("metavar"))
        if choices and plural:
            kw.update(choices=choices + ("all",), metavar=f.name.upper())
        elif choices:
            kw.update(choices=choices)
            kw.pop("metavar")
        if plural:
            kw.update(nargs="+")
        elif meta.get("const") is not None:  # --flag alone means const
            kw.update(nargs="?", const=meta["const"])
    kw.update(overrides)
    parser.add_argument(flag or _flag(f, plural), **kw)


def add_task_options(parser: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    """Every :class:`TaskSettings` field as an option (``sweep``: the shared ones and the axes
    in the plural, several values each)."""
    group = parser.add_argument_group("settings (sls_fast.harness.settings.TaskSettings)")
    for f in setting_fields():
        if sweep and f.name in AXES:
            _add(group, f, plural=True)
        elif not sweep or f.name in SHARED:
            _add(group, f)


def add_sweep_options(parser: argparse.ArgumentParser) -> None:
    """:class:`SweepOptions` (where the cells run) as options."""
    group = parser.add_argument_group("Ray (sls_fast.harness.settings.SweepOptions)")
    for f in setting_fields(SweepOptions):
        _add(group, f)


def add_setting_option(parser: Any, name: str, *, flag: str = "", **overrides: Any) -> None:
    """One setting as an option with the setting's own default, help and choices (the commands
    that take a few settings: score, prune, bench); ``flag`` renames the option, the value
    still goes to ``args.<name>``."""
    f = next(f for f in setting_fields() if f.name == name)
    _add(parser, f, default=overrides.pop("default", default_of(name)), flag=flag, **overrides)


def _given(args: argparse.Namespace, names: Iterable[str]) -> Dict[str, Any]:
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


def settings_from_args(args: argparse.Namespace) -> TaskSettings:
    """The :class:`TaskSettings` of ``sls-fast run``'s options: what was given, on top of
    ``--quick``'s reduced setting when it is given, on top of the defaults."""
    given = _given(args, [f.name for f in setting_fields()])
    return TaskSettings.quick(**given) if getattr(args, "quick", False) else TaskSettings(**given)


def sweep_from_args(args: argparse.Namespace) -> Tuple[Any, SweepOptions]:
    """The :class:`SweepSpec` and :class:`SweepOptions` of ``sls-fast sweep``'s options and its
    ``--spec`` file (the options override the file's keys)."""
    given: Dict[str, Any] = read_spec_file(args.spec) if getattr(args, "spec", None) else {}
    given.update(_given(args, spec_keys()))  # the options override the file's keys
    if isinstance(given.get("checkpoints"), list):
        given["checkpoints"] = _pairs(given["checkpoints"])
    option_names = [f.name for f in setting_fields(SweepOptions)]
    options = SweepOptions(**{k: given.pop(k) for k in option_names if k in given})
    return SweepSpec.from_dict(given), options


def _pairs(items: Iterable[Any]) -> Dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = str(item).partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkpoint takes MODEL=FILE, got {item!r}")
        out[name] = path
    return out
