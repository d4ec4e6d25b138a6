"""The IETF resumable-upload draft (draft-ietf-httpbis-resumable-upload-05).

``/ietf/<name>`` and ``/ietf/u/<id>``: draft-ietf-httpbis-resumable-upload-05
    ``POST /ietf/<name>`` with ``Upload-Complete: ?0`` stores the body and
    answers 201 with ``Location`` and ``Upload-Offset``; with ``?1`` (and a
    body matching ``Upload-Length`` if given) 200 with the JSON summary; without
    the header it is a plain upload of ``<name>``. ``HEAD /ietf/u/<id>`` 204
    with ``Upload-Offset``, ``Upload-Complete``, ``Upload-Length`` if known,
    ``Cache-Control: no-store``. ``PATCH`` needs ``Content-Type:
    application/partial-upload`` (415), ``Upload-Offset`` (a mismatch is 409
    with an ``application/problem+json`` body) and ``Upload-Complete``; bytes
    are appended as they arrive; appending to a complete upload or past
    Upload-Length is 400; ``?0`` answers 204 with ``Upload-Offset``, ``?1`` 200
    with the JSON summary. ``DELETE`` 204.


tus and IETF faults cannot ride on the query string (clients build the upload
URLs from ``Location``), so they are armed with :meth:`FaultServer.upload_faults`
by upload id or name; :meth:`FaultServer.forget_upload` loses an upload.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Final

from bgtransfer.testing._http import (
    DIGITS,
    BodyStream,
    HttpError,
    Reject,
    Request,
    int_header,
    parse_content_type,
    sf_boolean,
)
from bgtransfer.testing._state import IetfUpload, State, names_of, upload_names
from bgtransfer.testing._uploads import Uploads, summary

IETF_PARTIAL: Final = "application/partial-upload"
IETF_MISMATCH: Final = "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"


class Ietf:
    """The IETF draft at ``/ietf/<name>`` and ``/ietf/u/<id>``."""

    def __init__(self, uploads: Uploads, base_for: Callable[[str], str]) -> None:
        self.uploads = uploads
        self.state: State = uploads.state
        # The absolute base URL of the listener a request came in on (for Location).
        self.base_for = base_for

    async def serve(self, writer: asyncio.StreamWriter, req: Request, body: BodyStream) -> bool:
        rest = req.path[len("/ietf/") :]
        if rest.startswith("u/"):
            return await self._resource(writer, req, body, rest[2:])
        if not rest:
            raise HttpError(404, "upload targets are /ietf/<name>")
        body.count_as = (rest,)
        if req.method != "POST":
            raise Reject(405, "method not allowed", [("Allow", "POST")])
        complete = sf_boolean(req.headers.get("upload-complete"), "Upload-Complete")
        if complete is None:
            return await self.uploads.serve_plain(writer, req, body, rest)
        length = int_header(req.headers, "Upload-Length", required=False)
        if (
            length is not None
            and body.length is not None
            and (body.length > length or (complete and body.length != length))
        ):
            raise HttpError(400, "request body does not agree with Upload-Length")
        up = IetfUpload(uuid.uuid4().hex, rest, length)
        with self.state.lock:
            self.state.ietf_uploads[up.id] = up
            self.state.ietf_names[up.name] = up.id
            self.state.id_names[up.id] = up.name
        body.count_as = upload_names(up)
        cut = self.state.cut_at(up)
        outcome = await self.uploads.append(body, up.data, limit=length, cut_at=cut)
        if outcome == "cut":
            self.state.disarm_cut(up)
            return self.uploads.cut(writer)
        if outcome == "overflow" or (complete and length is not None and up.offset != length):
            with self.state.lock:
                self.state.drop_locked(up)
            raise HttpError(400, "request body does not agree with Upload-Length")
        if complete:
            return await self._finish(writer, req, body, up)
        hdrs = [
            ("Location", f"{self.base_for(req.host)}/ietf/u/{up.id}"),
            ("Upload-Offset", str(up.offset)),
        ]
        return await self.uploads.answer(writer, req, body, 201, b"", hdrs)

    async def _resource(
        self, writer: asyncio.StreamWriter, req: Request, body: BodyStream, uid: str
    ) -> bool:
        with self.state.lock:
            up = self.state.ietf_uploads.get(uid)
            lost_name = self.state.id_names.get(uid)
        if up is None:
            if lost_name is not None:
                body.count_as = names_of(lost_name, uid)
            raise HttpError(404, f"no upload {uid!r}")
        body.count_as = upload_names(up)
        if req.method == "HEAD":
            if self.state.take_fault(up, "lose") is not None:
                raise HttpError(404, "upload lost")
            hdrs = [
                ("Upload-Offset", str(up.offset)),
                ("Upload-Complete", "?1" if up.complete else "?0"),
            ]
            if up.length is not None:
                hdrs.append(("Upload-Length", str(up.length)))
            hdrs.append(("Cache-Control", "no-store"))
            return await self.uploads.answer(writer, req, body, 204, b"", hdrs, head_only=True)
        if req.method == "PATCH":
            return await self._patch(writer, req, body, up)
        if req.method == "DELETE":
            with self.state.lock:
                self.state.drop_locked(up)
            return await self.uploads.answer(writer, req, body, 204, b"", [])
        raise Reject(405, "method not allowed", [("Allow", "HEAD, PATCH, DELETE")])

    async def _patch(
        self, writer: asyncio.StreamWriter, req: Request, body: BodyStream, up: IetfUpload
    ) -> bool:
        injected = await self._injected(writer, req, body, up)
        if injected is not None:
            return injected
        if parse_content_type(req.headers.get("content-type"))[0] != IETF_PARTIAL:
            raise HttpError(415, f"PATCH needs Content-Type: {IETF_PARTIAL}")
        offset = int_header(req.headers, "Upload-Offset", required=True)
        assert offset is not None
        complete = sf_boolean(req.headers.get("upload-complete"), "Upload-Complete")
        if complete is None:
            raise HttpError(400, "missing Upload-Complete")
        if up.complete:
            raise HttpError(400, "upload is already complete")
        if offset != up.offset:
            return await self._conflict(writer, req, body, up, offset)
        self._check_length(req, body, up, offset, complete)
        cut = self.state.cut_at(up)
        outcome = await self.uploads.append(
            body, up.data, limit=up.length, cut_at=None if cut is None else max(cut, offset)
        )
        if outcome == "cut":
            self.state.disarm_cut(up)
            return self.uploads.cut(writer)
        if outcome == "overflow" or (complete and up.length is not None and up.offset != up.length):
            self.state.truncate(up.data, offset)
            raise HttpError(400, "request body does not agree with Upload-Length")
        if complete:
            return await self._finish(writer, req, body, up)
        return await self.uploads.answer(
            writer, req, body, 204, b"", [("Upload-Offset", str(up.offset))]
        )

    async def _injected(
        self, writer: asyncio.StreamWriter, req: Request, body: BodyStream, up: IetfUpload
    ) -> bool | None:
        """Answer an armed lose/status/conflict fault; None when none is armed."""
        if self.state.take_fault(up, "lose") is not None:
            raise HttpError(404, "upload lost")
        injected = self.state.take_fault(up, "status")
        if injected is not None:
            return await self.uploads.injected_status(writer, req, body, injected, [])
        if self.state.take_fault(up, "conflict") is not None:
            raw = req.headers.get("upload-offset", "").strip()
            provided = int(raw) if DIGITS.match(raw) else None
            return await self._conflict(writer, req, body, up, provided)
        return None

    def _check_length(
        self, req: Request, body: BodyStream, up: IetfUpload, offset: int, complete: bool
    ) -> None:
        """Take a PATCH's Upload-Length; 400 when it or the body disagrees with the upload."""
        length = int_header(req.headers, "Upload-Length", required=False)
        if length is not None:
            if up.length is not None and length != up.length:
                raise HttpError(400, "Upload-Length differs from the upload's length")
            if length < offset:
                raise HttpError(400, "Upload-Length is less than the upload's offset")
            with self.state.lock:
                up.length = length
        if up.length is not None and body.length is not None:
            end = offset + body.length
            if end > up.length or (complete and end != up.length):
                raise HttpError(400, "request body does not agree with Upload-Length")

    async def _conflict(
        self,
        writer: asyncio.StreamWriter,
        req: Request,
        body: BodyStream,
        up: IetfUpload,
        provided: int | None,
    ) -> bool:
        problem = {
            "type": IETF_MISMATCH,
            "title": "offset from request does not match offset of resource",
            "expected-offset": up.offset,
            "provided-offset": provided,
        }
        hdrs = [("Content-Type", "application/problem+json")]
        return await self.uploads.answer(writer, req, body, 409, json.dumps(problem).encode(), hdrs)

    async def _finish(
        self, writer: asyncio.StreamWriter, req: Request, body: BodyStream, up: IetfUpload
    ) -> bool:
        with self.state.lock:
            up.complete = True
            if up.length is None:
                up.length = up.offset
        hdrs = [
            ("Content-Type", "application/json"),
            ("Upload-Complete", "?1"),
            ("Upload-Offset", str(up.offset)),
        ]
        payload = await summary(up.name, up.data)
        return await self.uploads.answer(writer, req, body, 200, payload, hdrs)

    # ------------------------------------------------------------------ resources
