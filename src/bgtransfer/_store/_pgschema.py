"""The PostgreSQL store's schema: the same tables as SQLite's (version 10 there), typed for
PostgreSQL, plus what fleet mode needs; versioned in ``bgtransfer_schema``.

Booleans stay INTEGER and times DOUBLE PRECISION (seconds since the epoch), so both backends
share one row codec; ids sort bytewise (COLLATE "C"), as SQLite compares them, whatever
the database's locale (prefix lookups and page cursors depend on it).
"""

from __future__ import annotations

__all__ = [
    "CONTROLS",
    "CONTROL_CHANNEL",
    "COOLDOWN_CHANNEL",
    "EVENTS_CHANNEL",
    "LIMITS_CHANNEL",
    "MIGRATIONS",
    "PROGRESS_CHANNEL",
    "QUEUE_CHANNEL",
    "SCHEMA_VERSION",
]

SCHEMA_VERSION = 6
EVENTS_CHANNEL = "bgtransfer_events"  # NOTIFY payload: the session whose events changed
# NOTIFY payload: the id of a task whose holder is asked to suspend or cancel it.
CONTROL_CHANNEL = "bgtransfer_control"
CONTROLS = ("suspend", "cancel")  # the values of tasks.control (NULL: nothing asked)
QUEUE_CHANNEL = "bgtransfer_queue"  # NOTIFY (no payload): a task may be claimed now
COOLDOWN_CHANNEL = "bgtransfer_cooldown"  # NOTIFY (no payload): an origin asked to wait
LIMITS_CHANNEL = "bgtransfer_limits"  # NOTIFY (no payload): a bandwidth cap changed
# NOTIFY payload: the session one of whose tasks checkpointed new bytes (progress).
PROGRESS_CHANNEL = "bgtransfer_progress"

_V1 = [
    """CREATE TABLE tasks (
    id TEXT COLLATE "C" PRIMARY KEY,
    session TEXT NOT NULL,
    path TEXT NOT NULL,
    partial TEXT NOT NULL,
    spec TEXT NOT NULL,
    overwrite INTEGER NOT NULL,
    phase TEXT NOT NULL,
    detail TEXT NOT NULL,
    "offset" BIGINT NOT NULL,
    total BIGINT,
    etag TEXT,
    last_modified TEXT,
    restarts INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    active_seconds DOUBLE PRECISION NOT NULL,
    owner TEXT,
    background INTEGER NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    on_complete TEXT,
    hook_state TEXT,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    response TEXT,
    metadata TEXT,
    priority INTEGER NOT NULL DEFAULT 1,
    not_before DOUBLE PRECISION
)""",
    """CREATE TABLE events (
    cursor BIGSERIAL PRIMARY KEY,
    session TEXT NOT NULL,
    task_id TEXT COLLATE "C" NOT NULL,
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    detail TEXT NOT NULL,
    bytes_received BIGINT NOT NULL,
    bytes_expected BIGINT,
    error TEXT,
    at DOUBLE PRECISION NOT NULL
)""",
    """CREATE TABLE attempts (
    task_id TEXT COLLATE "C" NOT NULL,
    n INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    url TEXT NOT NULL,
    range_start BIGINT,
    status INTEGER,
    bytes BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    key TEXT,
    PRIMARY KEY (task_id, n)
)""",
    "CREATE INDEX events_session ON events(session, cursor)",
    "CREATE INDEX events_task ON events(task_id, cursor)",
    "CREATE INDEX tasks_session ON tasks(session, created_at)",
    "CREATE INDEX tasks_created ON tasks(created_at, id)",
    "CREATE INDEX tasks_session_phase ON tasks(session, phase, created_at, id)",
    "CREATE INDEX tasks_queue ON tasks(phase, background, priority, created_at, id)",
    "CREATE INDEX tasks_not_before ON tasks(not_before) WHERE not_before IS NOT NULL",
    "CREATE INDEX tasks_hooks ON tasks(hook_state) WHERE hook_state IS NOT NULL",
    # One live task per destination: two tasks writing one file is how files get corrupted.
    "CREATE UNIQUE INDEX tasks_live_path ON tasks(path) WHERE phase != 'done' AND partial != ''",
    """CREATE TABLE jobs (
    id TEXT COLLATE "C" PRIMARY KEY,
    session TEXT NOT NULL,
    url TEXT NOT NULL,
    path TEXT NOT NULL,
    every DOUBLE PRECISION NOT NULL,
    anchor DOUBLE PRECISION NOT NULL,
    next_run DOUBLE PRECISION NOT NULL,
    options TEXT NOT NULL,
    etag TEXT,
    last_modified TEXT,
    last_task TEXT,
    created_at DOUBLE PRECISION NOT NULL
)""",
    "CREATE INDEX jobs_next ON jobs(next_run)",
    """CREATE TABLE job_runs (
    job_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    scheduled_for DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    outcome TEXT NOT NULL,
    status INTEGER,
    PRIMARY KEY (job_id, n)
)""",
    "CREATE INDEX job_runs_task ON job_runs(task_id)",
    "CREATE TABLE limits (origin TEXT PRIMARY KEY, rate BIGINT NOT NULL)",
    "CREATE TABLE cooldowns (origin TEXT PRIMARY KEY, until DOUBLE PRECISION NOT NULL, "
    "reason TEXT NOT NULL)",
]

