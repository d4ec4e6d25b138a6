"""examples/mirror.py, the app of issue 18: SIGKILLed (and its daemon with it) several times,
restarted each time; in the end every file is byte-exact and the ledger has one line each."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import bgtransfer
from bgtransfer.testing import FaultServer, gen_bytes, gen_sha256

from .conftest import daemon_pid, kill_daemon

ROOT = Path(__file__).resolve().parents[2]
MIRROR = ROOT / "examples" / "mirror.py"
FILES = 24
ROUNDS = 5  # killed runs before the last one, which must finish


def size_of(i: int) -> int:
    return (64 << 10) + i * (24 << 10)  # 64 KiB .. ~616 KiB, 7.8 MiB in all


def start(manifest: Path, dest: Path, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [
            sys.executable,
            str(MIRROR),
            str(manifest),
            str(dest),
            "--home",
            str(home),
            "--idle",
            "30",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_mirror_survives_kills_of_the_app_and_the_daemon(
    server: FaultServer, home: Path, tmp_path: Path, key: str
) -> None:
    rng = random.Random(18)
    manifest = tmp_path / "manifest.jsonl"
    dest = tmp_path / "mirror"
    with manifest.open("w") as f:
        for i in range(FILES):
            # Throttled so that kills land mid-transfer; every third body is cut once.
            cut = f"&cut={size_of(i) // 2}&times=1" if i % 3 == 0 else ""
            url = server.url(f"/gen/{size_of(i)}?seed={i}&rate=200000&key={key}-{i}{cut}")
            item = {"name": f"f{i:03d}.bin", "url": url, "sha256": gen_sha256(size_of(i), i)}
            f.write(json.dumps(item) + "\n")

    daemon_kills = 0
    for n in range(ROUNDS):
        app = start(manifest, dest, home)
        # The kill must land while a daemon runs: on a loaded machine the app can take
        # seconds to start one, so the random delay counts from the daemon being up.
        deadline = time.monotonic() + 30
        while daemon_pid(home) is None and app.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.6, 2.0))
        app.kill()  # SIGKILL: no cleanup of any kind
        app.communicate(timeout=10)
        if n == 0:  # the first kill lands mid-way (throttled: ~1.2 MB/s for 7.8 MiB)
            ledger = dest / ".ledger.jsonl"
            assert len(ledger.read_text().splitlines() if ledger.exists() else []) < FILES
        if n % 2 == 1:
            daemon_kills += kill_daemon(home) is not None
    assert daemon_kills >= 1

    last = start(manifest, dest, home)
    _, err = last.communicate(timeout=90)
    assert last.returncode == 0, err
    assert f"{FILES}/{FILES} files mirrored" in err

    lines = [json.loads(x) for x in (dest / ".ledger.jsonl").read_text().splitlines()]
    names = [r["name"] for r in lines]
    assert sorted(names) == [f"f{i:03d}.bin" for i in range(FILES)]  # one line per file
    for i in range(FILES):
        assert (dest / f"f{i:03d}.bin").read_bytes() == gen_bytes(size_of(i), i)
    assert not (dest / ".failures.jsonl").exists()
    leftovers = sorted(
        p.name for p in dest.iterdir() if p.name.startswith(".") and "part" in p.name
    )
    assert leftovers == []

    with bgtransfer.Session("com.example.mirror", home=home) as s:
        tasks = s.tasks()
        assert len(tasks) == FILES  # resubmits on every start created no second task
        assert {t.id for t in tasks} == {r["task"] for r in lines}
        assert all(t.acknowledged for t in tasks)
        assert list(s.completions(timeout=0.5)) == []
