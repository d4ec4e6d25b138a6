"""Calling the app's handlers as a JavaScript runtime would."""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Callable

__all__ = ["call_handler"]


def _takes_an_argument(fn: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in (*positional, inspect.Parameter.VAR_POSITIONAL) for p in params)


def call_handler(fn: Callable[..., object], arg: object) -> None:
    """``fn(arg)``, or ``fn()`` for a handler that takes nothing (the docs' callbacks read the
    request from a variable, as JavaScript's ``this``); an exception is printed, like a
    browser console does, and the request goes on."""
    try:
        if _takes_an_argument(fn):
            fn(arg)
        else:
            fn()
    except Exception:  # noqa: BLE001 - reported, never allowed to stop the request
        traceback.print_exc(file=sys.stderr)
