"""The issue-17 cores used together, the way the engine will drive them: a Metalink file
gives mirrors and piece hashes, one mirror lies, its bad pieces are fetched again alone from
another, the whole-file checksum decides; a signed URL expires and a refresh keeps the bytes;
the partial's record survives to be adopted. Bytes are served from memory (no I/O in the
core): the engine's HTTP side is next session's work.
"""

from __future__ import annotations

import calendar
import hashlib

from bgtransfer._protocol._digest import Expected, Hashers, Verdict, decide
from bgtransfer._protocol._metalink import parse_metalink
from bgtransfer._protocol._mirrors import MirrorSet, Observed
from bgtransfer._protocol._pieces import PieceHasher, refetch_ranges
from bgtransfer._protocol._sidecar import PartialRecord, decode, encode
from bgtransfer._protocol._signed import (
    Keep,
    RefreshAction,
    Representation,
    keep_bytes,
    parse_refresh_output,
    refresh_due,
    refresh_on_status,
    signed_url_expiry,
)

CONTENT = hashlib.sha512(b"seed").digest() * 2000  # 128000 bytes
PIECE = 16384  # 8 pieces, the last one shorter
GOOD = ["https://a.example/f.bin", "https://b.example/f.bin"]
LIAR = "https://liar.example/f.bin"


def metalink() -> bytes:
    pieces = "".join(
        f"<hash>{hashlib.sha256(CONTENT[i : i + PIECE]).hexdigest()}</hash>"
        for i in range(0, len(CONTENT), PIECE)
    )
    urls = "".join(
        f'<url priority="{p}">{u}</url>' for p, u in ((1, LIAR), (2, GOOD[0]), (2, GOOD[1]))
    )
    return (
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="f.bin">'
        f"<size>{len(CONTENT)}</size>"
        f'<hash type="sha-256">{hashlib.sha256(CONTENT).hexdigest()}</hash>'
        f'<pieces length="{PIECE}" type="sha-256">{pieces}</pieces>{urls}</file></metalink>'
    ).encode()


def serve(url: str, start: int, end: int) -> bytes:
    """What each source answers for a range: the liar flips a byte in every piece."""
    data = bytearray(CONTENT[start:end])
    if url == LIAR:
        for i in range(0, len(data), 1000):
            data[i] ^= 0x55
    return bytes(data)


def test_a_lying_mirror_is_dropped_and_only_its_pieces_are_fetched_again():
    (f,) = parse_metalink(metalink()).files
    assert f.pieces is not None
    assert f.size == len(CONTENT)
    mirrors = MirrorSet(
        f.urls, length=f.size, checksums=f.checksums, has_pieces=True, max_per_source=2
    )
    for url in f.sources:  # every source announces the same length: none is caught yet
        assert mirrors.observe(url, Observed(len(CONTENT), f'"{url}"')) is None

    disk = bytearray(len(CONTENT))
    fetched_bytes = 0
    todo = [f.pieces.piece_range(i) for i in range(f.pieces.count)]
    for _round in range(5):  # bounded: each round re-fetches only what failed
        bad: list[int] = []
        for start, end in todo:
            source = mirrors.pick(now=0.0)
            assert source is not None
            body = serve(source, start, end)
            fetched_bytes += len(body)
            disk[start:end] = body
            for index, ok in PieceHasher(f.pieces, start).feed(body):
                if not ok:
                    bad.append(index)
                    mirrors.bad_piece(source)
            mirrors.release(source)
        if not bad:
            break
        todo = refetch_ranges(f.pieces, bad)
    assert bytes(disk) == CONTENT
    assert mirrors.dropped == {LIAR: "2 pieces from it failed their hash"}
    assert fetched_bytes < 2 * len(CONTENT)  # never the whole file again

    hashers = Hashers(c.algorithm for c in f.checksums)
    hashers.update(bytes(disk))
    verdict = decide(
        [Expected(c, "metalink") for c in f.checksums], hashers.digests(), retries_done=0
    )
    assert verdict.verdict is Verdict.OK


def test_an_expiring_signed_url_is_refreshed_and_its_bytes_kept():
    t0 = float(calendar.timegm((2026, 11, 29, 12, 0, 0)))
    url = (
        "https://bucket.s3.amazonaws.com/f.bin?X-Amz-Date=20261129T120000Z"
        "&X-Amz-Expires=300&X-Amz-Signature=old"
    )
    expiry = signed_url_expiry(url)
    assert expiry == t0 + 300
    assert not refresh_due(expiry, t0 + 100)
    assert refresh_due(expiry, t0 + 280)  # within the 30 s margin: refresh before the 403

    # the server refused anyway (a skewed clock): the hook's new URL takes over
    action = refresh_on_status(403, has_hook=True, had_response=True, refreshes=0)
    assert action is RefreshAction.REFRESH
    new = parse_refresh_output(
        b'{"url": "https://bucket.s3.amazonaws.com/f.bin?X-Amz-Date=20261129T120500Z'
        b'&X-Amz-Expires=300&X-Amz-Signature=new"}'
    )
    assert signed_url_expiry(new.url) == t0 + 600
    old_rep = Representation(len(CONTENT), '"etag-1"')
    assert (
        keep_bytes(old_rep, Representation(len(CONTENT), '"etag-1"'), caller_sha256=False)[0]
        is Keep.KEEP
    )
    # the refreshed URL serves another version: the task restarts cleanly
    changed = Representation(len(CONTENT) + 1, '"etag-2"')
    assert keep_bytes(old_rep, changed, caller_sha256=True)[0] is Keep.RESTART

    # what the partial records after the switch is what a fresh home adopts
    record = PartialRecord(new.url, offset=40000, length=len(CONTENT), etag='"etag-1"')
    assert decode(encode(record)).url == new.url
