"""What a control request means, whoever serves it: the home's daemon (``_daemon``) or a
client working straight on a PostgreSQL store (``_storeclient``). Pure: no I/O beyond the
target checks of the task builders.

Every task a submit creates is built by ``_tasks.build_row`` or ``build_upload_row`` (the
library's one builder of each kind) from the body's fields; this module checks the body's
shape and finds an earlier submit with the same idempotency key.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._models import PHASE_STATE, TaskState
from bgtransfer._store._base import TaskRow
from bgtransfer._tasks import (
    DOWNLOAD_OPTIONS,
    UPLOAD_OPTIONS,
    build_row,
    build_upload_row,
    check_key,
    same_request,
    same_target,
)

__all__ = [
    "BATCH_LIMIT",
    "KINDS",
    "Submitted",
    "build_item",
    "kinds_of",
    "number",
    "phases_of",
    "prune_args",
    "wait_ids",
    "wait_timeout",
]

_FIELDS = frozenset({"kind", "session", "url", "path", "idempotency_key"})
BATCH_LIMIT = 10_000  # tasks per batch submit, ids per batch wait
KINDS = frozenset({"state", "progress"})
_INT_RANGE = range(-(2**63), 2**63)


@dataclass(frozen=True)
class Submitted:
    """One submit item whose shape was checked: the builder checks the values."""

    body: dict[str, Any]
    kind: str
    session: str
    key: str | None
    options: dict[str, Any]

    @classmethod
    def parse(cls, body: object) -> Submitted:
        if not isinstance(body, dict):
            raise InvalidRequest("a task must be a JSON object")
        kind = "upload" if body.get("kind", "download") == "upload" else "download"
        allowed = UPLOAD_OPTIONS if kind == "upload" else DOWNLOAD_OPTIONS
        # umask: the submitting process's, for the finished file's mode (downloads only).
        known = _FIELDS | allowed.keys() | ({"umask"} if kind == "download" else set())
        unknown = set(body) - known
        if unknown:
            raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        session, key = body.get("session"), check_key(body.get("idempotency_key"))
        if not isinstance(session, str) or not session:
            raise InvalidRequest(f"session must be a non-empty string: {session!r}")
        path = body.get("path")
        if isinstance(path, str) and not os.path.isabs(path):
            # Resolved here it would name a file under the server's working directory.
            raise InvalidRequest(
                f"path must be absolute (the daemon does not know the caller's working "
                f"directory): {path!r}"
            )
        options = {k: body[k] for k in allowed if k in body}
        for pairs in ("headers", "form_fields"):
            if isinstance(options.get(pairs), list):
                options[pairs] = [tuple(h) for h in options[pairs]]
        return cls(body, kind, session, key, options)

    def row(self, *, check_exists: bool) -> TaskRow:
        b = self.body
        if self.kind == "upload":
            return build_upload_row(
                self.session, b.get("path"), b.get("url"), background=True,
                idempotency_key=self.key, **self.options,
            )  # fmt: skip
        return build_row(
            self.session, b.get("url"), b.get("path"), background=True,
            idempotency_key=self.key, check_exists=check_exists, umask=b.get("umask"),
            **self.options,
        )  # fmt: skip

    def names(self, existing: TaskRow) -> bool:
        """Whether this item, which no longer validates (its upload source or target
        directory is gone since), still names the task its key found."""
        return same_target(existing, self.kind, self.body.get("url"), self.body.get("path"))


def build_item(
    find_key: Callable[[str, str], TaskRow | None],
    body: object,
    batch: dict[str, TaskRow] | None = None,
) -> TaskRow | str:
    """A validated new row for one submit item, or the id of its earlier twin (same
    idempotency key in the same session, found by ``find_key(session, key)`` or earlier in
    ``batch``)."""
    item = Submitted.parse(body)
    # The earlier twin is looked up before the target is checked: a repeated submit finds
    # its own finished file there, and gets its task back.
    existing = None
    if item.key is not None:
        existing = (batch or {}).get(item.key) or find_key(item.session, item.key)
    try:
        row = item.row(check_exists=existing is None)
    except InvalidRequest:
        if existing is not None and item.names(existing):
            return existing.id
        raise
    if existing is not None:
        same_request(existing, row)
        return existing.id
    if item.key is not None and batch is not None:
        batch[item.key] = row
    return row


def kinds_of(raw: str | None) -> frozenset[str]:
    if raw is None:
        return KINDS
    kinds = frozenset(k.strip() for k in raw.split(",") if k.strip())
    if not kinds or kinds - KINDS:
        raise InvalidRequest(f"kinds must be some of {sorted(KINDS)}, not {raw!r}")
    return kinds


def phases_of(states: list[str]) -> list[str]:
    """The stored phases behind public state names ("completed", "running,suspended")."""
    wanted: set[TaskState] = set()
    for raw in states:
        for name in filter(None, raw.split(",")):
            try:
                wanted.add(TaskState(name.strip().lower()))
            except ValueError:
                names = ", ".join(s.value for s in TaskState)
                raise InvalidRequest(f"unknown state {name!r}; one of: {names}") from None
    return sorted(p.value for p, s in PHASE_STATE.items() if s in wanted)


def number(params: Mapping[str, str], name: str, default: float) -> float:
    """A finite number from a query, or ``default``."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number: {raw[:40]!r}") from None
    if not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a finite number: {raw[:40]!r}")
    return value


