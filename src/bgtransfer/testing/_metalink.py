"""Metalink 4 (RFC 5854) documents listing mirrors of one ``/r`` or ``/gen`` file.

``GET /metalink/r/<name>`` or ``/metalink/gen/<size>[?seed=S]`` answers
``application/metalink4+xml`` with one ``<file>``: its ``<size>``, a
``<hash type="sha-256">`` of the whole file, ``<pieces length="P" type="sha-256">``
with one ``<hash>`` per piece, and N ``<url priority="i">`` mirrors of the same bytes.

Query parameters (all others, such as ``seed``, are copied into every mirror URL):

``mirrors=N``
    How many URLs (1-16, default 3). Mirror 1 is the plain URL on this listener;
    mirror 2 is the same path on the other origin (``127.0.0.2``) when the server was
    started with ``other_host=True``; the rest add ``mirror=<i>`` to the query, which
    the server ignores, so each is a separate fault key.
``piece=SIZE``
    The piece length (K/M/G suffixes, default 256K).
``liar=I[,J...]``
    Those mirrors (1-based) carry ``lie=1``: same length, other bytes and ETag.
    ``liar_etag=1`` makes them ``lie=etag`` (the ETag and Last-Modified of the truth).
``name=FILENAME``
    The ``<file name>`` (default: the last path segment).

The sizes and hashes are those of the true bytes, as served now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Final
from urllib.parse import urlencode

from bgtransfer.testing._data import parse_size
from bgtransfer.testing._downloads import Downloads
from bgtransfer.testing._http import DIGITS, HttpError, Request, send_simple
from bgtransfer.testing._integrity import piece_digests, sha256_hex
from bgtransfer.testing._knobs import Knobs

NS: Final = "urn:ietf:params:xml:ns:metalink"
MEDIA_TYPE: Final = "application/metalink4+xml"
_OWN: Final = frozenset({"mirrors", "piece", "liar", "liar_etag", "name"})
_MAX_MIRRORS: Final = 16
_INLINE: Final = 1 << 20


def metalink_document(
    name: str, size: int, sha256: str, piece: int, pieces: list[str], urls: list[str]
) -> bytes:
    """The RFC 5854 XML of one file; hashes in lowercase hex."""
    ET.register_namespace("", NS)
    root = ET.Element(f"{{{NS}}}metalink")
    file = ET.SubElement(root, f"{{{NS}}}file", name=name)
    ET.SubElement(file, f"{{{NS}}}size").text = str(size)
    ET.SubElement(file, f"{{{NS}}}hash", type="sha-256").text = sha256
    if pieces:
        holder = ET.SubElement(file, f"{{{NS}}}pieces", length=str(piece), type="sha-256")
        for digest in pieces:
            ET.SubElement(holder, f"{{{NS}}}hash").text = digest
    for priority, url in enumerate(urls, 1):
        ET.SubElement(file, f"{{{NS}}}url", priority=str(priority)).text = url
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _liars(raw: str | None, mirrors: int) -> set[int]:
    if not raw:
        return set()
    parts = [p.strip() for p in raw.split(",")]
    if not all(DIGITS.match(p) and 1 <= int(p) <= mirrors for p in parts):
        raise HttpError(400, f"liar must list mirror numbers 1..{mirrors}")
    return {int(p) for p in parts}


class Metalinks:
    """Serves ``/metalink/...``."""

    def __init__(
        self,
        downloads: Downloads,
        base_for: Callable[[str], str],
        other_base: Callable[[], str | None],
    ) -> None:
        self.downloads = downloads
        self.base_for = base_for
        self.other_base = other_base

    def mirror_urls(self, req: Request, inner: str, mirrors: int) -> list[str]:
        q = req.query
        shared = [(k, v) for k, v in q.items() if k not in _OWN]
        liars = _liars(q.get("liar"), mirrors)
        lie = "etag" if q.get("liar_etag") not in (None, "0", "") else "1"
        base, other = self.base_for(req.host), self.other_base()
        urls = []
        for i in range(1, mirrors + 1):
            params = list(shared)
            host = other if i == 2 and other is not None else base
            if i > 1 and host == base:
                params.append(("mirror", str(i)))
            if i in liars:
                params.append(("lie", lie))
            urls.append(host + inner + (f"?{urlencode(params)}" if params else ""))
        return urls

    async def serve(self, writer: asyncio.StreamWriter, req: Request, keep: bool) -> bool:
        inner = req.path[len("/metalink") :]
        if not inner.startswith(("/r/", "/gen/")):
            raise HttpError(404, "metalinks are at /metalink/r/<name> or /metalink/gen/<size>")
        mirrors_text = req.query.get("mirrors", "3")
        if not DIGITS.match(mirrors_text) or not 1 <= int(mirrors_text) <= _MAX_MIRRORS:
            raise HttpError(400, f"mirrors must be 1..{_MAX_MIRRORS}")
        try:
            piece = parse_size(req.query.get("piece", "256K"))
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        if piece <= 0:
            raise HttpError(400, "piece must be positive")
        urls = self.mirror_urls(req, inner, int(mirrors_text))
        knobs = Knobs(changes_every=Knobs.parse(req.query).changes_every)
        rep = self.downloads.representation(dataclasses.replace(req, path=inner), knobs)
        body = rep.body

        def hashes() -> tuple[str, list[str]]:
            return sha256_hex(body), [d.hex() for d in piece_digests(body, piece)]

        whole, pieces = hashes() if body.size <= _INLINE else await asyncio.to_thread(hashes)
        name = req.query.get("name") or inner.rsplit("/", 1)[1]
        doc = metalink_document(name, body.size, whole, piece, pieces, urls)
        hdrs = [("Content-Type", MEDIA_TYPE)]
        await send_simple(writer, 200, doc, hdrs, keep=keep, head_only=req.method == "HEAD")
        return keep
