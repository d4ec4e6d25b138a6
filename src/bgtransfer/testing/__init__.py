"""Test and demo helpers: a fault-injecting HTTP/1.1 server and deterministic content.

``FaultServer`` serves ``/r/<name>`` resources and ``/gen/<size>`` generated
files over real loopback sockets and can be told, per request via query
parameters, to cut, reset, stall, throttle or lie. It also accepts uploads
(``/upload/<name>`` plain and multipart, tus 1.0.0 at ``/tus/``, the IETF
resumable-upload draft at ``/ietf/<name>``) that can be cut, refused or lost, and
serves what integrity, refresh and mirror features are tested with: RFC 9530
digests (right or wrong), expiring signed URLs (:meth:`FaultServer.sign_url`),
lying mirrors, ``.sha256`` / ``SHA256SUMS`` files and Metalink 4 documents. See
:mod:`bgtransfer.testing._server` (which points to the module of each part;
the knobs are in :mod:`bgtransfer.testing._knobs`), or run
``python -m bgtransfer.testing``.
"""

from bgtransfer.testing._data import gen_bytes, gen_chunk, gen_sha256, parse_size
from bgtransfer.testing._server import (
    FIXED_LAST_MODIFIED,
    FaultServer,
    IetfUpload,
    RequestRecord,
    TusUpload,
)

__all__ = [
    "FIXED_LAST_MODIFIED",
    "FaultServer",
    "IetfUpload",
    "RequestRecord",
    "TusUpload",
    "gen_bytes",
    "gen_chunk",
    "gen_sha256",
    "parse_size",
]
