"""`get` and `add` take curl's --max-filesize (issue 11 item 15)."""

from __future__ import annotations

import json
from pathlib import Path

from bgtransfer.testing import FaultServer, gen_bytes
from tests.cli.test_cli import bgt, home  # noqa: F401 - the fixture


def test_get_max_filesize(server: FaultServer, home: Path, tmp_path: Path, key: str) -> None:  # noqa: F811
    url = server.url(f"/gen/2M?key={key}")
    r = bgt(home, "get", url, "-o", str(tmp_path / "a.bin"), "--max-filesize", "1M")
    assert r.returncode == 1, r.stderr
    assert "more than max_bytes (1048576)" in r.stderr
    assert not (tmp_path / "a.bin").exists()
    r = bgt(home, "get", url, "-o", str(tmp_path / "b.bin"), "--max-filesize", "2M", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["max_bytes"] == 2 << 20
    assert (tmp_path / "b.bin").read_bytes() == gen_bytes(2 << 20)


def test_add_max_filesize_and_bad_sizes(home: Path, tmp_path: Path) -> None:  # noqa: F811
    url = "http://127.0.0.1:9/x"
    r = bgt(home, "add", url, "-o", str(tmp_path / "c.bin"), "--max-filesize", "10k", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["max_bytes"] == 10240
    for bad in ("ten", "1.5M", "-3", "5X"):
        r = bgt(home, "add", url, "-o", str(tmp_path / "d.bin"), "--max-filesize", bad)
        assert r.returncode == 64, (bad, r.stderr)
        assert "size" in r.stderr
