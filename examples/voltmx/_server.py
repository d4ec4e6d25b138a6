"""Where the examples talk to: argv[1] (a base URL), or a test server started here."""

from __future__ import annotations

import sys

from bgtransfer.testing import FaultServer

GUIDE = b"iPhone App Programming Guide (a stand-in for Apple's PDF)\n" * 2000
_servers: list[FaultServer] = []


def base_url() -> str:
    """The project's test server: ``/upload/<name>`` stores bodies, ``/echo`` describes them."""
    if len(sys.argv) > 1:
        return sys.argv[1].rstrip("/")
    server = FaultServer()
    server.start()
    _servers.append(server)  # kept alive until the script ends
    return server.base_url


def example_url() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    server = FaultServer()
    server.start()
    _servers.append(server)
    return server.add("iphoneappprogrammingguide.txt", GUIDE) + "?rate=50000"
