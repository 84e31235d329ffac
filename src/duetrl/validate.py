"""Checks of single settings, each raising a :class:`UserError` that names the key and says what is allowed.

A leaf module (it imports only ``errors``), so that config and every algorithm can use it without an import cycle.
"""

from __future__ import annotations

import math
from typing import Any

from duetrl.errors import UserError


def check(ok: bool, key: str, value: Any, why: str) -> None:
    """Raise a UserError ``key=value why`` unless ``ok``."""
    if not ok:
        raise UserError(f"{key}={value!r} {why}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise a UserError unless value is finite and low <= value <= high."""
    if not math.isfinite(value):
        raise UserError(f"{key}={value!r} must be a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise UserError(f"{key}={value!r} is out of range: must be in [{lo}, {hi}]")


def check_choice(key: str, value: str, options: tuple[str, ...]) -> None:
    """Raise a UserError unless value is one of options."""
    if value not in options:
        raise UserError(f"{key}={value!r} is not one of: {', '.join(options)}")


def check_widths(key: str, widths: list[int]) -> None:
    """Raise a UserError unless widths lists positive layer widths."""
    if not widths or any(w < 1 for w in widths):
        raise UserError(f"{key}={widths!r} must list positive layer widths, e.g. [64, 64]")
