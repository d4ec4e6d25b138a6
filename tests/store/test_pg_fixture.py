"""The PostgreSQL fixture: a server that runs unprivileged, and no silent skip in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.store.pg import PostgresServer

ROOT = Path(__file__).resolve().parents[2]


def test_the_server_runs_unprivileged_on_loopback(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.url, autocommit=True) as con:
        (addr,) = con.execute("SELECT inet_server_addr()::text").fetchone() or (None,)
        (data,) = con.execute("SHOW data_directory").fetchone() or (None,)
    assert addr in ("127.0.0.1", "127.0.0.1/32")
    assert str(data).startswith(postgres.root)
    owner = os.stat(postgres.root).st_uid
    assert owner != 0  # PostgreSQL refuses root: the files are the server user's
    assert owner == os.geteuid() or os.geteuid() == 0


def _run_without_postgres(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_pg.py"
    test.write_text(
        "from tests.store.pg import postgres  # noqa: F401\ndef test_it(postgres):\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["BGTRANSFER_PG_BINDIR"] = str(tmp_path / "no-such-postgresql")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", "--rootdir",
         str(ROOT), "-c", str(ROOT / "pyproject.toml"), str(test)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_missing_postgresql_skips_with_the_reason_outside_ci(tmp_path: Path) -> None:
    r = _run_without_postgres(tmp_path, None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 skipped" in r.stdout
    assert "PostgreSQL is not installed (apt-get install postgresql)" in r.stdout


def test_missing_postgresql_fails_under_ci(tmp_path: Path) -> None:
    r = _run_without_postgres(tmp_path, "true")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "CI=true but PostgreSQL is not installed" in r.stdout
