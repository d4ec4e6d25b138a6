"""A custom CA bundle (``ca_bundle=`` / ``--cacert``, issue 19): HTTPS servers of a private CA
verify with it and only with it, in the foreground engine and through the daemon.

The server is the project's FaultServer behind a TLS 1.3 relay on 127.0.0.1 whose
certificate a CA made per test module by the openssl CLI signed (the relay and the PKI of
tests/engine/test_rawbody_tls.py). Verification stays complete: a bundle of another CA
fails as the system store does.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer._engine._http import tls_for
from bgtransfer._options import DownloadOptions, UploadOptions
from bgtransfer._protocol._task import Spec
from bgtransfer.testing import FaultServer, gen_bytes
from tests.daemon.conftest import run_cli
from tests.engine.test_rawbody_tls import Pki, pki, plain, tls_relay

__all__ = ["pki", "plain"]  # module fixtures shared with the TLS fast path's tests

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

SIZE = (2 << 20) + 777  # past the raw fast path's threshold: the TLS body take-over runs too


@contextlib.contextmanager
def relay(pki: Pki, upstream: FaultServer) -> Iterator[int]:
    """The TLS relay on its own loop in a thread (the daemon and the sync API block this
    one); yields its port."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    found: list[int] = []
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        stop.append(asyncio.Event())
        async with tls_relay(pki, upstream) as port:
            found.append(port)
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "the TLS relay did not start"
        yield found[0]
    finally:
        if stop:
            loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()


@pytest.fixture
def https(pki: Pki, plain: FaultServer) -> Iterator[str]:
    with relay(pki, plain) as port:
        yield f"https://127.0.0.1:{port}"


def test_the_spec_keeps_the_bundle_and_old_rows_decode() -> None:
    spec = Spec(url="https://h/f", ca_bundle="/etc/ca.pem")
    assert Spec.from_json(spec.to_json()) == spec
    old = Spec(url="https://h/f").to_dict()
    del old["ca_bundle"]  # a row an older version wrote
    assert Spec.from_dict(old).ca_bundle is None


def test_the_option_is_an_absolute_readable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.pem").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert DownloadOptions(ca_bundle="ca.pem").ca_bundle == str(tmp_path / "ca.pem")
    assert UploadOptions(ca_bundle=tmp_path / "ca.pem").ca_bundle == str(tmp_path / "ca.pem")  # type: ignore[arg-type]
    with pytest.raises(bgtransfer.InvalidRequest, match="cannot read the CA bundle"):
        DownloadOptions(ca_bundle=str(tmp_path / "missing.pem"))
    with pytest.raises(bgtransfer.InvalidRequest, match="CA bundle"):
        DownloadOptions(ca_bundle=str(tmp_path))
    with pytest.raises(bgtransfer.InvalidRequest, match="PEM file"):
        DownloadOptions(ca_bundle=3)  # type: ignore[arg-type]


def test_one_context_per_bundle_read_again_when_it_changes(pki: Pki, tmp_path: Path) -> None:
    assert tls_for(Spec(url="https://h/")) is True  # aiohttp's default: the system store
    bundle = tmp_path / "ca.pem"
    shutil.copy(pki.ca, bundle)
    first = tls_for(Spec(url="https://h/a", ca_bundle=str(bundle)))
    assert isinstance(first, ssl.SSLContext)
    assert first.verify_mode is ssl.CERT_REQUIRED
    assert first.check_hostname
    assert tls_for(Spec(url="https://h/b", ca_bundle=str(bundle))) is first
    bundle.write_bytes(pki.ca.read_bytes() + pki.rogue_ca.read_bytes())
    again = tls_for(Spec(url="https://h/a", ca_bundle=str(bundle)))
    assert isinstance(again, ssl.SSLContext)
    assert again is not first
    assert len(again.get_ca_certs()) == 2
    bundle.write_text("not a certificate\n")
    with pytest.raises(bgtransfer.TLSError, match="no usable certificate"):
        tls_for(Spec(url="https://h/a", ca_bundle=str(bundle)))


def test_a_private_ca_verifies_with_its_bundle_and_only_with_it(
    https: str, pki: Pki, tmp_path: Path
) -> None:
    url = f"{https}/gen/{SIZE}?seed=71"
    with bgtransfer.Session("ca", home=tmp_path / "home", background=False) as s:
        trusted = s.download(url, tmp_path / "ok.bin", ca_bundle=str(pki.ca)).wait(60)
        # The system store does not know the CA; a bundle of another CA is no better.
        # Both fail at once: another try would meet the same certificate.
        plain_store = s.download(url, tmp_path / "no.bin").wait(60)
        rogue = s.download(url, tmp_path / "rogue.bin", ca_bundle=str(pki.rogue_ca)).wait(60)
    assert trusted.error is None
    assert (tmp_path / "ok.bin").read_bytes() == gen_bytes(SIZE, seed=71)
    for failed in (plain_store, rogue):
        assert isinstance(failed.error, bgtransfer.TLSError), failed.error
        assert "does not verify" in failed.error.message
        assert failed.attempts == 1
    assert not (tmp_path / "no.bin").exists()


def test_a_hostname_the_certificate_does_not_name_fails(
    https: str, pki: Pki, tmp_path: Path
) -> None:
    # The certificate names localhost and 127.0.0.1: the right CA does not excuse a wrong
    # name (check_hostname stays on).
    url = f"{https.replace('127.0.0.1', '127.0.0.2')}/gen/100?seed=1"
    with bgtransfer.Session("ca", home=tmp_path / "home", background=False) as s:
        t = s.download(url, tmp_path / "x.bin", ca_bundle=str(pki.ca), max_attempts=1).wait(60)
    assert t.error is not None
    assert not (tmp_path / "x.bin").exists()


def test_an_upload_uses_the_bundle(
    https: str, pki: Pki, plain: FaultServer, tmp_path: Path
) -> None:
    src = tmp_path / "up.bin"
    src.write_bytes(gen_bytes(300_000, seed=72))
    with bgtransfer.Session("ca", home=tmp_path / "home", background=False) as s:
        t = s.upload(src, f"{https}/upload/ca-up.bin", ca_bundle=str(pki.ca)).wait(60)
        refused = s.upload(src, f"{https}/upload/ca-no.bin").wait(60)
    assert t.error is None
    assert plain.uploads["ca-up.bin"] == src.read_bytes()
    assert isinstance(refused.error, bgtransfer.TLSError)
    assert "ca-no.bin" not in plain.uploads


def test_the_cli_passes_cacert_through_the_daemon(
    https: str, pki: Pki, home: Path, tmp_path: Path
) -> None:
    url = f"{https}/gen/{SIZE}?seed=73"
    ok = run_cli(home, "get", url, "-o", str(tmp_path / "a.bin"), "--cacert", str(pki.ca),
                 timeout=90)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "a.bin").read_bytes() == gen_bytes(SIZE, seed=73)
    refused = run_cli(home, "get", url, "-o", str(tmp_path / "b.bin"), "--json", timeout=90)
    assert refused.returncode != 0
    assert "does not verify" in refused.stdout + refused.stderr
    assert "--cacert" in refused.stdout + refused.stderr
    missing = run_cli(home, "add", url, "-o", str(tmp_path / "c.bin"),
                      "--cacert", str(tmp_path / "none.pem"))  # fmt: skip
    assert missing.returncode != 0
    assert "cannot read the CA bundle" in missing.stderr
    run_cli(home, "daemon", "stop")
