"""One convention for checking arguments, in the style of scikit-learn's ``check_scalar``: a
value of the wrong type is a TypeError, a value out of range a ValueError, both worded
"NAME must be WHAT, got VALUE". NumPy scalars are accepted wherever Python numbers are and
come back as Python numbers.

Example:
    >>> import numpy as np
    >>> check_number(np.float32(0.5), "alpha", low=0)
    0.5
    >>> check_number(-1, "seed", integer=True, low=0)
    Traceback (most recent call last):
    ...
    ValueError: seed must be an integer >= 0, got -1
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Literal, Optional, Sequence, Union, overload

__all__ = ["check_number", "check_choice"]

Number = Union[int, float]


@overload
def check_number(value: Any, name: str, *, integer: bool = ..., low: Optional[Number] = ...,
                 high: Optional[Number] = ..., low_open: bool = ...,
                 allow_none: Literal[False] = ...) -> Number: ...


@overload
def check_number(value: Any, name: str, *, integer: bool = ..., low: Optional[Number] = ...,
                 high: Optional[Number] = ..., low_open: bool = ...,
                 allow_none: bool = ...) -> Optional[Number]: ...


def check_number(value: Any, name: str, *, integer: bool = False, low: Optional[Number] = None,
                 high: Optional[Number] = None, low_open: bool = False,
                 allow_none: bool = False) -> Optional[Number]:
    """``value`` as an ``int`` (``integer``) or ``float``, checked to lie in ``[low, high]``
    (``(low, high]`` with ``low_open``); None passes when ``allow_none``."""
    what = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    wanted = " ".join([what] + [" and ".join(bounds)] if bounds else [what])
    if value is None and allow_none:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {wanted}{' or None' if allow_none else ''}, got "
                        f"{value!r} ({type(value).__name__})")
    v: Any = value  # a numbers.Real / Integral: int() and float() take it
    out: Number = int(v) if integer else float(v)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be {wanted} (finite), got {value!r}")
    if (low is not None and (out <= low if low_open else out < low)) or \
            (high is not None and out > high):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return out


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (ValueError naming them otherwise; an array, which
    cannot be compared with them, is a TypeError)."""
    if hasattr(value, "shape") and getattr(value, "shape", ()) != ():
        raise TypeError(f"{name} must be one of {tuple(choices)}, got an array of shape "
                        f"{tuple(value.shape)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
