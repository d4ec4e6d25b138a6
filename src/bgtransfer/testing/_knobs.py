"""The fault knobs of ``/r`` and ``/gen`` (query parameters) and of tus/IETF uploads.

Fault knobs
-----------
Query parameters on ``/r/<name>`` and ``/gen/<size>``; they combine.

Failure knobs, limited by ``times``:

``times=K``
    Apply the failure knobs only to the first K requests of this *fault key*
    (request path plus the whole query string, so add a unique ``key=...`` to
    isolate a test). Default: every request. :meth:`FaultServer.reset_counters`
    starts counting again.
``cut=N``
    Full headers (true Content-Length), only N body bytes, then a clean FIN.
``rst=N``
    N body bytes (delivered to the peer first), then a TCP RST.
``stall_headers=S``
    Wait S seconds (float) before sending anything.
``stall_body=N&stall=S``
    Send N body bytes, pause S seconds, then continue.
``status=CODE``
    Answer CODE (200-599) with the text body ``error page CODE`` instead of the
    resource. ``retry_after=VALUE`` adds ``Retry-After: VALUE`` verbatim;
    ``retry_after_in=S`` adds it as an HTTP-date S seconds from now.
``chunked_cut=N``
    Chunked encoding, connection closed after N body bytes without the final
    zero-length chunk. (When ``times`` is exhausted it is plain ``chunked=1``.)

Always-on knobs:

``trickle=B&interval=S``
    Send the body B bytes at a time, S seconds apart.
``rate=R``
    Throttle the body to R bytes/second (pieces of min(64 KiB, R/10)).
``ignore_range=1``
    Ignore Range/If-Range: always 200 with the full body.
``ignore_if_range=1``
    Honour Range whatever If-Range says: a 206 of the *current* version (with its
    own ETag and Last-Modified) even when the client's validator is an older one's,
    as S3 does.
``wrong_range=K``
    Answer a Range with 206 whose Content-Range *and body* start K bytes after
    the requested start (a lying server).
``full_as_206=1``
    Every GET is 206 ``bytes 0-(size-1)/size`` with the full body.
``range_as_200=1``
    Honour the Range but answer 200 (with a correct Content-Range header).
``bad_total=1``
    Correct 206 except that the Content-Range total is size + 1000.
``long_length=K``
    Every answer's Content-Length claims K more bytes than the body has (Content-Range
    is true); the connection closes after the body (a server with a wrong length).
``etag_change=1``
    Each request bumps the version first: new ETag, new Last-Modified and
    different bytes (``/gen``: content of seed + version; ``/r``: data XORed
    with a per-version byte), so If-Range never matches and the answer is 200.
``no_etag=1`` / ``weak_etag=1`` / ``no_last_modified=1``
    Drop the ETag, send it as ``W/"..."``, drop Last-Modified.
``no_accept_ranges=1``
    Do not send ``Accept-Ranges: bytes``.
``chunked=1``
    ``Transfer-Encoding: chunked`` (64 KiB chunks), no Content-Length.
``gzip=1``
    ``Content-Encoding: gzip`` whatever Accept-Encoding says; the representation
    is ``gzip.compress(body, mtime=0)`` and Range/Content-Length apply to those
    gzip bytes (RFC 9110 section 14.1.2).
``huge_headers=N``
    Add N headers ``X-Filler-<i>: xxx...`` (100 x's).
``disposition=VALUE``
    Send ``Content-Disposition: VALUE`` verbatim (for file-naming tests).
``changes_every=S``
    ``/gen`` only: a new version (ETag, Last-Modified, bytes) every S seconds of the
    server's life, for polling clients (background fetch jobs).

Integrity knobs (see :mod:`bgtransfer.testing._integrity` for the headers):

``digest=1``
    Send ``Repr-Digest`` and ``Content-Digest`` (sha-256 and sha-512) even when the
    request has no ``Want-Repr-Digest`` / ``Want-Content-Digest``.
``goog_hash=1`` / ``amz_checksum=1``
    Send ``x-goog-hash: crc32c=..,md5=..`` / ``x-amz-checksum-sha256`` of the object.
``bad_digest=repr|content|goog|amz|all``
    A failure knob (limited by ``times``): those headers are sent, and wrong (one bit
    off), while the bytes are right. Comma-separated values combine.

Lying mirrors (always on):

``lie=1``
    Other bytes of the same length (every byte XORed with 0xA5) under another ETag
    (``"<etag>-lie"``), Last-Modified unchanged: a mirror with a different file.
``lie=etag``
    The same, but with the true ETag and Last-Modified: a mirror that lies.
``lie_range=START-END``
    Only bytes ``[START, END)`` differ (a bad piece); implies ``lie=1`` unless ``lie``
    is given.


Invalid knob values get 400 with a text body naming the knob.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bgtransfer.testing._http import HttpError, http_date


@dataclass
class Knobs:
    times: int | None = None
    cut: int | None = None
    rst: int | None = None
    stall_headers: float | None = None
    stall_body: int | None = None
    stall: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    retry_after_in: float | None = None
    chunked_cut: int | None = None
    trickle: int | None = None
    interval: float = 0.0
    rate: float | None = None
    ignore_range: bool = False
    ignore_if_range: bool = False
    wrong_range: int | None = None
    full_as_206: bool = False
    range_as_200: bool = False
    bad_total: bool = False
    long_length: int = 0
    etag_change: bool = False
    no_etag: bool = False
    weak_etag: bool = False
    no_last_modified: bool = False
    no_accept_ranges: bool = False
    chunked: bool = False
    gzip: bool = False
    huge_headers: int = 0
    disposition: str | None = None
    changes_every: float | None = None
    digest: bool = False
    bad_digest: frozenset[str] = frozenset()
    goog_hash: bool = False
    amz_checksum: bool = False
    lie: str | None = None
    lie_range: tuple[int, int] | None = None

    @classmethod
    def parse(cls, q: Mapping[str, str]) -> Knobs:
        def num(name: str, conv: Callable[[str], float]) -> float | None:
            raw = q.get(name)
            if raw is None:
                return None
            try:
                value = conv(raw)
            except ValueError:
                raise HttpError(400, f"bad value for knob {name}: {raw!r}") from None
            if value < 0 and name != "wrong_range":
                raise HttpError(400, f"knob {name} must not be negative")
            return value

        def integer(name: str) -> int | None:
            v = num(name, int)
            return None if v is None else int(v)

        def flt(name: str) -> float | None:
            return num(name, float)

        def flag(name: str) -> bool:
            raw = q.get(name)
            return raw is not None and raw.lower() not in ("0", "false", "no", "off")

        status = integer("status")
        if status is not None and not 200 <= status <= 599:
            raise HttpError(400, "knob status must be in 200..599")
        rate = flt("rate")
        if rate is not None and rate <= 0:
            raise HttpError(400, "knob rate must be positive")
        trickle = integer("trickle")
        if trickle is not None and trickle <= 0:
            raise HttpError(400, "knob trickle must be positive")
        retry_after = q.get("retry_after")
        if retry_after is not None and ("\r" in retry_after or "\n" in retry_after):
            raise HttpError(400, "knob retry_after must not contain line breaks")
        return cls(
            times=integer("times"),
            cut=integer("cut"),
            rst=integer("rst"),
            stall_headers=flt("stall_headers"),
            stall_body=integer("stall_body"),
            stall=flt("stall") or 0.0,
            status=status,
            retry_after=retry_after,
            retry_after_in=flt("retry_after_in"),
            chunked_cut=integer("chunked_cut"),
            trickle=trickle,
            interval=flt("interval") or 0.0,
            rate=rate,
            ignore_range=flag("ignore_range"),
            ignore_if_range=flag("ignore_if_range"),
            wrong_range=integer("wrong_range"),
            full_as_206=flag("full_as_206"),
            range_as_200=flag("range_as_200"),
            bad_total=flag("bad_total"),
            long_length=integer("long_length") or 0,
            etag_change=flag("etag_change"),
            no_etag=flag("no_etag"),
            weak_etag=flag("weak_etag"),
            no_last_modified=flag("no_last_modified"),
            no_accept_ranges=flag("no_accept_ranges"),
            chunked=flag("chunked"),
            gzip=flag("gzip"),
            huge_headers=integer("huge_headers") or 0,
            disposition=q.get("disposition"),
            changes_every=positive(flt("changes_every"), "changes_every"),
            digest=flag("digest"),
            goog_hash=flag("goog_hash"),
            amz_checksum=flag("amz_checksum"),
            bad_digest=_bad_digest(q),
            lie=_lie(q),
            lie_range=_lie_range(q),
        )


def positive(value: float | None, name: str) -> float | None:
    if value is not None and value <= 0:
        raise HttpError(400, f"knob {name} must be positive")
    return value


@dataclass
class UploadFaults:
    cut_after: int | None = None
    conflict_once: bool = False
    lose_once: bool = False
    status_once: int | None = None
    retry_after: str | None = None

    def empty(self) -> bool:
        return (
            self.cut_after is None
            and not self.conflict_once
            and not self.lose_once
            and self.status_once is None
        )


def error_page(knobs: Knobs) -> tuple[bytes, list[tuple[str, str]]]:
    """The body and Retry-After headers of a ``status=CODE`` answer."""
    assert knobs.status is not None
    hdrs: list[tuple[str, str]] = []
    if knobs.retry_after is not None:
        hdrs.append(("Retry-After", knobs.retry_after))
    if knobs.retry_after_in is not None:
        hdrs.append(("Retry-After", http_date(knobs.retry_after_in)))
    page = b"" if knobs.status in (204, 304) else f"error page {knobs.status}".encode()
    return page, hdrs


BAD_DIGESTS = frozenset({"repr", "content", "goog", "amz"})


def _bad_digest(q: Mapping[str, str]) -> frozenset[str]:
    raw = q.get("bad_digest")
    if raw is None:
        return frozenset()
    bad = {p.strip() for p in raw.split(",") if p.strip()}
    if "all" in bad:
        bad = set(BAD_DIGESTS)
    if not bad or not bad <= BAD_DIGESTS:
        raise HttpError(400, "knob bad_digest takes repr, content, goog, amz or all")
    return frozenset(bad)


def _lie(q: Mapping[str, str]) -> str | None:
    lie = q.get("lie")
    if lie is None or lie in ("0", ""):
        return "1" if "lie_range" in q else None
    if lie not in ("1", "etag"):
        raise HttpError(400, "knob lie must be 1 or etag")
    return lie


def _lie_range(q: Mapping[str, str]) -> tuple[int, int] | None:
    raw = q.get("lie_range")
    if raw is None:
        return None
    first, _, last = raw.partition("-")
    if not (first.isdigit() and last.isdigit() and int(first) < int(last)):
        raise HttpError(400, "knob lie_range must be START-END with START < END")
    return int(first), int(last)