# Fleet mode: a worker holds a task by a lease that expires unless renewed; each claim bumps
# the generation, the fencing token every commit of the holder must still match.
_V2 = [
    "ALTER TABLE tasks ADD COLUMN lease_owner TEXT",
    "ALTER TABLE tasks ADD COLUMN lease_expires DOUBLE PRECISION",
    "ALTER TABLE tasks ADD COLUMN generation BIGINT NOT NULL DEFAULT 0",
    "CREATE INDEX tasks_lease ON tasks(lease_expires) "
    "WHERE lease_owner IS NOT NULL AND phase != 'done'",
    # State events wake listeners on other hosts (no polling loop): one notification per
    # session per transaction (PostgreSQL folds equal ones), sent when the commit lands.
    "CREATE FUNCTION bgtransfer_event_notify() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN PERFORM pg_notify('{EVENTS_CHANNEL}', NEW.session); RETURN NULL; END $$",
    "CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH ROW "
    "EXECUTE FUNCTION bgtransfer_event_notify()",
    # The workers, for `status`: who is there, where, and when it was last heard of.
    """CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL
)""",
]

# Control of a task a worker holds: a client on another host cannot stop the worker's
# coroutine, so it asks (tasks.control, and a NOTIFY on CONTROL_CHANNEL) and the holder
# applies the request through its own fenced commit. The request is cleared by the commit
# that satisfies it (whoever makes it): the trigger below, so no writer can forget it.
_V3 = [
    "ALTER TABLE tasks ADD COLUMN control TEXT CHECK (control IN ('suspend', 'cancel'))",
    "CREATE INDEX tasks_control ON tasks(lease_owner) WHERE control IS NOT NULL",
    "CREATE FUNCTION bgtransfer_control_done() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF (NEW.control = 'suspend' AND NEW.phase IN ('suspended', 'canceling', 'done')) "
    "OR (NEW.control = 'cancel' AND NEW.phase IN ('canceling', 'done')) "
    "THEN NEW.control := NULL; END IF; RETURN NEW; END $$",
    "CREATE TRIGGER tasks_control_done BEFORE UPDATE OF phase ON tasks FOR EACH ROW "
    "WHEN (NEW.control IS NOT NULL) EXECUTE FUNCTION bgtransfer_control_done()",
]

