"""checksums= and pieces= travel: through the store codec (old rows still decode) and
through a real daemon (background session), where a failure keeps its class."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import bgtransfer
from bgtransfer._protocol._task import Spec
from bgtransfer.testing import FaultServer, gen_bytes
from tests.daemon.conftest import kill_daemon

SIZE = 2 << 20
PIECE = 1 << 20


def pieces_of(data: bytes) -> dict[str, object]:
    return {
        "algorithm": "sha256",
        "piece_size": PIECE,
        "hashes": [
            hashlib.sha256(data[i : i + PIECE]).hexdigest() for i in range(0, len(data), PIECE)
        ],
    }


def test_the_spec_codec_round_trips_the_integrity_fields() -> None:
    spec = Spec(
        url="http://x/f",
        checksums=("sha512=" + "ab" * 64, "md5=" + "cd" * 16),
        pieces=("sha256", PIECE, ("ef" * 32, "01" * 32)),
    )
    back = Spec.from_json(spec.to_json())
    assert back == spec
    assert isinstance(back.checksums, tuple)
    assert back.pieces is not None
    assert isinstance(back.pieces[2], tuple)
    # A row an older version wrote has neither key: the defaults.
    old = json.loads(Spec(url="http://x/f").to_json())
    del old["checksums"], old["pieces"]
    legacy = Spec.from_json(json.dumps(old))
    assert legacy.checksums == ()
    assert legacy.pieces is None


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    yield h
    kill_daemon(h)


def test_checksums_and_pieces_through_the_daemon(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    data = gen_bytes(SIZE, seed=6)
    url = server.url(f"/gen/{SIZE}?seed=6&key={key}")
    with bgtransfer.Session("integrity", home=home) as s:
        good = s.download(
            url,
            tmp_path / "good.bin",
            checksums={"sha512": hashlib.sha512(data).hexdigest()},
            pieces=pieces_of(data),
            segments=2,
        )
        plist = pieces_of(data)
        plist["hashes"] = [plist["hashes"][0], hashlib.sha256(b"x").hexdigest()]  # type: ignore[index]
        bad = s.download(url, tmp_path / "bad.bin", pieces=plist, retry_wait=0.01)
        s.wait_all([good, bad], timeout=60)
        assert good.error is None, good.error
        assert list(good.options["checksums"]) == [f"sha512={hashlib.sha512(data).hexdigest()}"]
        assert isinstance(bad.error, bgtransfer.IntegrityError), bad.error
        assert "piece 1 (bytes 1048576-2097151)" in bad.error.message
    assert (tmp_path / "good.bin").read_bytes() == data
    assert not (tmp_path / "bad.bin").exists()
