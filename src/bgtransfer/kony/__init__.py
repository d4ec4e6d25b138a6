"""``kony.*``: the Volt MX port under the API's older name (Kony Visualizer).

``from bgtransfer import kony`` gives the very same objects as ``bgtransfer.voltmx``:
``kony.net.HttpRequest is voltmx.net.HttpRequest``.
"""

from __future__ import annotations

from bgtransfer.voltmx import constants, net, print

__all__ = ["constants", "net", "print"]
