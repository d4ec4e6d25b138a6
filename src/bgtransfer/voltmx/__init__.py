"""A port of Volt MX ``voltmx.net.HttpRequest`` with background transfers.

from bgtransfer import voltmx
constants = voltmx.constants
request = voltmx.net.HttpRequest({"timeoutIntervalForRequest": 60})
request.backgroundTransfer = True
request.open(constants.HTTP_METHOD_GET, url)
request.send()
"""

from __future__ import annotations

import builtins

from bgtransfer.voltmx import constants, net

__all__ = ["constants", "net", "print"]


def print(*args: object) -> None:
    """``voltmx.print``: one log line on stdout, flushed at once."""
    builtins.print(*args, flush=True)
