"""Which handler answers a request: the test server's route table (its endpoints are listed
in :mod:`bgtransfer.testing._server`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bgtransfer.testing._downloads import Downloads
from bgtransfer.testing._endpoints import serve_echo, serve_loop, serve_redirect
from bgtransfer.testing._http import (
    BodyError,
    BodyStream,
    HttpError,
    Reject,
    Request,
    RequestRecord,
    parse_head,
    read_body,
    send_text,
)
from bgtransfer.testing._ietf import Ietf
from bgtransfer.testing._metalink import Metalinks
from bgtransfer.testing._signed import Signer
from bgtransfer.testing._state import State
from bgtransfer.testing._tus import TUS_VERSION, Tus
from bgtransfer.testing._uploads import Uploads

__all__ = ["Router"]


class Router:
    """The handlers of one server and the request loop's one entry, :meth:`serve_one`."""

    def __init__(
        self,
        state: State,
        base_for: Callable[[str], str],
        other_base: Callable[[], str | None],
    ) -> None:
        self.state = state
        self.uploads = Uploads(state)
        self.downloads = Downloads(state)
        self.tus = Tus(self.uploads, base_for)
        self.ietf = Ietf(self.uploads, base_for)
        self.signer = Signer(state, self.downloads, base_for)
        self.metalinks = Metalinks(self.downloads, base_for, other_base)

    async def serve_one(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        host: str,
        conn_id: int,
    ) -> bool:
        """Answer one request; False when the connection must be closed afterwards."""
        try:
            req = parse_head(head, host)
        except HttpError as err:
            await send_text(writer, err.status, err.message, keep=False)
            return False
        self.state.record(
            RequestRecord(
                method=req.method,
                target=req.target,
                path=req.path,
                query=dict(req.query),
                headers=dict(req.headers),
                host=host,
                time=time.monotonic(),
                connection=conn_id,
            )
        )
        if req.path.startswith(("/upload/", "/tus/", "/ietf/")) or req.path == "/tus":
            return await self._serve_upload(reader, writer, req)
        try:
            body_length = await read_body(reader, writer, req)
        except HttpError as err:
            await send_text(writer, err.status, err.message, keep=False)
            return False
        keep = req.keep_alive
        try:
            return await self._route(reader, writer, req, keep, body_length)
        except HttpError as err:
            head_only = req.method == "HEAD"
            await send_text(writer, err.status, err.message, keep=keep, head_only=head_only)
            return keep

    async def _route(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: Request,
        keep: bool,
        body_length: int,
    ) -> bool:
        if req.path.startswith(("/r/", "/gen/")):
            with self.state.serving_one(reader, writer):
                return await self.downloads.serve(writer, req, keep)
        if req.path.startswith("/s/"):
            with self.state.serving_one(reader, writer):
                return await self.signer.serve(writer, req, keep)
        if req.path.startswith("/metalink/"):
            return await self.metalinks.serve(writer, req, keep)
        if req.path == "/sign":
            return await self.signer.serve_mint(writer, req, keep)
        if req.path == "/redirect":
            return await serve_redirect(writer, req, keep)
        if req.path.startswith("/loop/"):
            return await serve_loop(writer, req, keep)
        if req.path == "/echo":
            return await serve_echo(writer, req, keep, body_length)
        head_only = req.method == "HEAD"
        await send_text(writer, 404, f"not found: {req.path}", keep=keep, head_only=head_only)
        return keep

    async def _serve_upload(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: Request
    ) -> bool:
        try:
            body = BodyStream(reader, writer, req.headers, self.state.count)
        except HttpError as err:
            await send_text(writer, err.status, err.message, keep=False)
            return False
        tus = req.path == "/tus" or req.path.startswith("/tus/")
        try:
            if req.path.startswith("/upload/"):
                name = req.path[len("/upload/") :]
                return await self.uploads.serve_plain(writer, req, body, name)
            if tus:
                return await self.tus.serve(writer, req, body)
            return await self.ietf.serve(writer, req, body)
        except BodyError as err:
            await send_text(writer, err.status, err.message, keep=False)
            return False
        except HttpError as err:
            hdrs = [("Content-Type", "text/plain; charset=utf-8")]
            if tus and req.method != "OPTIONS":
                hdrs.append(("Tus-Resumable", TUS_VERSION))
            if isinstance(err, Reject):
                hdrs.extend(err.headers)
            return await self.uploads.answer(
                writer,
                req,
                body,
                err.status,
                (err.message + "\n").encode(),
                hdrs,
                head_only=req.method == "HEAD",
            )
