"""The upload driver: carries out one upload attempt (plain, multipart, tus 1.0, IETF draft-05).

Decisions (retry, restart, give up) stay in :class:`UploadMachine`; this module only speaks
HTTP and reports what happened as events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urljoin

import aiohttp
from multidict import CIMultiDict

from bgtransfer._engine._context import Context
from bgtransfer._engine._files import fsync_dir, partial_path
from bgtransfer._engine._http import lower_headers, request_failure, tls_for
from bgtransfer._engine._live import Live
from bgtransfer._engine._sources import upload_with_refresh
from bgtransfer._exceptions import (
    DestinationError,
    IntegrityError,
    SourceChanged,
    TransferError,
    TransferTimeout,
)
from bgtransfer._models import Phase
from bgtransfer._protocol import _machine as M
from bgtransfer._protocol._upload import (
    RESPONSE_BODY_CAP,
    FinalResponse,
    UploadCreated,
    UploadLost,
    UploadProgress,
)

__all__ = ["Uploader"]

TUS_VERSION = "1.0.0"
IETF_INTEROP_VERSION = "6"  # draft-ietf-httpbis-resumable-upload-05
STREAM_PIECE = 1 << 20
Event = M.Event | FinalResponse | UploadCreated | UploadProgress | UploadLost


def _remove_spool(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(path))


class _Lost(Exception):
    """The server answered 404/410 for the upload URL."""


class _Done(Exception):
    def __init__(self, event: Event | None) -> None:
        self.event = event


def _int_header(resp: aiohttp.ClientResponse, name: str) -> int | None:
    value = resp.headers.get(name, "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 19 else None


class Uploader:
    """Carries out upload attempts for the engine."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def terminate(self, live: Live) -> None:
        """Tell a tus/IETF server that a cancelled upload can go (best effort, 5 s)."""
        url, http = live.machine.snap.upload_url, self.ctx.session
        # Called while the cancel's cleanup runs: the machine says "cancelled" (its error)
        # only once that is done; a failed upload (RemovePartial too) is not terminated.
        if url is None or http is None or live.machine.snap.phase is not Phase.CANCELING:
            return
        headers = {"Tus-Resumable": TUS_VERSION} if live.machine.spec.protocol == "tus" else {}

        async def delete() -> None:
            with contextlib.suppress(Exception):
                async with http.delete(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                ):
                    pass

        self.ctx.spawn(delete())

    # -- plumbing ----------------------------------------------------------------------------

    def _feed(self, live: Live, event: Event) -> None:
        """Hand an intermediate fact to the machine; stop the exchange if it decided so."""
        actions = live.machine.handle(event, now=self.ctx.clock())  # type: ignore[arg-type]
        self.ctx.execute(live, actions)
        if live.machine.snap.phase not in (Phase.CONNECTING, Phase.TRANSFERRING):
            raise _Done(None)

    def _check_source(self, live: Live) -> None:
        spec, path = live.machine.spec, live.row.path
        try:
            st = os.stat(path)
        except OSError as exc:
            raise _Done(M.Failed(SourceChanged(f"the source file is gone: {exc}"))) from None
        if st.st_size != spec.source_size or st.st_mtime_ns != spec.source_mtime_ns:
            raise _Done(
                M.Failed(
                    SourceChanged(
                        f"the source file {path} changed during the upload (size "
                        f"{spec.source_size} -> {st.st_size} or its mtime moved); "
                        "not sending a mix of versions"
                    )
                )
            )

    async def _send(
        self, live: Live, method: str, url: str, headers: dict[str, str], data: Any = None
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        rt = live.machine.spec.request_timeout
        hdrs = CIMultiDict(live.machine.spec.headers)
        hdrs.update(headers)
        resp = await self.ctx.http.request(
            method,
            url,
            data=data,
            headers=hdrs,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=rt, sock_read=rt),
            ssl=tls_for(live.machine.spec),
        )
        if live.attempt is not None:
            live.attempt.status = resp.status  # the history shows the last answer
        self.ctx.pacing.heard(url, resp.status, lower_headers(resp))
        try:
            body = await self._read_answer(live, resp)
        finally:
            resp.release()
        return resp, body

    async def _read_answer(self, live: Live, resp: aiohttp.ClientResponse) -> bytes:
        """The body's first RESPONSE_BODY_CAP bytes; all of it into a spool file when the
        spec asks for the whole answer (only the last exchange's spool is ever committed)."""
        head = bytearray()
        while len(head) < RESPONSE_BODY_CAP:
            piece = await resp.content.read(RESPONSE_BODY_CAP - len(head))
            if not piece:
                break
            head += piece
        self._drop_spool(live)
        target = live.machine.spec.response_path
        if target is None:
            return bytes(head)
        spool = partial_path(target, live.row.id)
        # Plain blocking writes, as in _stream_file: answers are small next to the source.
        live.response_spool = spool
        try:
            with open(spool, "wb") as f:  # noqa: ASYNC230
                f.write(head)
                while piece := await resp.content.read(STREAM_PIECE):
                    f.write(piece)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self._drop_spool(live)
            raise
        return bytes(head)

    def _drop_spool(self, live: Live) -> None:
        if live.response_spool is not None:
            _remove_spool(live.response_spool)
            live.response_spool = None

    def _commit_answer(self, live: Live, event: Event | None) -> Event | None:
        """Put the final answer's body in place (fsynced, renamed, directory fsynced) before
        the machine records the outcome, so a completed task always has its answer file."""
        target = live.machine.spec.response_path
        if not isinstance(event, FinalResponse) or target is None:
            self._drop_spool(live)
            return event
        spool, live.response_spool = live.response_spool, None
        try:
            if spool is None:  # the answer came from a path that kept no spool: write it now
                spool = partial_path(target, live.row.id)
                with open(spool, "wb") as f:
                    f.write(event.body)
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(spool, target)
            fsync_dir(os.path.dirname(target))
        except OSError as exc:
            if spool is not None:
                _remove_spool(spool)
            return M.Failed(DestinationError(f"cannot store the answer at {target}: {exc}"))
        return event

    def _final(self, resp: aiohttp.ClientResponse, body: bytes) -> FinalResponse:
        return FinalResponse(
            resp.status, lower_headers(resp), body, wall_time=time.time(), reason=resp.reason
        )

    async def _stream_file(self, live: Live, start: int, length: int) -> AsyncIterator[bytes]:
        """The file's bytes from ``start``, reporting progress for plain uploads."""
        plain = live.machine.spec.protocol in ("plain", "multipart")
        # Plain blocking reads, like the download path's os.write: a thread hop per piece costs
        # more than the read (research/perf.md: aiofiles halves throughput).
        with open(live.row.path, "rb") as f:  # noqa: ASYNC230
            f.seek(start)
            left, sent = length, start
            while left > 0:
                self._check_source(live)
                piece = f.read(min(STREAM_PIECE, self.ctx.pacing.read_size(live), left))
                if not piece:
                    raise _Done(M.Failed(SourceChanged("the source file got shorter")))
                # Paid before it goes: after the last piece nobody waits for the pause.
                await self.ctx.pacing.throttle(live, len(piece))
                yield piece
                left -= len(piece)
                sent += len(piece)
                if plain:
                    self._feed(live, UploadProgress(sent))

    # -- one attempt ---------------------------------------------------------------------------

    async def run(self, live: Live) -> None:
        m = live.machine
        actions = m.handle(M.Start(), now=self.ctx.clock())
        if not any(isinstance(a, M.SendRequest) for a in actions):
            self.ctx.execute(live, actions)
            return
        before: list[M.Action] = [a for a in actions if not isinstance(a, M.SendRequest)]
        if before:
            # A POST that must not be sent twice: "it may have been sent" is committed before
            # its first byte leaves, so a crash mid-request cannot lead to a second one.
            self.ctx.execute(live, before)
            await self.ctx.flush()
        deadline = asyncio.timeout(max(m.time_left(self.ctx.clock()), 0.0))
        # One history row per attempt (its requests: creation, offset queries, chunks).
        start = m.snap.offset
        live.attempt = self.ctx.history.open(live, m.snap.upload_url or m.spec.url, start)
        event: Event | None
        try:
            async with deadline:
                event = await upload_with_refresh(self.ctx, live, self._exchange)  # issue 17
        except _Done as done:
            event = done.event
        except TimeoutError:
            if not deadline.expired():
                raise
            event = M.TransportFailed(
                TransferTimeout(f"resource timeout of {m.spec.resource_timeout:g} s reached")
            )
        after: list[M.Action] = []
        if event is not None and m.snap.phase in (Phase.CONNECTING, Phase.TRANSFERRING):
            event = self._commit_answer(live, event)
            assert event is not None
            after = m.handle(event, now=self.ctx.clock())  # type: ignore[arg-type]
        else:
            self._drop_spool(live)
        if live.attempt is not None:
            live.attempt.bytes = max(0, m.snap.offset - start)
            self.ctx.history.end(live)  # before the actions: their commit carries it
        self.ctx.execute(live, after)
        if not any(isinstance(a, M.Persist) for a in after):
            self.ctx.history.save(live)  # the machine decided earlier: no snapshot carries it

    async def _exchange(self, live: Live) -> Event:
        spec = live.machine.spec
        self._check_source(live)
        try:
            if spec.protocol == "plain":
                return await self._plain(live)
            if spec.protocol == "multipart":
                return await self._multipart(live)
            if spec.protocol == "tus":
                return await self._resumable(
                    live, self._tus_create, self._tus_patch, self._tus_head
                )
            return await self._resumable(live, self._ietf_create, self._ietf_patch, self._ietf_head)
        except _Done:
            raise
        except Exception as exc:
            at = live.machine.snap.offset
            failure = request_failure(
                exc,
                spec.request_timeout,
                silence="no progress for",
                lost=f"connection lost during the upload near byte {at} ({{name}})",
            )
            if failure is None:
                raise
            if not failure.retryable:
                return M.Failed(failure.error)
            return M.TransportFailed(failure.error)

    async def _plain(self, live: Live) -> Event:
        spec = live.machine.spec
        size = spec.source_size or 0
        body = self._stream_file(live, 0, size)
        resp, data = await self._send(
            live, spec.method, spec.url, {"Content-Length": str(size)}, data=body
        )
        return self._final(resp, data)

    async def _multipart(self, live: Live) -> Event:
        spec = live.machine.spec
        with aiohttp.MultipartWriter("form-data") as writer:
            for name, value in spec.form_fields:
                part = writer.append(value)
                part.set_content_disposition("form-data", name=name)
            part = writer.append(
                self._stream_file(live, 0, spec.source_size or 0),
                {"Content-Type": "application/octet-stream"},
            )
            part.set_content_disposition(
                "form-data", name=spec.field_name, filename=os.path.basename(live.row.path)
            )
            resp, data = await self._send(live, spec.method, spec.url, {}, data=writer)
        return self._final(resp, data)

    # -- resumable protocols -----------------------------------------------------------------

    async def _resumable(
        self,
        live: Live,
        create: Callable[[Live], Any],
        patch: Callable[[Live, int, bytes, bool], Any],
        head: Callable[[Live], Any],
    ) -> Event:
        m = live.machine
        size = m.spec.source_size or 0
        for _ in range(20):  # bounded: creations after losses are capped by max_restarts too
            if m.snap.upload_url is None:
                created = await create(live)
                if isinstance(created, FinalResponse | M.Failed):
                    return created
            try:
                offset = await head(live)
                if isinstance(offset, FinalResponse):
                    return offset
                while True:
                    self._check_source(live)
                    if offset >= size and size > 0:
                        # Everything is there but the completing answer was lost: ask again.
                        result = await patch(live, offset, b"", True)
                    else:
                        with open(live.row.path, "rb") as f:  # noqa: ASYNC230 - see _stream_file
                            f.seek(offset)
                            chunk = f.read(min(m.spec.chunk_size, size - offset))
                        last = offset + len(chunk) >= size
                        # One PATCH goes out whole; the pause before it keeps the average.
                        await self.ctx.pacing.throttle(live, len(chunk))
                        result = await patch(live, offset, chunk, last)
                    if isinstance(result, FinalResponse):
                        return result
                    if result is None:  # offset conflict: ask the server where it is
                        offset = await head(live)
                        if isinstance(offset, FinalResponse):
                            return offset
                        continue
                    offset = result
                    self._feed(live, UploadProgress(offset))
            except _Lost:
                self._feed(live, UploadLost())
        return M.Failed(TransferError("the server keeps losing the upload"))

    async def _tus_options(self, live: Live) -> None:
        """Ask the server which checksum algorithms it takes (tus checksum extension)."""
        spec = live.machine.spec
        opts, _ = await self._send(live, "OPTIONS", spec.url, {"Tus-Resumable": TUS_VERSION})
        offered = opts.headers.get("Tus-Checksum-Algorithm", "") if opts.ok else ""
        live.checksums = {a.strip().lower() for a in offered.split(",") if a.strip()}

    async def _tus_create(self, live: Live) -> FinalResponse | M.Failed | None:
        spec = live.machine.spec
        await self._tus_options(live)
        name = base64.b64encode(os.path.basename(live.row.path).encode()).decode()
        resp, body = await self._send(
            live,
            "POST",
            spec.url,
            {
                "Tus-Resumable": TUS_VERSION,
                "Upload-Length": str(spec.source_size or 0),
                "Upload-Metadata": f"filename {name}",
                "Content-Length": "0",
            },
        )
        location = resp.headers.get("Location")
        if resp.status != 201 or not location:
            if 200 <= resp.status < 300:
                return M.Failed(TransferError("tus creation answered without a Location"))
            return self._final(resp, body)
        self._feed(live, UploadCreated(urljoin(spec.url, location)))
        return None

    async def _tus_head(self, live: Live) -> int | FinalResponse:
        url = live.machine.snap.upload_url
        assert url is not None
        if live.checksums is None:
            # Picked up again (restart, resume): what the server offered was not kept, and
            # without it every PATCH would go unchecked.
            await self._tus_options(live)
        resp, body = await self._send(live, "HEAD", url, {"Tus-Resumable": TUS_VERSION})
        if resp.status in (404, 410):
            raise _Lost
        offset = _int_header(resp, "Upload-Offset")
        if not 200 <= resp.status < 300 or offset is None:
            return self._final(resp, body)
        self._feed(live, UploadProgress(offset))
        return offset

    async def _tus_patch(self, live: Live, offset: int, chunk: bytes, last: bool) -> Any:
        url = live.machine.snap.upload_url
        assert url is not None
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset),
        }
        checksums = live.checksums or set()
        for algo in ("sha256", "sha1"):
            if algo in checksums:
                digest = base64.b64encode(hashlib.new(algo, chunk).digest()).decode()
                headers["Upload-Checksum"] = f"{algo} {digest}"
                break
        resp, body = await self._send(live, "PATCH", url, headers, data=io.BytesIO(chunk))
        if resp.status in (404, 410):
            raise _Lost
        if resp.status == 409:
            return None
        if resp.status == 460:
            live.checksum_failures += 1
            if live.checksum_failures >= 3:
                raise _Done(M.Failed(IntegrityError("tus checksum mismatch three times in a row")))
            return offset
        new = _int_header(resp, "Upload-Offset")
        if not 200 <= resp.status < 300 or new is None:
            return self._final(resp, body)
        if last and new >= (live.machine.spec.source_size or 0):
            return self._final(resp, body)
        return new

    async def _ietf_create(self, live: Live) -> FinalResponse | M.Failed | None:
        spec = live.machine.spec
        resp, body = await self._send(
            live,
            spec.method,
            spec.url,
            {
                "Upload-Complete": "?0",
                "Upload-Length": str(spec.source_size or 0),
                "Upload-Draft-Interop-Version": IETF_INTEROP_VERSION,
                "Content-Length": "0",
            },
        )
        location = resp.headers.get("Location")
        if resp.status != 201 or not location:
            if 200 <= resp.status < 300:
                return M.Failed(
                    TransferError(
                        "the server does not support resumable uploads "
                        "(draft-ietf-httpbis-resumable-upload-05): no upload resource created"
                    )
                )
            return self._final(resp, body)
        self._feed(live, UploadCreated(urljoin(spec.url, location)))
        return None

    async def _ietf_head(self, live: Live) -> int | FinalResponse:
        url = live.machine.snap.upload_url
        assert url is not None
        resp, body = await self._send(
            live, "HEAD", url, {"Upload-Draft-Interop-Version": IETF_INTEROP_VERSION}
        )
        if resp.status in (404, 410):
            raise _Lost
        offset = _int_header(resp, "Upload-Offset")
        if not 200 <= resp.status < 300 or offset is None:
            return self._final(resp, body)
        self._feed(live, UploadProgress(offset))
        return offset

    async def _ietf_patch(self, live: Live, offset: int, chunk: bytes, last: bool) -> Any:
        url = live.machine.snap.upload_url
        assert url is not None
        headers = {
            "Content-Type": "application/partial-upload",
            "Upload-Offset": str(offset),
            "Upload-Complete": "?1" if last else "?0",
            "Upload-Draft-Interop-Version": IETF_INTEROP_VERSION,
        }
        resp, body = await self._send(live, "PATCH", url, headers, data=io.BytesIO(chunk))
        if resp.status in (404, 410):
            raise _Lost
        if resp.status == 409:
            return None
        if last or not 200 <= resp.status < 300:
            return self._final(resp, body)
        new = _int_header(resp, "Upload-Offset")
        return offset + len(chunk) if new is None else new
