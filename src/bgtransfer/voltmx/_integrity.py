"""HTTP integrity checking (``voltmx.net.setIntegrityCheck``) mapped onto digests.

Volt MX Foundry's checksum scheme is not published, so this port uses an open one: the
request carries ``<headerName>: hex(algo(salt + body))``; a response passes when it carries
the same kind of header for its own body, or a standard ``Repr-Digest`` / ``Content-Digest``
``sha-256`` (RFC 9530) that matches the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from bgtransfer.voltmx import constants
from bgtransfer.voltmx._errors import VoltMXError

__all__ = [
    "IntegrityParams",
    "check_response",
    "current",
    "remove",
    "request_header",
    "set_params",
]

_ALGOS = {"MD5": "md5", "SHA1": "sha1", "SHA224": "sha224", "SHA256": "sha256",
          "SHA384": "sha384", "SHA512": "sha512"}  # fmt: skip
_HOST = re.compile(r"^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")
_PIECE = 1 << 20


@dataclass(frozen=True)
class IntegrityParams:
    algo: str
    salt: str
    header_name: str
    validate: bool
    hosts: tuple[str, ...] | None

    def applies_to(self, url: str) -> bool:
        if self.hosts is None:
            return True
        host = (urlsplit(url).hostname or "").lower()
        for pattern in self.hosts:
            p = pattern.lower()
            if p == host or (p.startswith("*.") and host.endswith(p[1:])):
                return True
        return False

    def digest_file(self, path: str | None) -> str:
        h = hashlib.new(self.algo)
        h.update(self.salt.encode())
        if path is not None:
            with open(path, "rb") as f:
                while piece := f.read(_PIECE):
                    h.update(piece)
        return h.hexdigest()


_lock = threading.Lock()
_params: IntegrityParams | None = None


def set_params(table: object) -> None:
    """``voltmx.net.setIntegrityCheck(propertiesTable)``; errors 100 (invalid argument or
    parameter name) and 101 (missing argument), as the docs list them."""
    global _params
    if not isinstance(table, Mapping):
        raise VoltMXError(100, "setIntegrityCheck needs a propertiesTable object")
    known = {"algo", "salt", "headerName", "validateResp", "hostNameList", "hostNamesList"}
    unknown = sorted(str(k) for k in table if k not in known)
    if unknown:
        raise VoltMXError(100, f"invalid parameter name: {', '.join(unknown)}")
    for key in ("algo", "salt", "headerName", "validateResp"):
        if key not in table:
            raise VoltMXError(101, f"setIntegrityCheck: missing argument {key}")
    algo, salt, header, validate = (
        table["algo"], table["salt"], table["headerName"], table["validateResp"]
    )  # fmt: skip
    if not isinstance(algo, str) or algo.strip().upper() not in _ALGOS:
        raise VoltMXError(100, f"algo must be one of {', '.join(_ALGOS)}, not {algo!r}")
    if not isinstance(salt, str):
        raise VoltMXError(100, "salt must be a string")
    if not isinstance(header, str) or not re.fullmatch(
        r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header.strip()
    ):
        raise VoltMXError(100, f"headerName must be a non-empty header name, not {header!r}")
    if not isinstance(validate, bool):
        raise VoltMXError(100, "validateResp must be true or false")
    hosts_raw = table.get("hostNameList", table.get("hostNamesList"))
    hosts: tuple[str, ...] | None = None
    if hosts_raw is not None:
        if not isinstance(hosts_raw, list | tuple) or not all(
            isinstance(h, str) and _HOST.match(h.strip()) for h in hosts_raw
        ):
            raise VoltMXError(100, "hostNameList must be host names ('*.' only as a prefix)")
        hosts = tuple(h.strip() for h in hosts_raw)
    params = IntegrityParams(
        algo=_ALGOS[algo.strip().upper()],
        salt=salt.strip()[:1024],
        header_name=header.strip()[:64],
        validate=validate,
        hosts=hosts,
    )
    with _lock:
        _params = params


def remove() -> None:
    global _params
    with _lock:
        _params = None


def current() -> IntegrityParams | None:
    with _lock:
        return _params


def for_request(url: str, disabled: bool) -> IntegrityParams | None:
    """The integrity check a request to ``url`` carries: the global one, unless the request
    disabled it or the check's URL filter leaves this URL out."""
    params = current()
    if params is None or disabled or not params.applies_to(url):
        return None
    return params


def request_header(params: IntegrityParams, body_path: str | None) -> tuple[str, str]:
    return params.header_name, params.digest_file(body_path)


def check_response(
    params: IntegrityParams, headers: Iterable[tuple[str, str]], body_path: str | None
) -> int:
    """The integrityStatus of a received response."""
    by_name: dict[str, str] = {k.lower(): v for k, v in headers}
    sent = by_name.get(params.header_name.lower())
    if sent is not None:
        ok = hmac.compare_digest(sent.strip().lower(), params.digest_file(body_path))
        return _status(ok)
    for field in ("repr-digest", "content-digest"):
        value = by_name.get(field)
        if value is None:
            continue
        m = re.search(r"sha-256=:([A-Za-z0-9+/=]+):", value)
        if m is None:
            continue
        h = hashlib.sha256()
        if body_path is not None:
            with open(body_path, "rb") as f:
                while piece := f.read(_PIECE):
                    h.update(piece)
        return _status(hmac.compare_digest(base64.b64encode(h.digest()).decode(), m.group(1)))
    return constants.HTTP_INTEGRITY_CHECK_FAILED


def _status(ok: bool) -> int:
    return (
        constants.HTTP_INTEGRITY_CHECK_SUCCESSFUL if ok else constants.HTTP_INTEGRITY_CHECK_FAILED
    )
