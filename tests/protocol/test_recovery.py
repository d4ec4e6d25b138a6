"""Recovery after a crash, as a pure function: recover() against what the engine did.

The oracle below is the engine's reconciliation as it was before recovery moved into the
core (``Engine._reconcile``, ``reconcile_segments``, ``_tail_is_sound`` and the interrupt of
``Engine.recover``), transcribed with its direct edits of the machine. recover()'s events,
fed to ``handle()``, must leave every task exactly as those edits did, with the same file
work (trim, persist) and the same interrupt. One deliberate change, marked FIXED in the
oracle: a segmented download whose file is gone and not placed drops its segment table even
when every segment was done (the old code restarted from 0 and kept a table of done
segments describing a file that is not there).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bgtransfer._exceptions import InvalidTransition, ReadError
from bgtransfer._models import Phase
from bgtransfer._protocol._machine import (
    Action,
    BodyEnded,
    DataWritten,
    Detached,
    Failed,
    Interrupted,
    Persist,
    Recovered,
    RemovePartial,
    Response,
    Sealed,
    Snapshot,
    Spec,
    Start,
    TransferMachine,
    TruncatePartial,
)
from bgtransfer._protocol._recovery import DiskFacts, needs_disk, recover, same_boot
from bgtransfer._protocol._upload import UploadMachine

URL = "https://example.com/big.iso"
BOOT = "boot-1"
ETAG = '"v1"'
LM = "Sun, 06 Nov 1994 08:49:37 GMT"


# -- the oracle: the engine's reconciliation, edits and all ---------------------------------


@dataclass
class Outcome:
    machine: TransferMachine
    trimmed_at: int | None
    persisted: bool
    actions: list[Action]


def oracle(
    spec: Spec, snap: Snapshot, disk: DiskFacts, boot_id: str | None, owner_died: bool
) -> Outcome:
    cls = UploadMachine if spec.kind == "upload" else TransferMachine
    m = cls.from_snapshot(spec, snap)
    out = Outcome(m, None, False, [])
    if m.terminal:
        return out  # Engine.recover skips finished rows
    if not (m.spec.kind == "upload" or m.snap.phase is Phase.CANCELING or disk.refused):
        size = disk.partial_size
        if m.snap.segments:  # reconcile_segments
            total = m.snap.total
            if size is None:
                if total is None or m.snap.offset < total:
                    m.snap.segments = ()
            elif total is not None and size == total:
                pass
            else:
                m.snap.offset = m.committed = 0
                m.snap.segments = ()
                m.snap.total = m.snap.etag = m.snap.last_modified = None
        if size is None:
            total = m.snap.total
            if (
                m.snap.offset > 0
                and total is not None
                and disk.target_size == total
                and m.snap.offset >= total
            ):
                m.snap.phase = Phase.DONE
                m.snap.detail = "completed"
                m.committed = m.snap.offset
                out.persisted = True
                return out
            m.snap.offset = m.committed = 0
            m.snap.total = m.snap.etag = m.snap.last_modified = None
            m.snap.segments = ()  # FIXED: the old code kept a table of done segments here
        elif size < m.snap.offset:
            m.snap.offset = m.committed = size
        elif size > m.snap.offset and not m.snap.segments:
            s = m.snap
            if (
                boot_id is not None
                and s.boot_id == boot_id
                and (s.etag is not None or s.last_modified is not None)
                and s.total is not None
                and size <= s.total
            ):
                m.snap.offset = m.committed = size
            else:
                out.trimmed_at = m.snap.offset
    if owner_died and not m.terminal:
        where = f"byte {m.snap.offset}" if m.snap.offset else "the start"
        ev = Interrupted(
            "interrupted: the process running it exited; resume() continues from " + where
        )
        out.actions = m.handle(ev, now=0.0)
    return out


# -- strategies ----------------------------------------------------------------------------


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    total = draw(st.none() | st.integers(min_value=0, max_value=1000))
    top = 1000 if total is None else total
    offset = draw(st.integers(min_value=0, max_value=top) | st.sampled_from([0, top]))
    segments: tuple[tuple[int, int, int], ...] = ()
    if draw(st.booleans()):
        end = total if total is not None else draw(st.integers(min_value=1, max_value=1000))
        cut = draw(st.integers(min_value=0, max_value=end))
        pos1 = draw(st.integers(min_value=0, max_value=cut))
        pos2 = draw(st.integers(min_value=cut, max_value=end))
        segments = ((0, pos1, cut), (cut, pos2, end))
        offset = pos1 + pos2 - cut
    return Snapshot(
        phase=draw(st.sampled_from(list(Phase))),
        detail="stored",
        offset=offset,
        total=total,
        etag=draw(st.sampled_from([None, ETAG])),
        last_modified=draw(st.sampled_from([None, LM])),
        segments=segments,
        boot_id=draw(st.sampled_from([None, BOOT, "boot-0"])),
        active_seconds=draw(st.sampled_from([0.0, 12.5])),
        restarts=draw(st.integers(min_value=0, max_value=2)),
    )


@st.composite
def disks(draw: st.DrawFn, snap: Snapshot) -> DiskFacts:
    near = [snap.offset, snap.offset + 1, max(snap.offset - 1, 0), 0]
    if snap.total is not None:
        near += [snap.total, snap.total + 1]
    size = draw(st.none() | st.sampled_from(near) | st.integers(min_value=0, max_value=1100))
    target = draw(st.none() | st.sampled_from([snap.total, snap.offset, 7]))
    refused = draw(st.sampled_from([None, None, None, "the directory was replaced"]))
    return DiskFacts(size, target, refused)


def replay(
    spec: Spec, snap: Snapshot, disk: DiskFacts, boot_id: str | None, owner_died: bool
) -> tuple[TransferMachine, list[Action]]:
    cls = UploadMachine if spec.kind == "upload" else TransferMachine
    m = cls.from_snapshot(spec, snap)
    actions: list[Action] = []
    events = recover(
        spec,
        snap,
        disk if needs_disk(spec, snap) else None,
        same_boot=same_boot(snap, boot_id),
        owner_died=owner_died,
    )
    for event in events:
        actions += m.handle(event, now=0.0)
    return m, actions


def stored(**fields: object) -> Snapshot:
    base = Snapshot(phase=Phase.QUEUED, offset=400, total=1000, etag=ETAG, boot_id=BOOT)
    return replace(base, **fields)  # type: ignore[arg-type]


SPEC = Spec(URL)


# Edges a search rarely draws: every segment done, a one-byte file, a tail up to the end.
_DONE_SEGMENTS = replace(
    Snapshot(phase=Phase.TRANSFERRING, offset=10, total=10, etag=ETAG, boot_id=BOOT),
    segments=((0, 5, 5), (5, 10, 10)),
)


@settings(max_examples=600, deadline=None)
@given(
    data=st.data(),
    snap=snapshots(),
    kind=st.sampled_from(["download", "download", "upload"]),
    boot_id=st.sampled_from([BOOT, None]),
    owner_died=st.booleans(),
)
def test_recover_decides_exactly_what_the_engine_did(
    data: st.DataObject, snap: Snapshot, kind: str, boot_id: str | None, owner_died: bool
) -> None:
    spec = Spec(URL, kind=kind)
    disk = data.draw(disks(snap))
    check(spec, snap, disk, boot_id, owner_died)


@pytest.mark.parametrize(
    ("snap", "disk"),
    [
        (_DONE_SEGMENTS, DiskFacts(None, 10)),  # placed
        (_DONE_SEGMENTS, DiskFacts(None, 9)),  # not placed: start over
        (_DONE_SEGMENTS, DiskFacts(None, None)),
        (stored(phase=Phase.VERIFYING, offset=1, total=1), DiskFacts(None, 1)),  # one byte
        (stored(phase=Phase.VERIFYING, offset=0, total=0), DiskFacts(None, 0)),  # empty
        (stored(), DiskFacts(1000)),  # a tail up to the very end
        (stored(), DiskFacts(400)),  # exactly the committed bytes
    ],
)
@pytest.mark.parametrize("owner_died", [False, True])
def test_recover_decides_what_the_engine_did_at_the_edges(
    snap: Snapshot, disk: DiskFacts, owner_died: bool
) -> None:
    check(SPEC, snap, disk, BOOT, owner_died)


def check(
    spec: Spec, snap: Snapshot, disk: DiskFacts, boot_id: str | None, owner_died: bool
) -> None:
    want = oracle(spec, snap, disk, boot_id, owner_died)
    m, actions = replay(spec, snap, disk, boot_id, owner_died)
    assert m.snap == want.machine.snap
    assert m.committed == want.machine.committed
    trims = [a for a in actions if isinstance(a, TruncatePartial)]
    assert trims == ([] if want.trimmed_at is None else [TruncatePartial(want.trimmed_at)])
    rest = [a for a in actions if not isinstance(a, TruncatePartial)]
    assert rest == ([Persist()] if want.persisted else []) + want.actions


# -- the rules, one example each -----------------------------------------------------------


def test_a_longer_file_of_this_boot_keeps_its_tail() -> None:
    [ev] = recover(SPEC, stored(), DiskFacts(700), same_boot=True)
    assert ev == Recovered(700, note="keeping 300 bytes written after the last checkpoint")
    m = TransferMachine.from_snapshot(SPEC, stored())
    assert m.handle(ev, now=0.0) == []
    assert (m.snap.offset, m.committed, m.snap.total, m.snap.etag) == (700, 700, 1000, ETAG)


@pytest.mark.parametrize(
    ("why", "snap", "size", "this_boot"),
    [
        ("another boot: the page cache is gone", stored(), 700, False),
        ("no validator to check it with", stored(etag=None), 700, True),
        ("no known length", stored(total=None), 700, True),
        ("longer than the resource", stored(), 1001, True),
    ],
)
def test_a_tail_that_may_be_garbage_is_cut_off(
    why: str, snap: Snapshot, size: int, this_boot: bool
) -> None:
    [ev] = recover(SPEC, snap, DiskFacts(size), same_boot=this_boot)
    assert ev == Recovered(400, trim=True), why
    m = TransferMachine.from_snapshot(SPEC, snap)
    assert m.handle(ev, now=0.0) == [TruncatePartial(400)]
    assert m.snap == snap


def test_a_shorter_file_resumes_after_what_is_there() -> None:
    [ev] = recover(SPEC, stored(), DiskFacts(250), same_boot=True)
    assert ev == Recovered(250, note="partial file has 250 bytes, fewer than committed 400")
    m = TransferMachine.from_snapshot(SPEC, stored())
    m.handle(ev, now=0.0)
    assert (m.snap.offset, m.committed, m.snap.etag, m.snap.total) == (250, 250, ETAG, 1000)


def test_a_missing_file_starts_over_as_a_new_download() -> None:
    [ev] = recover(SPEC, stored(), DiskFacts(None), same_boot=True)
    assert ev == Recovered(0, forget=True, note="partial file missing, restarting from 0")
    m = TransferMachine.from_snapshot(SPEC, stored(last_modified=LM))
    m.handle(ev, now=0.0)
    assert (m.snap.offset, m.snap.total, m.snap.etag, m.snap.last_modified) == (0, None, None, None)


def test_a_file_placed_before_the_crash_completes_the_task() -> None:
    snap = stored(phase=Phase.VERIFYING, offset=1000)
    [ev] = recover(SPEC, snap, DiskFacts(None, target_size=1000), same_boot=False, owner_died=True)
    assert ev.placed  # type: ignore[union-attr]
    m = TransferMachine.from_snapshot(SPEC, snap)
    assert m.handle(ev, now=3.0) == [Persist()]
    assert (m.snap.phase, m.snap.detail, m.snap.error, m.committed) == (
        Phase.DONE,
        "completed",
        None,
        1000,
    )
    # Another file at the destination (not the length) is not ours: start over.
    [again] = recover(SPEC, snap, DiskFacts(None, target_size=999), same_boot=False)
    assert (again.placed, again.offset) == (False, 0)  # type: ignore[union-attr]


def test_segments_that_do_not_fit_the_file_start_over() -> None:
    snap = stored(offset=300, segments=((0, 100, 500), (500, 700, 1000)))
    [ev] = recover(SPEC, snap, DiskFacts(999), same_boot=True)
    assert ev == Recovered(
        0,
        forget=True,
        drop_segments=True,
        trim=True,
        note="partial file does not fit its segments, restarting",
    )
    # A file of exactly the total length is what a segmented download looks like.
    assert recover(SPEC, snap, DiskFacts(1000), same_boot=True) == []
    # Gone: the segment table goes with it.
    [gone] = recover(SPEC, snap, DiskFacts(None), same_boot=True)
    assert (gone.offset, gone.drop_segments, gone.forget) == (0, True, True)  # type: ignore[union-attr]


def test_every_segment_done_but_the_file_gone_and_not_placed_drops_the_table() -> None:
    [ev] = recover(SPEC, _DONE_SEGMENTS, DiskFacts(None, target_size=None), same_boot=True)
    assert ev == Recovered(
        0, forget=True, drop_segments=True, note="partial file missing, restarting from 0"
    )
    m = TransferMachine.from_snapshot(SPEC, _DONE_SEGMENTS)
    assert m.handle(ev, now=0.0) == []
    assert (m.snap.offset, m.snap.total, m.snap.segments) == (0, None, ())
    # Placed: complete, the table kept as it was (nothing will read it again).
    [placed] = recover(SPEC, _DONE_SEGMENTS, DiskFacts(None, target_size=10), same_boot=True)
    assert placed == Recovered(10, placed=True, note="found placed: its completion was lost")


def test_nothing_to_fix_is_no_event() -> None:
    assert recover(SPEC, stored(), DiskFacts(400), same_boot=False) == []
    fresh = Snapshot()  # never got a response: nothing known, nothing on disk
    assert recover(SPEC, fresh, DiskFacts(None), same_boot=False) == []


def test_a_dead_owner_interrupts_after_the_files_are_fixed() -> None:
    events = recover(SPEC, stored(), DiskFacts(250), same_boot=True, owner_died=True)
    assert events[1] == Interrupted(
        "interrupted: the process running it exited; resume() continues from byte 250"
    )
    [only] = recover(
        SPEC, stored(offset=0, total=None, etag=None), DiskFacts(0), same_boot=True, owner_died=True
    )
    assert only == Interrupted(
        "interrupted: the process running it exited; resume() continues from the start"
    )


@pytest.mark.parametrize("phase", [Phase.DONE, Phase.CANCELING])
def test_finished_and_canceling_tasks_need_no_disk(phase: Phase) -> None:
    snap = stored(phase=phase)
    assert not needs_disk(SPEC, snap)
    assert recover(SPEC, snap, None, same_boot=True) == []
    died = recover(SPEC, snap, None, same_boot=True, owner_died=True)
    why = "interrupted: the process running it exited; resume() continues from byte 400"
    assert died == ([] if phase is Phase.DONE else [Interrupted(why)])
    if phase is Phase.CANCELING:
        m = TransferMachine.from_snapshot(SPEC, snap)
        assert m.handle(died[0], now=0.0) == [RemovePartial()]


def test_an_upload_needs_no_disk_and_a_download_does() -> None:
    upload = Spec(URL, kind="upload", method="PUT")
    assert not needs_disk(upload, stored())
    assert recover(upload, stored(), None, same_boot=True) == []
    assert needs_disk(SPEC, stored())
    with pytest.raises(InvalidTransition, match=r"^recovering a download needs what is on disk$"):
        recover(SPEC, stored(), None, same_boot=True)


def test_a_directory_that_is_not_the_tasks_decides_nothing() -> None:
    refused = DiskFacts(None, refused="the directory was replaced")
    assert recover(SPEC, stored(), refused, same_boot=True) == []


def test_same_boot_needs_a_known_boot() -> None:
    assert same_boot(stored(boot_id=BOOT), BOOT)
    assert not same_boot(stored(boot_id="boot-0"), BOOT)
    assert not same_boot(stored(boot_id=None), None)


# -- the events themselves -----------------------------------------------------------------


@example(phase=Phase.DONE)
@given(phase=st.sampled_from(list(Phase)))
def test_recovered_is_refused_where_recovery_never_runs(phase: Phase) -> None:
    m = TransferMachine.from_snapshot(SPEC, stored(phase=phase))
    before = replace(m.snap)
    if phase in (Phase.DONE, Phase.CANCELING):
        with pytest.raises(InvalidTransition):
            m.handle(Recovered(0, forget=True), now=0.0)
        assert m.snap == before
    else:
        assert m.handle(Recovered(0, forget=True), now=0.0) == []
        assert (m.snap.phase, m.snap.offset, m.snap.total) == (phase, 0, None)


def test_a_negative_recovered_offset_is_refused() -> None:
    m = TransferMachine.from_snapshot(SPEC, stored())
    with pytest.raises(InvalidTransition, match="negative"):
        m.handle(Recovered(-1), now=0.0)
    assert m.snap == stored()


def test_detached_keeps_the_phase_and_commits_the_bytes_reached() -> None:
    m = TransferMachine(SPEC)
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": "10"}), now=0.0)
    m.handle(DataWritten(7), now=0.1)
    assert m.committed == 0
    assert m.handle(Detached(), now=0.2) == [Persist()]
    assert (m.snap.phase, m.committed, m.snapshot(0.2).offset) == (Phase.TRANSFERRING, 7, 7)
    m.handle(Failed(ReadError("x")), now=0.3)
    with pytest.raises(InvalidTransition):
        m.handle(Detached(), now=0.4)


def test_a_checkpoint_is_stamped_with_the_boot_that_wrote_its_bytes() -> None:
    m = TransferMachine(SPEC)
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": "10", "etag": ETAG}), now=0.0)
    m.handle(DataWritten(4), now=2.0)  # a second on: checkpointed
    saved = m.checkpoint(3.0, BOOT)
    assert (saved.boot_id, saved.offset, saved.active_seconds) == (BOOT, 4, 3.0)
    assert m.snap.boot_id == BOOT  # later snapshots carry it too
    assert m.checkpoint(3.0, None).boot_id is None  # a boot that cannot be told
    # What a crash of this process finds: the tail written after it is kept.
    [ev] = recover(SPEC, saved, DiskFacts(9), same_boot=same_boot(saved, BOOT))
    assert ev.offset == 9  # type: ignore[union-attr]


def test_sealed_commits_the_whole_file_before_it_is_placed() -> None:
    m = TransferMachine(SPEC)
    m.handle(Start(), now=0.0)
    m.handle(Response(200, {"content-length": "10", "etag": ETAG}), now=0.0)
    m.handle(DataWritten(10), now=0.1)
    assert m.committed == 0
    with pytest.raises(InvalidTransition):
        m.handle(Sealed(), now=0.1)  # not before the body ended
    m.handle(BodyEnded(), now=0.2)
    assert m.handle(Sealed(), now=0.3) == []
    assert (m.snap.phase, m.committed, m.snapshot(0.3).offset) == (Phase.VERIFYING, 10, 10)
    # Saved, placed, then the process died before Finalized: recovery completes it.
    saved = m.snapshot(0.3)
    [ev] = recover(SPEC, saved, DiskFacts(None, target_size=10), same_boot=False)
    assert ev == Recovered(10, placed=True, note="found placed: its completion was lost")
