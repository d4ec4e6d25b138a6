"""The SQLite store's schema: the tables of the current version, and the steps from each
older version (``PRAGMA user_version``) to the next."""

from __future__ import annotations

import sqlite3

__all__ = ["SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION = 10


# One row per request the engine made: what `bgtransfer show` prints as the history. A row
# is written when the request starts (ended_at NULL, outcome "in progress"), updated at
# checkpoints and when it ends (found by ``key``); one still open when a process died is
# marked interrupted when the task is recovered.
_ATTEMPTS_COLUMNS = """(
    task_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    url TEXT NOT NULL,
    range_start INTEGER,
    status INTEGER,
    bytes INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    key TEXT,
    PRIMARY KEY (task_id, n)
)
"""
_ATTEMPTS = "CREATE TABLE attempts " + _ATTEMPTS_COLUMNS
_ATTEMPT_FIELDS = "task_id, n, started_at, ended_at, url, range_start, status, bytes, outcome"

_SCHEMA = (
    """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    path TEXT NOT NULL,
    partial TEXT NOT NULL,
    spec TEXT NOT NULL,
    overwrite INTEGER NOT NULL,
    phase TEXT NOT NULL,
    detail TEXT NOT NULL,
    "offset" INTEGER NOT NULL,
    total INTEGER,
    etag TEXT,
    last_modified TEXT,
    restarts INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    active_seconds REAL NOT NULL,
    owner TEXT,
    background INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    on_complete TEXT,
    hook_state TEXT,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    response TEXT,
    metadata TEXT
);
-- State changes, kept so a process that was away learns what happened (NSURLSession relaunch).
CREATE TABLE events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    detail TEXT NOT NULL,
    bytes_received INTEGER NOT NULL,
    bytes_expected INTEGER,
    error TEXT,
    at REAL NOT NULL
);
CREATE INDEX events_session ON events(session, cursor);
CREATE INDEX tasks_session ON tasks(session, created_at);
CREATE INDEX tasks_phase ON tasks(phase, created_at);
CREATE INDEX tasks_created ON tasks(created_at, id);
CREATE INDEX tasks_session_phase ON tasks(session, phase, created_at, id);
-- One live task per destination: two tasks writing one file is how files get corrupted.
CREATE UNIQUE INDEX tasks_live_path ON tasks(path) WHERE phase != 'done' AND partial != '';
"""
    + _ATTEMPTS
)

# Steps from each older version to the next; a fresh store gets _SCHEMA directly.
_MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE tasks ADD COLUMN response TEXT"],
    2: [_ATTEMPTS],
    # Uploads read their path: only downloads (which have a partial file) need it unique.
    3: [
        "DROP INDEX tasks_live_path",
        "CREATE UNIQUE INDEX tasks_live_path ON tasks(path) "
        "WHERE phase != 'done' AND partial != ''",
    ],
    # The queue is read from the store: find queued tasks without a scan.
    4: ["CREATE INDEX IF NOT EXISTS tasks_phase ON tasks(phase, created_at)"],
    # `ls` pages through every session in creation order.
    5: ["CREATE INDEX IF NOT EXISTS tasks_created ON tasks(created_at, id)"],
    # Segmented downloads keep per-segment offsets in the `response` JSON ("segments"); no
    # DDL, but an older bgtransfer must not read "offset" as a contiguous prefix.
    6: [],
    # Attempts are recorded when they start: ended_at may be NULL, rows found by key.
    7: [
        "CREATE TABLE attempts_v8 " + _ATTEMPTS_COLUMNS,
        f"INSERT INTO attempts_v8 ({_ATTEMPT_FIELDS}) SELECT {_ATTEMPT_FIELDS} FROM attempts",
        "DROP TABLE attempts",
        "ALTER TABLE attempts_v8 RENAME TO attempts",
    ],
    # The app contract: metadata on tasks, `tasks(state=...)` pages by index, and an
    # acknowledgement only ever covers a finished task (older versions also stored it for an
    # unfinished one, which then swallowed the completion: give those back).
    8: [
        "ALTER TABLE tasks ADD COLUMN metadata TEXT",
        "CREATE INDEX IF NOT EXISTS tasks_session_phase ON tasks(session, phase, created_at, id)",
        "UPDATE tasks SET acknowledged=0 WHERE phase != 'done'",
    ],
    # Scheduling: priority and start time on tasks; jobs, job_runs, limits, cooldowns (added
    # by ensure_scheduling_schema, which every version below 10 runs).
    9: [],
}

# Schema version 10: queue order and start times on tasks, plus three tables.
_TASK_COLUMNS = {
    "priority": "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 1",
    "not_before": "ALTER TABLE tasks ADD COLUMN not_before REAL",
}
_SCHEDULING_DDL = [
    "CREATE INDEX IF NOT EXISTS tasks_queue ON tasks(phase, background, priority, created_at, id)",
    "CREATE INDEX IF NOT EXISTS tasks_not_before ON tasks(not_before) WHERE not_before IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    url TEXT NOT NULL,
    path TEXT NOT NULL,
    every REAL NOT NULL,
    anchor REAL NOT NULL,
    next_run REAL NOT NULL,
    options TEXT NOT NULL,
    etag TEXT,
    last_modified TEXT,
    last_task TEXT,
    created_at REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS jobs_next ON jobs(next_run)",
    """CREATE TABLE IF NOT EXISTS job_runs (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    scheduled_for REAL NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL,
    status INTEGER,
    PRIMARY KEY (job_id, n)
)""",
    "CREATE INDEX IF NOT EXISTS job_runs_task ON job_runs(task_id)",
    "CREATE TABLE IF NOT EXISTS limits (origin TEXT PRIMARY KEY, rate INTEGER NOT NULL)",
    # Origins that asked to wait (wall clock), so a restarted daemon keeps waiting.
    "CREATE TABLE IF NOT EXISTS cooldowns (origin TEXT PRIMARY KEY, until REAL NOT NULL, "
    "reason TEXT NOT NULL)",
]


def ensure_scheduling_schema(db: sqlite3.Connection) -> None:
    """Add what schema 10 has (idempotent: a store may have part of it already)."""
    have = {r[1] for r in db.execute("PRAGMA table_info(tasks)")}
    for column, stmt in _TASK_COLUMNS.items():
        if column not in have:
            db.execute(stmt)
    for stmt in _SCHEDULING_DDL:
        db.execute(stmt)


def _column_exists(db: sqlite3.Connection, stmt: str) -> bool:
    """Whether ``stmt`` adds a column that is already there (ADD COLUMN has no IF NOT
    EXISTS; a store rebuilt by hand or half-migrated may have it)."""
    words = stmt.split()
    if words[:5] != ["ALTER", "TABLE", "tasks", "ADD", "COLUMN"]:
        return False
    cols = {r[1] for r in db.execute("PRAGMA table_info(tasks)")}
    return words[5] in cols


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a store at ``version`` to :data:`SCHEMA_VERSION` (inside the caller's
    transaction; 0 is an empty file)."""
    if version == 0:
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                db.execute(stmt)
    else:
        for step in range(version, SCHEMA_VERSION):
            for stmt in _MIGRATIONS[step]:
                if not _column_exists(db, stmt):
                    db.execute(stmt)
    ensure_scheduling_schema(db)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