# Workers wait for work on LISTEN, not on a polling loop: a task that becomes claimable
# (submitted, resumed, released by a worker that stopped) wakes them. One notification per
# transaction (equal ones are folded), sent when the commit lands. A task whose start time
# comes, or whose holder's lease runs out, wakes nobody: the workers' slow sweep finds them.
_V4 = [
    "CREATE FUNCTION bgtransfer_queue_notify() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN PERFORM pg_notify('{QUEUE_CHANNEL}', ''); RETURN NULL; END $$",
    "CREATE TRIGGER tasks_queue_notify AFTER INSERT OR UPDATE OF phase, lease_owner ON tasks "
    "FOR EACH ROW WHEN (NEW.phase = 'queued' AND NEW.lease_owner IS NULL "
    "AND NEW.background = 1) EXECUTE FUNCTION bgtransfer_queue_notify()",
    # Per-origin limits hold fleet-wide: a claim counts the live leases of each origin.
    # The origin (scheme://host:port, as _protocol._origin.origin_key spells it) is kept in
    # a column the database fills from the spec, whoever inserts the row.
    "ALTER TABLE tasks ADD COLUMN origin TEXT",
    # (chr(63) is the question mark: the store's SQL keeps "?" for its placeholders.)
    """CREATE FUNCTION bgtransfer_origin(spec TEXT) RETURNS TEXT LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE u TEXT; scheme TEXT; auth TEXT;
BEGIN
    u := spec::json->>'url';
    scheme := lower(substring(u from '^([A-Za-z][A-Za-z0-9+.-]*)://'));
    auth := lower(substring(u from '^[A-Za-z][A-Za-z0-9+.-]*://([^/#' || chr(63) || ']*)'));
    IF scheme IS NULL OR auth IS NULL THEN RETURN NULL; END IF;
    auth := regexp_replace(auth, '^.*@', '');
    IF auth !~ ':[0-9]+$' THEN
        auth := auth || CASE scheme WHEN 'https' THEN ':443' WHEN 'http' THEN ':80' ELSE '' END;
    END IF;
    RETURN scheme || '://' || auth;
END $$""",
    "CREATE FUNCTION bgtransfer_set_origin() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN NEW.origin := bgtransfer_origin(NEW.spec); RETURN NEW; END $$",
    "CREATE TRIGGER tasks_origin BEFORE INSERT OR UPDATE OF spec ON tasks "
    "FOR EACH ROW EXECUTE FUNCTION bgtransfer_set_origin()",
    "UPDATE tasks SET origin = bgtransfer_origin(spec)",
    "CREATE INDEX tasks_origin_live ON tasks(origin) "
    "WHERE lease_owner IS NOT NULL AND phase != 'done'",
]

# Cool-downs and bandwidth caps hold fleet-wide: a change of either wakes every worker (a
# 429 heard by one stops the others' requests to that origin; a `bgtransfer limit` is
# shared out again). Statement triggers: one notification per change, whoever writes it.
# A worker states its lease, so `status` can tell a worker that stopped heartbeating.
_V5 = [
    "CREATE FUNCTION bgtransfer_pace_notify() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN PERFORM pg_notify(TG_ARGV[0], ''); RETURN NULL; END $$",
    "CREATE TRIGGER cooldowns_notify AFTER INSERT OR UPDATE ON cooldowns "
    f"FOR EACH STATEMENT EXECUTE FUNCTION bgtransfer_pace_notify('{COOLDOWN_CHANNEL}')",
    "CREATE TRIGGER limits_notify AFTER INSERT OR UPDATE OR DELETE ON limits "
    f"FOR EACH STATEMENT EXECUTE FUNCTION bgtransfer_pace_notify('{LIMITS_CHANNEL}')",
    "ALTER TABLE workers ADD COLUMN lease_s DOUBLE PRECISION",
]

# Progress without a row per tick: a checkpoint that moves a task's offset notifies its
# session (one notification per session per transaction, folded), and an event stream that
# wants progress reads the running tasks' checkpointed bytes (_storeclient._progress).
_V6 = [
    "CREATE FUNCTION bgtransfer_progress_notify() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN PERFORM pg_notify('{PROGRESS_CHANNEL}', NEW.session); RETURN NULL; END $$",
    'CREATE TRIGGER tasks_progress_notify AFTER UPDATE OF "offset" ON tasks FOR EACH ROW '
    'WHEN (NEW."offset" IS DISTINCT FROM OLD."offset" AND NEW.phase != \'done\') '
    "EXECUTE FUNCTION bgtransfer_progress_notify()",
]

# MIGRATIONS[v]: the steps from version v to v + 1 (0: an empty database).
MIGRATIONS: dict[int, list[str]] = {0: _V1, 1: _V2, 2: _V3, 3: _V4, 4: _V5, 5: _V6}
