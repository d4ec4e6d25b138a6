"""Uploads: the body plumbing all upload endpoints share, and plain/multipart uploads.

Uploads
-------
Request bodies (Content-Length or chunked) are read incrementally and kept in
memory. :meth:`FaultServer.upload_received` counts every body byte as it
arrives, per upload name, over all requests, so a client that dies mid-body
leaves an exact count. A request refused on its headers has its body read and
discarded (and counted) before the answer, except that a client still waiting
for ``100 Continue`` is answered at once and the connection closed. Error
answers are ``text/plain``. Every response has a Content-Length except 204s
(RFC 9110 forbids it there).

``PUT|POST /upload/<name>``
    Stores the complete body as ``uploads[name]``; ``201`` (PUT of a new name)
    or ``200`` with JSON ``{"name", "size", "sha256"}``. A
    ``multipart/form-data`` body is split instead: file parts (those with a
    ``filename``) go to ``uploads["<name>/<field>"]``, other fields to
    ``upload_fields[name]``; ``200`` with JSON ``{"name", "size", "sha256",
    "parts": [...], "fields": {...}}``. A truncated body stores nothing.
    Knobs, limited by ``times=K`` as above: ``cut=N`` (once N body bytes arrived
    and more follow, close without answering), ``stall=S`` (wait before
    answering), ``status=CODE`` with ``retry_after``/``retry_after_in``
    (answer that after reading the body; nothing stored).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.utils
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bgtransfer.testing._http import (
    BodyError,
    BodyStream,
    HttpError,
    Reject,
    Request,
    parse_content_type,
    send_simple,
    send_text,
)
from bgtransfer.testing._knobs import Knobs, UploadFaults, error_page
from bgtransfer.testing._state import State

# Hash at most this much on the loop; larger payloads go to a thread (hashlib drops the GIL).
HASH_INLINE: Final = 1 << 20


@dataclass
class Part:
    field_name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def parse_part(raw: bytes) -> Part:
    if raw.startswith(b"\r\n"):
        head, content = b"", raw[2:]
    else:
        sep = raw.find(b"\r\n\r\n")
        if sep < 0:
            raise ValueError("multipart part without a blank line after its headers")
        head, content = raw[:sep], raw[sep + 4 :]
    # Browsers send UTF-8 file names raw inside the quotes.
    msg = email.parser.HeaderParser().parsestr(head.decode("utf-8", "replace") + "\r\n\r\n")
    # get_param decodes RFC 2231 forms too (filename*=UTF-8''...).
    field_name = msg.get_param("name", header="content-disposition")
    filename = msg.get_param("filename", header="content-disposition")
    return Part(
        field_name=None if field_name is None else email.utils.collapse_rfc2231_value(field_name),
        filename=None if filename is None else email.utils.collapse_rfc2231_value(filename),
        content_type=msg.get("content-type"),
        data=content,
    )


def parse_multipart(data: bytes, boundary: str) -> list[Part]:
    """Split a multipart body (RFC 2046 section 5.1.1); ValueError when malformed."""
    delim = b"--" + boundary.encode("latin-1")
    if data.startswith(delim):
        pos = 0
    else:
        i = data.find(b"\r\n" + delim)
        if i < 0:
            raise ValueError("multipart body without its boundary")
        pos = i + 2
    parts: list[Part] = []
    while True:
        pos += len(delim)
        if data[pos : pos + 2] == b"--":
            return parts
        eol = data.find(b"\r\n", pos)
        if eol < 0 or data[pos:eol].strip(b" \t"):
            raise ValueError("malformed multipart boundary line")
        start = eol + 2
        nxt = data.find(b"\r\n" + delim, start)
        if nxt < 0:
            raise ValueError("multipart body is not terminated")
        parts.append(parse_part(data[start:nxt]))
        pos = nxt + 2


async def sha256_hex(data: bytes | bytearray) -> str:
    if len(data) <= HASH_INLINE:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


async def summary(name: str, data: bytes | bytearray, **extra: object) -> bytes:
    payload: dict[str, object] = {
        "name": name,
        "size": len(data),
        "sha256": await sha256_hex(data),
        **extra,
    }
    return json.dumps(payload).encode()


class Uploads:
    """The request-body plumbing of every upload endpoint, and ``/upload/<name>``."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def answer(
        self,
        writer: asyncio.StreamWriter,
        req: Request,
        body: BodyStream,
        status: int,
        payload: bytes,
        headers: list[tuple[str, str]],
        *,
        head_only: bool = False,
    ) -> bool:
        """Consume what is left of the request body (counting it), then respond.

        A client still waiting for ``100 Continue`` is answered at once instead and
        the connection closed, since it may or may not send the body after all.
        """
        keep = req.keep_alive
        if body.unanswered_continue:
            keep = False
        elif not body.done:
            try:
                await body.drain()
            except BodyError as err:
                await send_text(writer, err.status, err.message, keep=False)
                return False
        await send_simple(writer, status, payload, headers, keep=keep, head_only=head_only)
        return keep

    @staticmethod
    def cut(writer: asyncio.StreamWriter) -> bool:
        # Unread request bytes make the kernel send an RST rather than a FIN: either
        # way the client sees the connection die without an answer.
        writer.transport.close()
        return False

    async def append(
        self,
        body: BodyStream,
        data: bytearray,
        *,
        limit: int | None,
        cut_at: int | None,
        on_piece: Callable[[bytes], object] | None = None,
    ) -> str:
        """Append the request body to ``data`` as it arrives.

        Returns ``"done"``; ``"cut"`` when ``data`` reached ``cut_at`` with more body
        to come (the caller closes the connection); ``"overflow"`` when the body
        would take ``data`` past ``limit`` (the rest is drained; the caller rolls back).
        """
        while True:
            if cut_at is not None and len(data) >= cut_at and not await body.at_end():
                return "cut"
            piece = await body.read(None if cut_at is None else cut_at - len(data))
            if not piece:
                return "done"
            if limit is not None and len(data) + len(piece) > limit:
                await body.drain()
                return "overflow"
            with self.state.lock:
                data.extend(piece)
            if on_piece is not None:
                on_piece(piece)

    async def serve_plain(
        self, writer: asyncio.StreamWriter, req: Request, body: BodyStream, name: str
    ) -> bool:
        if not name:
            raise HttpError(404, "uploads go to /upload/<name>")
        body.count_as = (name,)
        if req.method not in ("PUT", "POST"):
            raise Reject(405, "method not allowed", [("Allow", "PUT, POST")])
        knobs = Knobs.parse(req.query)
        failing = knobs.times is None or self.state.hit(req.fault_key) <= knobs.times
        mime, params = parse_content_type(req.headers.get("content-type"))
        boundary: str | None = None
        if mime == "multipart/form-data":
            boundary = params.get("boundary")
            if not boundary:
                raise HttpError(400, "multipart/form-data without a boundary")
        data = bytearray()
        hasher = hashlib.sha256()
        cut = knobs.cut if failing else None
        if await self.append(body, data, limit=None, cut_at=cut, on_piece=hasher.update) == "cut":
            return self.cut(writer)
        if failing and knobs.stall:
            await asyncio.sleep(knobs.stall)
        if failing and knobs.status is not None:
            page, retry = error_page(knobs)
            hdrs = [("Content-Type", "text/plain"), *retry]
            return await self.answer(writer, req, body, knobs.status, page, hdrs)
        if boundary is not None:
            return await self._store_multipart(
                writer, req, body, name, bytes(data), boundary, hasher.hexdigest()
            )
        stored = bytes(data)
        with self.state.lock:
            new = name not in self.state.uploads
            for key in self.state.plain_done.pop(name, []):
                self.state.uploads.pop(key, None)
            self.state.uploads[name] = stored
            self.state.plain_done[name] = [name]
        payload = json.dumps({"name": name, "size": len(stored), "sha256": hasher.hexdigest()})
        return await self.answer(
            writer,
            req,
            body,
            201 if req.method == "PUT" and new else 200,
            payload.encode(),
            [("Content-Type", "application/json")],
        )

    async def _store_multipart(
        self,
        writer: asyncio.StreamWriter,
        req: Request,
        body: BodyStream,
        name: str,
        data: bytes,
        boundary: str,
        digest: str,
    ) -> bool:
        try:
            parts = parse_multipart(data, boundary)
        except ValueError as exc:
            raise HttpError(400, f"bad multipart body: {exc}") from None
        files: dict[str, bytes] = {}
        fields: dict[str, str] = {}
        listing: list[dict[str, object]] = []
        for part in parts:
            if part.field_name is None:
                raise HttpError(400, "multipart part without a name")
            if part.filename is not None:
                files[f"{name}/{part.field_name}"] = part.data
                listing.append(
                    {
                        "field": part.field_name,
                        "filename": part.filename,
                        "content_type": part.content_type,
                        "size": len(part.data),
                        "sha256": await sha256_hex(part.data),
                    }
                )
            else:
                charset = parse_content_type(part.content_type)[1].get("charset", "utf-8")
                try:
                    value = part.data.decode(charset, "replace")
                except LookupError:
                    value = part.data.decode("utf-8", "replace")
                fields[part.field_name] = value
                listing.append({"field": part.field_name, "size": len(part.data)})
        with self.state.lock:
            for key in self.state.plain_done.pop(name, []):
                self.state.uploads.pop(key, None)
            self.state.uploads.update(files)
            self.state.upload_fields[name] = dict(fields)
            self.state.plain_done[name] = list(files)
        payload = {
            "name": name,
            "size": len(data),
            "sha256": digest,
            "parts": listing,
            "fields": fields,
        }
        return await self.answer(
            writer,
            req,
            body,
            200,
            json.dumps(payload).encode(),
            [("Content-Type", "application/json")],
        )

    # tus

    async def injected_status(
        self,
        writer: asyncio.StreamWriter,
        req: Request,
        body: BodyStream,
        faults: UploadFaults,
        headers: list[tuple[str, str]],
    ) -> bool:
        status = faults.status_once
        assert status is not None
        hdrs = [*headers, ("Content-Type", "text/plain")]
        if faults.retry_after is not None:
            hdrs.append(("Retry-After", faults.retry_after))
        page = b"" if status in (204, 304) else f"error page {status}".encode()
        return await self.answer(writer, req, body, status, page, hdrs)
