"""The two backends agree: the same random sequence of store calls gives the same answers
and leaves the same state on SQLite and on PostgreSQL (differential testing, Hypothesis).

The conformance suite states what a store must do case by case; this catches what no case
states (an ordering, a NULL, a transaction boundary one of the engines handles otherwise).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgtransfer._models import Phase
from bgtransfer._store._base import Attempt, Store, TaskRow
from bgtransfer._store._postgres import PostgresStore
from bgtransfer._store._sqlite import SQLiteStore
from bgtransfer._tasks import build_row
from tests.store.pg import PostgresServer

PHASES = [Phase.QUEUED, Phase.TRANSFERRING, Phase.WAITING_RETRY, Phase.SUSPENDED,
          Phase.CANCELING, Phase.DONE]  # fmt: skip
N = 4  # task slots; two slots may share a destination path

ops = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, N - 1), st.sampled_from(["low", "normal", "high"]),
              st.booleans(), st.booleans()),
    st.tuples(st.just("save"), st.integers(0, N - 1), st.sampled_from(PHASES),
              st.integers(0, 1000), st.booleans()),
    st.tuples(st.just("attempt"), st.integers(0, N - 1), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("save"), st.integers(0, N - 1), st.just(Phase.DONE), st.just(7),
              st.just(True)),  # finishing, often: completions and acknowledgements follow
    st.tuples(st.just("ack"), st.integers(0, N - 1)),
    st.tuples(st.just("remove"), st.lists(st.integers(0, N - 1), max_size=3)),
    st.tuples(st.just("owner"), st.integers(0, N - 1), st.sampled_from([None, "o1", "o2"])),
    st.tuples(st.just("requeue"), st.booleans()),
    st.tuples(st.just("interrupt"), st.sampled_from(["o1", "o2"])),
    st.tuples(st.just("close_open"), st.booleans()),
    st.tuples(st.just("limit"), st.sampled_from([None, "http://a:80"]),
              st.sampled_from([None, 1, 500])),
)  # fmt: skip


class _World:
    """The rows the calls refer to, built once so both stores get identical ones."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.rows: dict[int, TaskRow] = {}

    def row(self, slot: int, priority: str, background: bool, key: bool) -> TaskRow:
        if slot not in self.rows:
            r = build_row(
                "s", f"http://h/{slot}", self.tmp / f"f{slot // 2}", background=background,
                priority=priority, idempotency_key=f"k{slot % 3}" if key else None,
            )  # fmt: skip
            r.created_at = 1000.0 + slot  # distinct: the order is then fully defined
            self.rows[slot] = r
        return self.rows[slot]

    def id(self, slot: int) -> str:
        return self.rows[slot].id if slot in self.rows else f"missing-{slot}"


def _apply(store: Store, world: _World, op: tuple[Any, ...], step: int) -> object:
    kind = op[0]
    try:
        if kind == "insert":
            store.insert(world.row(op[1], op[2], op[3], op[4]))
        elif kind == "save" and op[1] in world.rows:
            row = world.rows[op[1]]
            snap = dataclasses.replace(row.snap, phase=op[2], detail=str(op[2]), offset=op[3])
            event = ("s", "x") if op[4] else None
            return store.save(row.id, snap, wall_time=2000.0 + step, event=event) is not None
        elif kind == "attempt" and op[1] in world.rows:
            a = Attempt(2000.0 + step, "http://h/x", op[2], key=f"k{op[2]}")
            if op[3]:
                a.ended_at, a.outcome, a.bytes = 2001.0 + step, "done", op[2] * 10
            with store.transaction():
                store.save_in_tx(world.id(op[1]), None, wall_time=2000.0 + step, attempts=[a])
        elif kind == "ack":
            return store.acknowledge(world.id(op[1]))
        elif kind == "remove":
            return store.remove([world.id(s) for s in op[1]])
        elif kind == "owner":
            store.set_owner(world.id(op[1]), op[2])
        elif kind == "requeue":
            return store.requeue_running(background=op[1])
        elif kind == "interrupt":
            store.interrupt_queued(op[1], "interrupted")
        elif kind == "close_open":
            return store.close_open_attempts("gone", background=op[1])
        elif kind == "limit":
            store.set_limit(op[1], op[2])
    except Exception as exc:  # noqa: BLE001 - the class is what must agree
        return type(exc).__name__
    return None


def _state(store: Store, world: _World) -> object:
    return (
        [(r.id, r.snap.phase, r.snap.offset, r.owner, r.acknowledged, r.finished_at,
          r.snap.detail) for r in store.list()],
        [(e.task_id, e.phase, e.bytes_received, e.at) for e in store.events_since("s", 0)],
        [e.task_id for e in store.unacknowledged_completions("s")],
        sorted(store.counts().items()),
        [r.id for r in store.next_queued(background=True, owner=None, limit=10)],
        [r.id for r in store.next_queued(background=False, owner="o1", limit=10)],
        [[a.to_json() for a in store.attempts(world.id(s))] for s in range(N)],
        store.finished_ids(),
        store.limits(),
    )  # fmt: skip


inserts = st.lists(
    st.tuples(st.sampled_from(["low", "normal", "high"]), st.booleans(), st.booleans()),
    min_size=N,
    max_size=N,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(setup=inserts, program=st.lists(ops, min_size=5, max_size=40))
def test_sqlite_and_postgresql_agree(
    postgres: PostgresServer,
    setup: list[tuple[str, bool, bool]],
    program: list[tuple[Any, ...]],
) -> None:
    # Every slot is inserted first (some inserts are refused: a shared path or key), so
    # the calls after it find tasks to act on.
    program = [("insert", slot, *args) for slot, args in enumerate(setup)] + program
    url = postgres.create_schema()
    with tempfile.TemporaryDirectory() as tmp:
        world = _World(Path(tmp))
        lite, pg = SQLiteStore(str(Path(tmp) / "s.db")), PostgresStore(url)
        try:
            for step, op in enumerate(program):
                got = (_apply(lite, world, op, step), _apply(pg, world, op, step))
                assert got[0] == got[1], (step, op)
            assert _state(lite, world) == _state(pg, world)
        finally:
            lite.close()
            pg.close()
            postgres.drop_schema(url)
