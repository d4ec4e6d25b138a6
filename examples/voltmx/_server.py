"""Where the seed's examples download from: argv[1], or a test server started here."""

from __future__ import annotations

import sys

from bgtransfer.testing import FaultServer

GUIDE = b"iPhone App Programming Guide (a stand-in for Apple's PDF)\n" * 2000


def example_url() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    server = FaultServer()
    server.start()
    return server.add("iphoneappprogrammingguide.txt", GUIDE) + "?rate=50000"
