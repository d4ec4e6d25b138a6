"""Issue 17 through the command line and a real daemon: ``get URL MIRROR...``, ``--metalink``
and ``--refresh-cmd`` (an argv the daemon runs, no shell), with ``show`` printing the
attempt history (refreshes, dropped mirrors)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

from bgtransfer.testing import FaultServer, gen_bytes
from tests.cli.test_cli import bgt, home  # noqa: F401 - the fixture

MINT = """\
import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
"""


def minter(tmp_path: Path) -> Path:
    script = tmp_path / "mint.py"
    script.write_text(MINT)
    return script


def test_get_with_a_refresh_command_keeps_the_bytes(
    server: FaultServer,
    home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    data = os.urandom(1 << 20)
    name = f"cli-{os.urandom(4).hex()}"
    server.add(name, data)
    first = server.sign_url(f"/r/{name}", max_bytes=400_000)
    sign = server.url(f"/sign?path=/r/{name}&expires_in=600")
    cmd = shlex.join([sys.executable, str(minter(tmp_path)), sign])
    dest = tmp_path / "a.bin"
    r = bgt(home, "get", first, "-o", str(dest), "--refresh-cmd", cmd, "--json")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == data
    task = json.loads(r.stdout)
    shown = bgt(home, "show", task["id"])
    assert shown.returncode == 0, shown.stderr
    assert "URL refreshed" in shown.stdout, shown.stdout
    assert "400000 bytes kept" in shown.stdout
    # The signed URL's secret is in no output.
    secret = first.split("X-Amz-Signature=")[1]
    assert secret not in shown.stdout + r.stdout + r.stderr
    resumed = [
        q
        for q in server.requests(f"/s/r/{name}")
        if q.query.get("X-Amz-Signature") not in (None, secret)
    ]
    assert resumed[0].headers.get("range") == "bytes=400000-"


def test_a_failing_refresh_command_fails_the_task_with_its_stderr(
    server: FaultServer,
    home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    name = f"clif-{os.urandom(4).hex()}"
    server.add(name, os.urandom(300_000))
    first = server.sign_url(f"/r/{name}", max_bytes=50_000)
    script = tmp_path / "no.py"
    script.write_text("import sys\nprint('token service: 401 Unauthorized', file=sys.stderr)\n"
                      "sys.exit(3)\n")  # fmt: skip
    cmd = shlex.join([sys.executable, str(script)])
    r = bgt(home, "get", first, "-o", str(tmp_path / "b"), "--refresh-cmd", cmd, "--json")
    assert r.returncode != 0
    task = json.loads(r.stdout)
    assert task["error_code"] == "refresh_failed"
    assert "exited with 3" in task["error"]
    assert "token service: 401 Unauthorized" in task["error"]
    bad = tmp_path / "bad.py"
    bad.write_text("print('{not json')\n")
    cmd = shlex.join([sys.executable, str(bad)])
    first = server.sign_url(f"/r/{name}", max_bytes=50_000)
    r = bgt(home, "get", first, "-o", str(tmp_path / "c"), "--refresh-cmd", cmd, "--json")
    assert json.loads(r.stdout)["error"].startswith("a refresh command printed invalid JSON")


def test_refresh_cmd_is_checked(home: Path, tmp_path: Path) -> None:  # noqa: F811
    r = bgt(home, "add", "http://127.0.0.1:9/x", "-o", str(tmp_path / "x"), "--refresh-cmd", "'")
    assert r.returncode == 5  # EXIT_INVALID
    assert "--refresh-cmd" in r.stderr


def test_get_with_mirrors_drops_a_liar(
    server: FaultServer,
    home: Path,  # noqa: F811
    tmp_path: Path,
    key: str,
) -> None:
    size = 2 << 20
    first = server.url(f"/gen/{size}?key={key}&cut=500000&times=1")
    liar = server.url(f"/gen/{size}?key={key}&lie=1")
    honest = server.url(f"/gen/{size}?key={key}&mirror=3")
    dest = tmp_path / "m.bin"
    r = bgt(home, "get", first, liar, honest, "-o", str(dest), "--json")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == gen_bytes(size)
    task = json.loads(r.stdout)
    shown = bgt(home, "show", task["id"])
    assert "mirror dropped" in shown.stdout, shown.stdout


def test_get_metalink_one_file_and_several(
    server: FaultServer,
    home: Path,  # noqa: F811
    tmp_path: Path,
    key: str,
) -> None:
    import urllib.request

    size = 1 << 20
    with urllib.request.urlopen(
        server.url(f"/metalink/gen/{size}?seed=5&key={key}&mirrors=3&liar=2"), timeout=10
    ) as resp:
        doc = resp.read()
    meta = tmp_path / "f.meta4"
    meta.write_bytes(doc)
    dest = tmp_path / "one.bin"
    r = bgt(home, "get", "--metalink", str(meta), "-o", str(dest), "--json")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == gen_bytes(size, 5)
    task = json.loads(r.stdout)
    assert task["sha256"]  # the Metalink's sha-256 is checked
    # Two files in one document: one task each, into the directory.
    two = doc.replace(b"</metalink>", b"").rstrip()
    body = doc[doc.index(b"<file ") : doc.index(b"</file>") + len(b"</file>")]
    two = two + body.replace(b'name="', b'name="copy-', 1) + b"</metalink>"
    meta2 = tmp_path / "two.meta4"
    meta2.write_bytes(two)
    out = tmp_path / "dir"
    r = bgt(home, "get", "--metalink", str(meta2), "-o", str(out) + os.sep, "--json")
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(out))
    assert len(names) == 2, names
    for n in names:
        assert (out / n).read_bytes() == gen_bytes(size, 5)
    r = bgt(home, "get", "--metalink", str(meta2), "http://h/x")
    assert r.returncode == 5  # EXIT_INVALID
    assert "not both" in r.stderr


COUNTING = """\
import sys, urllib.request
with open(sys.argv[2], "a") as f:
    f.write("called\\n")
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
"""


def test_a_killed_daemon_goes_on_with_the_refreshed_url(
    server: FaultServer,
    home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from tests.daemon.conftest import kill_daemon

    data = os.urandom(3 << 20)
    name = f"clik-{os.urandom(4).hex()}"
    server.add(name, data)
    first = server.sign_url(f"/r/{name}", max_bytes=200_000)
    secret = first.split("X-Amz-Signature=")[1]
    script = tmp_path / "count.py"
    script.write_text(COUNTING)
    calls = tmp_path / "calls"
    sign = server.url(f"/sign?path=/r/{name}&expires_in=600")
    cmd = shlex.join([sys.executable, str(script), sign, str(calls)])
    dest = tmp_path / "k.bin"
    r = bgt(home, "add", first, "-o", str(dest), "--refresh-cmd", cmd, "--limit-rate", "1M")
    assert r.returncode == 0, r.stderr
    task_id = r.stdout.strip()

    def refreshed_bytes() -> int:
        reqs = server.requests(f"/s/r/{name}")
        return sum(1 for q in reqs if q.query.get("X-Amz-Signature") not in (None, secret))

    deadline = time.monotonic() + 30
    while refreshed_bytes() == 0 or dest.exists():
        assert time.monotonic() < deadline, "no request to the refreshed URL"
        time.sleep(0.05)
    time.sleep(0.3)
    assert kill_daemon(home) is not None
    r = bgt(home, "wait", task_id, "--timeout", "60", "--json")
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == data
    assert calls.read_text() == "called\n"  # the new URL was on record: no second refresh


def test_put_with_a_refresh_command_gets_a_new_token(
    server: FaultServer,
    home: Path,  # noqa: F811
    tmp_path: Path,
    key: str,
) -> None:
    data = os.urandom(3 << 20)
    src = tmp_path / f"put-{key}.bin"
    src.write_bytes(data)
    server.upload_faults(src.name, status_once=403)  # the first PATCH: the token expired
    url = server.url("/tus/")
    answer = json.dumps({"url": url, "headers": {"Authorization": f"Bearer new-{key}"}})
    cmd = shlex.join([sys.executable, "-c", f"print({answer!r})"])
    r = bgt(home, "put", str(src), url, "--protocol", "tus", "--refresh-cmd", cmd,
            "-H", f"Authorization: Bearer old-{key}", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert server.tus_data(src.name) == data
    auth = [
        q.headers.get("authorization")
        for q in server.requests()
        if q.method == "PATCH" and key in (q.headers.get("authorization") or "")
    ]
    assert auth[0] == f"Bearer old-{key}"
    assert set(auth[1:]) == {f"Bearer new-{key}"}