def integer(params: Mapping[str, str], name: str, default: int) -> int:
    """An integer from a query, or ``default``."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if len(raw) <= 25 else None
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer: {raw[:40]!r}") from None
    if value is None or value not in _INT_RANGE:
        raise InvalidRequest(f"{name} is out of range: {raw[:40]!r}")
    return value


def wait_timeout(timeout: float) -> float:
    if not 0 <= timeout <= 300:
        raise InvalidRequest(f"timeout must be between 0 and 300 seconds: {timeout}")
    return timeout


def wait_ids(body: object) -> tuple[list[str], float]:
    """``{"ids": [...], "timeout": S}`` of a batch wait, checked."""
    if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
        raise InvalidRequest('wait needs {"ids": [...], "timeout": seconds}')
    ids = body["ids"]
    if not 1 <= len(ids) <= BATCH_LIMIT or not all(isinstance(i, str) for i in ids):
        raise InvalidRequest("ids must be a list of 1 to 10000 task ids")
    timeout = body.get("timeout", 30)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise InvalidRequest(f"timeout must be a number of seconds: {timeout!r}")
    return list(ids), wait_timeout(float(timeout))


def wait_also(body: object) -> list[str]:
    """The ``also`` ids of a batch wait: tasks to report on without waiting for them (the
    answer's ``done`` holds those whose completion is committed); [] when not given."""
    also = body.get("also", []) if isinstance(body, dict) else []
    if (
        not isinstance(also, list)
        or len(also) > BATCH_LIMIT
        or not all(isinstance(i, str) for i in also)
    ):
        raise InvalidRequest("also must be a list of at most 10000 task ids")
    return also


def prune_args(body: object) -> tuple[float | None, str | None]:
    """``{"older_than": S | null, "session": S | null}`` of a prune: (finished before this
    time, of this session)."""
    if not isinstance(body, dict) or set(body) - {"older_than", "session"}:
        raise InvalidRequest('prune takes {"older_than": seconds, "session": name}')
    older, session = body.get("older_than"), body.get("session")
    if older is not None and (
        not isinstance(older, int | float) or isinstance(older, bool) or older < 0
    ):
        raise InvalidRequest(f"older_than must be a number of seconds >= 0: {older!r}")
    if session is not None and not isinstance(session, str):
        raise InvalidRequest(f"session must be a string: {session!r}")
    return (None if older is None else time.time() - older), session
