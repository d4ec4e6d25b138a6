"""The TLS fast path of ``_engine/_rawbody.py``: ``take_over(resp, tls=True)``.

A real TLS 1.3 server (the project's FaultServer behind a TLS-terminating relay on
127.0.0.1, with a CA and certificates made by the openssl CLI per test session) and a real
aiohttp client that verifies it. The body is read exactly as the engine's ``_raw_stream``
reads a taken-over body: ``loop.sock_recv_into(raw.sock, buf)`` into one reused buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from bgtransfer._engine._rawbody import MIN_RAW_BYTES, RawBody, TLSReader, _tls_parts, take_over
from bgtransfer.testing import FaultServer, gen_bytes

BIG = MIN_RAW_BYTES + (3 << 20) + 4321  # not a multiple of any read size
CUT = MIN_RAW_BYTES + 999

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the server certificate
    rogue_ca: Path  # a CA that signed nothing the server shows
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "rogue")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=d,
    )  # fmt: skip
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
        cwd=d,
    )  # fmt: skip
    return Pki(d / "ca.pem", d / "rogue.pem", d / "server.pem", d / "server.key")


@pytest.fixture(scope="module")
def plain() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@contextlib.asynccontextmanager
async def tls_relay(pki: Pki, upstream: FaultServer) -> AsyncIterator[int]:
    """TLS 1.3 on 127.0.0.1:<port> (yielded), relayed in the clear to ``upstream``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(pki.cert, pki.key)
    host, port = upstream.url("/").split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    pumps: set[asyncio.Task[None]] = set()

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(1 << 18):
                w.write(data)
                await w.drain()
        except ConnectionResetError:
            # A reset reaches the other side as a reset (``rst=N``), not as a clean close.
            with contextlib.suppress(OSError):
                sock = w.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(host, int(port))
        for t in (pump(r, uw), pump(ur, w)):
            task = asyncio.ensure_future(t)
            pumps.add(task)
            task.add_done_callback(pumps.discard)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for t in list(pumps):
            t.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def client_ctx(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))  # chain and hostname checked


async def drain(raw: RawBody, size: int = 1 << 20) -> bytes:
    """What ``Downloader._raw_stream`` does with a taken-over body, keeping the bytes."""
    loop = asyncio.get_running_loop()
    out = bytearray(raw.buffered)
    buf = memoryview(bytearray(size))
    left = raw.remaining
    for _ in range(100_000):  # bounded: BIG / 1 byte would be more than any real read count
        if left <= 0:
            break
        async with asyncio.timeout(20):
            n = await loop.sock_recv_into(raw.sock, buf[: min(size, left)])
        if n == 0:
            raise ConnectionError("body cut short")
        out += buf[:n]
        left -= n
    return bytes(out)


async def fetch_tls(pki: Pki, plain: FaultServer, path: str, *, host: str = "127.0.0.1") -> bytes:
    async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
        url = f"https://{host}:{port}{path}"
        async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
            assert resp.status == 200
            raw = take_over(resp, tls=True)
            assert raw is not None
            assert isinstance(raw.sock, TLSReader)
            try:
                body = await drain(raw)
                resp.close()  # the engine's order: the response first, then the taken-over body
            finally:
                raw.close()
            return body


