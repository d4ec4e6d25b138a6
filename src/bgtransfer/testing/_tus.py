"""tus 1.0.0 uploads (creation, checksum, termination).

``/tus/`` and ``/tus/<id>``: tus 1.0.0 with creation, checksum, termination
    ``OPTIONS`` 204 with the capability headers; ``POST /tus/`` needs
    ``Tus-Resumable: 1.0.0`` (else 412) and ``Upload-Length`` (else 400; over
    ``Tus-Max-Size`` 413), answers 201 with an absolute ``Location``. The
    upload's name is its ``filename`` metadata (base64-decoded) or its id.
    ``HEAD`` 200 with ``Upload-Offset``, ``Upload-Length``, ``Cache-Control:
    no-store``. ``PATCH`` needs ``Content-Type: application/offset+octet-stream``
    (415) and ``Upload-Offset`` equal to the current offset (409); the body is
    appended as it arrives, so an interrupted PATCH keeps its prefix (with an
    ``Upload-Checksum`` too: the checksum covers the whole body, which never
    came). ``Upload-Checksum: sha1|sha256 <base64>`` mismatch gives 460 and
    nothing appended, another algorithm 400; going past Upload-Length 400.
    Success is 204 with the new ``Upload-Offset``. ``DELETE`` 204. Unknown or
    forgotten ids 404. Every non-OPTIONS answer has ``Tus-Resumable``.

tus and IETF faults cannot ride on the query string (clients build the upload
URLs from ``Location``), so they are armed with :meth:`FaultServer.upload_faults`
by upload id or name; :meth:`FaultServer.forget_upload` loses an upload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid
from collections.abc import Callable
from typing import Final

from bgtransfer.testing._http import (
    TOKEN,
    BodyStream,
    HttpError,
    Reject,
    Request,
    int_header,
    parse_content_type,
)
from bgtransfer.testing._state import State, TusUpload, names_of, upload_names
from bgtransfer.testing._uploads import Uploads

TUS_VERSION: Final = "1.0.0"
TUS_MAX_SIZE: Final = 1 << 30
TUS_EXTENSIONS: Final = "creation,checksum,termination"
TUS_CHECKSUMS: Final = ("sha1", "sha256")


def parse_tus_metadata(value: str | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if value is None or not value.strip():
        return out
    for pair in value.split(","):
        key, _, encoded = pair.strip().partition(" ")
        if not key or not TOKEN.match(key):
            raise HttpError(400, f"bad Upload-Metadata key {key!r}")
        try:
            out[key] = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise HttpError(400, f"Upload-Metadata value of {key!r} is not base64") from None
    return out


def tus_checksum(value: str | None) -> tuple[str, bytes] | None:
    """(algorithm, digest) of an Upload-Checksum header; 400 when unusable."""
    if value is None:
        return None
    algo, _, encoded = value.strip().partition(" ")
    algo = algo.lower()
    if algo not in TUS_CHECKSUMS:
        raise HttpError(400, f"unsupported checksum algorithm {algo!r}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, "Upload-Checksum digest is not base64") from None
    return algo, digest


class Tus:
    """tus 1.0.0 at ``/tus/`` and ``/tus/<id>``."""

    def __init__(self, uploads: Uploads, base_for: Callable[[str], str]) -> None:
        self.uploads = uploads
        self.state: State = uploads.state
        # The absolute base URL of the listener a request came in on (for Location).
        self.base_for = base_for

    async def serve(self, writer: asyncio.StreamWriter, req: Request, body: BodyStream) -> bool:
        method = req.method
        override = req.headers.get("x-http-method-override")
        if method == "POST" and override:
            method = override.strip().upper()
        uid = req.path[len("/tus") :].strip("/")
        if method == "OPTIONS":
            caps = [
                ("Tus-Resumable", TUS_VERSION),
                ("Tus-Version", TUS_VERSION),
                ("Tus-Extension", TUS_EXTENSIONS),
                ("Tus-Checksum-Algorithm", ",".join(TUS_CHECKSUMS)),
                ("Tus-Max-Size", str(TUS_MAX_SIZE)),
            ]
            return await self.uploads.answer(writer, req, body, 204, b"", caps)
        if req.headers.get("tus-resumable", "").strip() != TUS_VERSION:
            raise Reject(
                412, "missing or unsupported Tus-Resumable", [("Tus-Version", TUS_VERSION)]
            )
        if not uid:
            if method != "POST":
                raise Reject(405, "method not allowed", [("Allow", "OPTIONS, POST")])
            return await self._create(writer, req, body)
        with self.state.lock:
            up = self.state.tus_uploads.get(uid)
            lost_name = self.state.id_names.get(uid)
        if up is None:
            if lost_name is not None:
                body.count_as = names_of(lost_name, uid)
            raise HttpError(404, f"no tus upload {uid!r}")
        body.count_as = upload_names(up)
        if method == "HEAD":
            if self.state.take_fault(up, "lose") is not None:
                raise HttpError(404, "upload lost")
            hdrs = [
                ("Tus-Resumable", TUS_VERSION),
                ("Upload-Offset", str(up.offset)),
                ("Upload-Length", str(up.length)),
                ("Cache-Control", "no-store"),
            ]
            if up.raw_metadata:
                hdrs.append(("Upload-Metadata", up.raw_metadata))
            return await self.uploads.answer(writer, req, body, 200, b"", hdrs, head_only=True)
        if method == "PATCH":
            return await self._patch(writer, req, body, up)
        if method == "DELETE":
            with self.state.lock:
                self.state.drop_locked(up)
            return await self.uploads.answer(
                writer, req, body, 204, b"", [("Tus-Resumable", TUS_VERSION)]
            )
        raise Reject(405, "method not allowed", [("Allow", "OPTIONS, HEAD, PATCH, DELETE")])

    async def _create(self, writer: asyncio.StreamWriter, req: Request, body: BodyStream) -> bool:
        if "upload-defer-length" in req.headers:
            raise HttpError(400, "Upload-Defer-Length is not supported")
        length = int_header(req.headers, "Upload-Length", required=True)
        assert length is not None
        if length > TUS_MAX_SIZE:
            raise Reject(413, "Upload-Length too large", [("Tus-Max-Size", str(TUS_MAX_SIZE))])
        raw_metadata = req.headers.get("upload-metadata")
        metadata = parse_tus_metadata(raw_metadata)
        uid = uuid.uuid4().hex
        filename = metadata.get("filename")
        name = filename.decode("utf-8", "replace") if filename else uid
        up = TusUpload(uid, name, length, metadata, raw_metadata)
        with self.state.lock:
            self.state.tus_uploads[uid] = up
            self.state.tus_names[name] = uid
            self.state.id_names[uid] = name
        body.count_as = upload_names(up)
        hdrs = [
            ("Location", f"{self.base_for(req.host)}/tus/{uid}"),
            ("Tus-Resumable", TUS_VERSION),
        ]
        return await self.uploads.answer(writer, req, body, 201, b"", hdrs)

    async def _patch(
        self, writer: asyncio.StreamWriter, req: Request, body: BodyStream, up: TusUpload
    ) -> bool:
        if self.state.take_fault(up, "lose") is not None:
            raise HttpError(404, "upload lost")
        injected = self.state.take_fault(up, "status")
        if injected is not None:
            return await self.uploads.injected_status(
                writer, req, body, injected, [("Tus-Resumable", TUS_VERSION)]
            )
        if self.state.take_fault(up, "conflict") is not None:
            raise HttpError(409, "Upload-Offset conflict (injected)")
        if (
            parse_content_type(req.headers.get("content-type"))[0]
            != "application/offset+octet-stream"
        ):
            raise HttpError(415, "PATCH needs Content-Type: application/offset+octet-stream")
        offset = int_header(req.headers, "Upload-Offset", required=True)
        if offset != up.offset:
            raise HttpError(409, f"Upload-Offset {offset} is not the current offset {up.offset}")
        checksum = tus_checksum(req.headers.get("upload-checksum"))
        if body.length is not None and offset + body.length > up.length:
            raise HttpError(400, "body would go past Upload-Length")
        hasher = None if checksum is None else hashlib.new(checksum[0])
        cut = self.state.cut_at(up)
        outcome = await self.uploads.append(
            body,
            up.data,
            limit=up.length,
            cut_at=None if cut is None else max(cut, offset),
            on_piece=None if hasher is None else hasher.update,
        )
        if outcome == "cut":
            self.state.disarm_cut(up)
            return self.uploads.cut(writer)
        if outcome == "overflow":
            self.state.truncate(up.data, offset)
            raise HttpError(400, "body went past Upload-Length")
        if checksum is not None and hasher is not None and hasher.digest() != checksum[1]:
            self.state.truncate(up.data, offset)
            raise HttpError(460, "Upload-Checksum does not match the body")
        hdrs = [("Tus-Resumable", TUS_VERSION), ("Upload-Offset", str(up.offset))]
        return await self.uploads.answer(writer, req, body, 204, b"", hdrs)
