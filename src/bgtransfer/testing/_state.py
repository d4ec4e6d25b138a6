"""What the fault server remembers: resources, request log, fault counters and uploads.

One lock guards all of it: the server loop mutates it, tests read it from other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from bgtransfer.testing._bodies import Resource
from bgtransfer.testing._http import RequestRecord
from bgtransfer.testing._knobs import UploadFaults


@dataclass(eq=False)
class TusUpload:
    """One tus upload resource (``/tus/<id>``); ``data`` holds the bytes appended so far."""

    id: str
    name: str
    length: int
    metadata: dict[str, bytes]
    raw_metadata: str | None
    data: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def offset(self) -> int:
        return len(self.data)

    @property
    def complete(self) -> bool:
        return len(self.data) == self.length


@dataclass(eq=False)
class IetfUpload:
    """One IETF resumable upload resource (``/ietf/u/<id>``) created at ``/ietf/<name>``."""

    id: str
    name: str
    length: int | None
    data: bytearray = field(default_factory=bytearray, repr=False)
    complete: bool = False

    @property
    def offset(self) -> int:
        return len(self.data)


def upload_names(up: TusUpload | IetfUpload) -> tuple[str, ...]:
    return names_of(up.name, up.id)


def names_of(name: str, uid: str) -> tuple[str, ...]:
    return (name,) if name == uid else (name, uid)


class State:
    """Everything the handlers share. Callers of ``*_locked`` and ``find_*`` hold ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[RequestRecord] = []
        self.resources: dict[str, Resource] = {}
        self.counters: dict[str, int] = {}
        self.gen_versions: dict[str, int] = {}
        self.born = time.monotonic()
        self.uploads: dict[str, bytes] = {}
        self.upload_fields: dict[str, dict[str, str]] = {}
        self.tus_uploads: dict[str, TusUpload] = {}
        self.ietf_uploads: dict[str, IetfUpload] = {}
        self.received: dict[str, int] = {}
        self.plain_done: dict[str, list[str]] = {}  # name -> keys it stored in uploads
        self.tus_names: dict[str, str] = {}  # name -> id of the latest upload with it
        self.ietf_names: dict[str, str] = {}
        # id -> name of every tus/IETF upload ever created, so bytes sent to a lost
        # upload's URL still count for its name.
        self.id_names: dict[str, str] = {}
        self.upload_faults: dict[str, UploadFaults] = {}
        # /r and /gen responses being sent right now, by connection
        self.serving: set[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = set()
        self.peak_serving = 0
        # listener address -> lie mode for every /r and /gen answer it gives
        self.host_lies: dict[str, str] = {}

    def record(self, rec: RequestRecord) -> None:
        with self.lock:
            self.log.append(rec)

    def hit(self, key: str) -> int:
        """Count one request of this fault key; how many there were so far."""
        with self.lock:
            n = self.counters.get(key, 0) + 1
            self.counters[key] = n
            return n

    @contextlib.contextmanager
    def serving_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Iterator[None]:
        """Track a /r or /gen response for ``peak_concurrency``."""
        pair = (reader, writer)
        with self.lock:
            self.serving.add(pair)
            live = sum(
                1 for r, w in self.serving if not r.at_eof() and not w.transport.is_closing()
            )
            self.peak_serving = max(self.peak_serving, live)
        try:
            yield
        finally:
            with self.lock:
                self.serving.discard(pair)

    def truncate(self, data: bytearray, size: int) -> None:
        with self.lock:
            del data[size:]

    def find_tus(self, name: str) -> TusUpload | None:
        up = self.tus_uploads.get(name)
        if up is None and name in self.tus_names:
            up = self.tus_uploads.get(self.tus_names[name])
        return up

    def find_ietf(self, name: str) -> IetfUpload | None:
        up = self.ietf_uploads.get(name)
        if up is None and name in self.ietf_names:
            up = self.ietf_uploads.get(self.ietf_names[name])
        return up

    def forget_locked(self, name: str) -> None:
        for key in self.plain_done.pop(name, []):
            self.uploads.pop(key, None)
        self.uploads.pop(name, None)
        self.upload_fields.pop(name, None)
        for uploads in (self.tus_uploads, self.ietf_uploads):
            for uid in [u.id for u in uploads.values() if name in (u.id, u.name)]:
                del uploads[uid]

    def drop_locked(self, up: TusUpload | IetfUpload) -> None:
        if isinstance(up, TusUpload):
            if self.tus_uploads.get(up.id) is up:
                del self.tus_uploads[up.id]
        elif self.ietf_uploads.get(up.id) is up:
            del self.ietf_uploads[up.id]

    def count(self, names: tuple[str, ...], n: int) -> None:
        with self.lock:
            for name in names:
                self.received[name] = self.received.get(name, 0) + n

    def faults_key(self, up: TusUpload | IetfUpload) -> str | None:
        for key in (up.id, up.name):
            if key in self.upload_faults:
                return key
        return None

    def take_fault(self, up: TusUpload | IetfUpload, kind: str) -> UploadFaults | None:
        """Consume one armed ``lose``/``status``/``conflict`` fault; a copy of it, or None."""
        with self.lock:
            key = self.faults_key(up)
            if key is None:
                return None
            faults = self.upload_faults[key]
            snapshot = dataclasses.replace(faults)
            if kind == "lose" and faults.lose_once:
                faults.lose_once = False
            elif kind == "status" and faults.status_once is not None:
                faults.status_once = None
            elif kind == "conflict" and faults.conflict_once:
                faults.conflict_once = False
            else:
                return None
            if faults.empty():
                del self.upload_faults[key]
            if kind == "lose":
                self.drop_locked(up)
            return snapshot

    def cut_at(self, up: TusUpload | IetfUpload) -> int | None:
        with self.lock:
            key = self.faults_key(up)
            return None if key is None else self.upload_faults[key].cut_after

    def disarm_cut(self, up: TusUpload | IetfUpload) -> None:
        with self.lock:
            key = self.faults_key(up)
            if key is not None:
                self.upload_faults[key].cut_after = None
                if self.upload_faults[key].empty():
                    del self.upload_faults[key]