def test_a_big_tls_body_is_read_byte_exact_through_the_session(
    pki: Pki, plain: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        body = asyncio.run(fetch_tls(pki, plain, f"/gen/{BIG}?seed=31"))
    assert len(body) == BIG
    assert body == gen_bytes(BIG, seed=31)
    # Closing a connection whose session was read past asyncio's SSL protocol is quiet: no
    # "Fatal error on SSL protocol", no shutdown timeout, no unclosed transport.
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_small_reads_still_come_out_in_order(pki: Pki, plain: FaultServer) -> None:
    # Reads far smaller than a TLS record: OpenSSL keeps the rest pending between calls.
    async def go() -> bytes:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=32"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp, tls=True)
                assert raw is not None
                try:
                    return await drain(raw, size=3000)
                finally:
                    raw.close()

    assert asyncio.run(go()) == gen_bytes(BIG, seed=32)


def test_the_reader_keeps_socket_semantics_for_other_callers(pki: Pki, plain: FaultServer) -> None:
    async def go() -> bytes:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=40"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp, tls=True)
                assert raw is not None
                try:
                    with pytest.raises(ValueError, match="too small"):
                        raw.sock.recv_into(bytearray(10), 11)
                    with pytest.raises(ValueError, match="flags"):
                        raw.sock.recv_into(bytearray(10), 0, socket.MSG_PEEK)
                    got = b""
                    for _ in range(1000):  # bounded: the bytes arrive within a few rounds
                        with contextlib.suppress(BlockingIOError):
                            got = raw.sock.recv(1000)
                        if got:
                            break
                        await asyncio.sleep(0.01)
                    return raw.buffered + got
                finally:
                    raw.close()

    got = asyncio.run(go())
    assert len(got) > 0
    assert got == gen_bytes(BIG, seed=40)[: len(got)]


def test_without_tls_true_a_tls_body_stays_on_aiohttps_path(pki: Pki, plain: FaultServer) -> None:
    async def go() -> tuple[RawBody | None, bytes]:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=33"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp)
                return raw, await resp.read()

    raw, body = asyncio.run(go())
    assert raw is None
    assert body == gen_bytes(BIG, seed=33)


def test_a_short_tls_body_is_left_to_aiohttp(pki: Pki, plain: FaultServer) -> None:
    async def go() -> tuple[RawBody | None, bytes]:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/gen/5000?seed=34"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp, tls=True)
                return raw, await resp.read()

    raw, body = asyncio.run(go())
    assert raw is None
    assert body == gen_bytes(5000, seed=34)


def test_a_cut_tls_body_ends_early_and_keeps_every_byte_before_the_cut(
    pki: Pki, plain: FaultServer
) -> None:
    async def go() -> tuple[bytes, BaseException | None]:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=35&cut={CUT}"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp, tls=True)
                assert raw is not None
                loop = asyncio.get_running_loop()
                got = bytearray(raw.buffered)
                buf = memoryview(bytearray(1 << 20))
                err: BaseException | None = None
                try:
                    for _ in range(10_000):  # bounded
                        async with asyncio.timeout(20):
                            n = await loop.sock_recv_into(raw.sock, buf)
                        if n == 0:
                            break
                        got += buf[:n]
                except OSError as exc:  # a relay that resets instead of closing
                    err = exc
                finally:
                    raw.close()
                return bytes(got), err

    got, err = asyncio.run(go())
    assert err is None or isinstance(err, OSError)
    assert len(got) == CUT
    assert got == gen_bytes(BIG, seed=35)[:CUT]


def test_the_watchdog_cut_ends_a_tls_read(
    pki: Pki, plain: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    def watchdog(raw: RawBody, resp: aiohttp.ClientResponse) -> None:
        raw.cut()  # what Downloader._watch does: cut the body, then close the response
        resp.close()

    async def go() -> int:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            # Stalls after CUT bytes for longer than this test waits.
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=36&stall_body={CUT}&stall=30"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp, tls=True)
                assert raw is not None
                loop = asyncio.get_running_loop()
                buf = memoryview(bytearray(1 << 20))
                total = len(raw.buffered)
                try:
                    while total < CUT:
                        async with asyncio.timeout(20):
                            total += await loop.sock_recv_into(raw.sock, buf)
                    loop.call_later(0.2, watchdog, raw, resp)
                    async with asyncio.timeout(10):
                        return await loop.sock_recv_into(raw.sock, buf)
                finally:
                    raw.close()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        assert asyncio.run(go()) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


@contextlib.asynccontextmanager
async def tamper(port: int, at: int) -> AsyncIterator[int]:
    """A TCP relay to 127.0.0.1:port that flips one bit of the server's stream at byte ``at``
    (past the handshake): ciphertext an attacker on the path changed."""
    pumps: set[asyncio.Task[None]] = set()

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, flip: bool) -> None:
        seen = 0
        try:
            while data := await r.read(1 << 16):
                if flip and seen <= at < seen + len(data):
                    b = bytearray(data)
                    b[at - seen] ^= 0x01
                    data = bytes(b)
                seen += len(data)
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", port)
        for t in (pump(r, uw, False), pump(ur, w, True)):
            task = asyncio.ensure_future(t)
            pumps.add(task)
            task.add_done_callback(pumps.discard)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for t in list(pumps):
            t.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def test_a_tampered_record_fails_the_read_and_nothing_after_it_is_returned(
    pki: Pki, plain: FaultServer
) -> None:
    at = MIN_RAW_BYTES + (1 << 20)  # well inside the taken-over part of the body

    async def go() -> tuple[bytes, BaseException | None]:
        async with (
            tls_relay(pki, plain) as port,
            tamper(port, at) as bad_port,
            aiohttp.ClientSession() as http,
        ):
            url = f"https://127.0.0.1:{bad_port}/gen/{BIG}?seed=38"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                raw = take_over(resp, tls=True)
                assert raw is not None
                loop = asyncio.get_running_loop()
                got = bytearray(raw.buffered)
                buf = memoryview(bytearray(1 << 20))
                try:
                    for _ in range(10_000):  # bounded
                        async with asyncio.timeout(20):
                            n = await loop.sock_recv_into(raw.sock, buf)
                        if n == 0:
                            return bytes(got), None
                        got += buf[:n]
                except OSError as exc:
                    return bytes(got), exc
                finally:
                    raw.close()
                raise AssertionError("unbounded read")

    got, err = asyncio.run(go())
    assert isinstance(err, ssl.SSLError), err
    # Every byte handed out was authentic and in order; the bad record's bytes were not.
    assert len(got) < BIG
    assert got == gen_bytes(BIG, seed=38)[: len(got)]


@pytest.mark.parametrize("case", ["unknown CA", "wrong host name"])
def test_an_unverifiable_certificate_fails_before_any_body(
    pki: Pki, plain: FaultServer, case: str
) -> None:
    # The certificate names localhost and 127.0.0.1; "wrong host name" checks it for another.
    cafile, host = (pki.rogue_ca, "127.0.0.1") if case == "unknown CA" else (pki.ca, "127.0.0.2")

    async def go() -> None:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            ctx = client_ctx(cafile)
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=37"
            async with http.get(url, ssl=ctx, server_hostname=host) as resp:
                take_over(resp, tls=True)

    with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
        asyncio.run(go())
    assert isinstance(info.value.certificate_error, ssl.SSLCertVerificationError)


_CLIENT = """
import json, sys
import bgtransfer
url, dest, home = sys.argv[1:4]
with bgtransfer.Session("tls-test", home=home, background=False) as s:
    t = s.download(url, dest, retry_wait=0.05, max_retry_wait=0.2).wait(timeout=120)
    print(json.dumps({"state": t.state.name, "error": None if t.error is None else str(t.error)}))
"""


def test_an_https_download_cut_mid_body_resumes_byte_exact_through_the_engine(
    pki: Pki, plain: FaultServer, tmp_path: Path
) -> None:
    """End to end through a Session in a child process that trusts the test CA through
    SSL_CERT_FILE (aiohttp builds its default context at import). Holds on aiohttp's TLS path
    and on the fast path once the engine calls ``take_over(resp, tls=True)``."""
    key = uuid.uuid4().hex[:10]
    dest = tmp_path / "big"

    async def go() -> tuple[int, bytes]:
        async with tls_relay(pki, plain) as port:
            url = f"https://127.0.0.1:{port}/gen/{BIG}?seed=39&cut={CUT}&times=1&key={key}"
            env = {**os.environ, "SSL_CERT_FILE": str(pki.ca)}
            env.pop("SSL_CERT_DIR", None)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CLIENT, url, str(dest), str(tmp_path / "home"),
                env=env, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(180):
                out, _ = await proc.communicate()
            return proc.returncode or 0, out

    rc, out = asyncio.run(go())
    assert rc == 0, out
    assert json.loads(out.decode().strip().splitlines()[-1]) == {
        "state": "COMPLETED",
        "error": None,
    }
    assert dest.read_bytes() == gen_bytes(BIG, seed=39)
    first, second = [r for r in plain.requests("/gen/") if r.query.get("key") == key]
    assert first.range is None
    assert second.range == f"bytes={CUT}-"  # every byte before the cut was kept


def test_the_ssl_protocol_shape_is_checked_before_any_take_over(
    pki: Pki, plain: FaultServer
) -> None:
    """The guard behind "returns None on another Python": this Python's SSL transport has the
    shape the fast path was written against; one whose protocol lacks the incoming BIO (as a
    future asyncio might) is refused."""

    async def go() -> tuple[bool, bool]:
        async with tls_relay(pki, plain) as port, aiohttp.ClientSession() as http:
            # The body stalls after 1000 bytes: aiohttp releases the connection of a body
            # it has wholly received, and the shape must be looked at while it holds one.
            url = f"https://127.0.0.1:{port}/gen/5000?seed=41&stall_body=1000&stall=1"
            async with http.get(url, ssl=client_ctx(pki.ca)) as resp:
                assert resp.connection is not None
                transport = resp.connection.transport
                assert transport is not None
                sslobj = transport.get_extra_info("ssl_object")
                odd = SimpleNamespace(
                    _ssl_protocol=SimpleNamespace(_sslobj=sslobj, _incoming=None, _transport=None)
                )
                real_ok = _tls_parts(transport, sslobj) is not None
                odd_ok = _tls_parts(odd, sslobj) is not None  # type: ignore[arg-type]
                assert await resp.read() == gen_bytes(5000, seed=41)
                return real_ok, odd_ok

    assert asyncio.run(go()) == (True, False)
