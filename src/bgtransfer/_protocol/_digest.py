"""Whole-file checksums: what the caller expects, what the server says, and what to do.

Three sources name a digest of the bytes being fetched:

* the caller (``checksums=["sha256=HEX"]``, ``--checksum sha256=HEX``): ground truth;
* RFC 9530 fields: ``Repr-Digest`` covers the whole selected representation (even on a 206),
  ``Content-Digest`` covers one response's content (the 206's part, as sent on the wire);
* storage vendors: ``x-goog-hash: crc32c=..,md5=..`` and ``x-amz-checksum-sha256`` / ``-crc32c``
  (S3 sends these only when asked with ``x-amz-checksum-mode: ENABLED``).

Server headers are parsed leniently (a malformed field is ignored, as RFC 8941 §4.2 says a
recipient does); caller input is parsed strictly (``InvalidRequest``). :func:`decide` turns
expected and computed digests into one of ok / retry once / fail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from http_sfv.dictionary import Dictionary
from http_sfv.item import Item

from bgtransfer._exceptions import InvalidRequest

__all__ = [
    "ALGORITHMS",
    "Checksum",
    "Decision",
    "Expected",
    "Hashers",
    "Verdict",
    "algorithm_name",
    "caller_checksums",
    "check_checksums",
    "crc32c_available",
    "decide",
    "format_digest_field",
    "parse_checksum",
    "parse_checksums",
    "parse_digest_field",
    "server_checksums",
    "want_digest_headers",
]


@dataclass(frozen=True, slots=True)
class _Algo:
    size: int  # digest length in bytes
    rfc9530: str | None  # name in the IANA Hash Algorithms for HTTP Digest Fields registry
    weak: bool  # collisions can be made on purpose: detects accidents, not attacks


# Canonical names are hashlib's. sha1/md5 exist for legacy mirrors and Metalink files only.
ALGORITHMS: Mapping[str, _Algo] = {
    "sha256": _Algo(32, "sha-256", False),
    "sha512": _Algo(64, "sha-512", False),
    "sha384": _Algo(48, None, False),
    "sha1": _Algo(20, "sha", True),  # RFC 9530 registers SHA-1 as "sha" (deprecated)
    "md5": _Algo(16, "md5", True),
    "crc32c": _Algo(4, "crc32c", True),
}
_HEX = re.compile(r"[0-9a-fA-F]+")
_FROM_RFC9530 = {a.rfc9530: name for name, a in ALGORITHMS.items() if a.rfc9530}

try:  # google-crc32c is optional: without it crc32c digests are simply not checked
    from google_crc32c import extend as _crc32c_extend
except ImportError:  # pragma: no cover - the dev extra installs it
    _crc32c_extend = None


def crc32c_available() -> bool:
    return _crc32c_extend is not None


class _Crc32c:
    """hashlib-shaped CRC32C (RFC 4960 App. B), big-endian like GCS and S3 print it."""

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes, /) -> None:
        assert _crc32c_extend is not None
        self._crc = int(_crc32c_extend(self._crc, data))

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big")


def algorithm_name(text: str) -> str | None:
    """``SHA-256``, ``sha_256``, ``sha256`` -> ``sha256``; None when not supported."""
    name = text.strip().lower().replace("-", "").replace("_", "")
    return name if name in ALGORITHMS else None


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str  # a key of ALGORITHMS
    digest: bytes

    def __post_init__(self) -> None:
        algo = ALGORITHMS.get(self.algorithm)
        if algo is None:
            raise InvalidRequest(f"unsupported checksum algorithm {self.algorithm!r}")
        if len(self.digest) != algo.size:
            raise InvalidRequest(
                f"a {self.algorithm} digest is {algo.size} bytes, not {len(self.digest)}"
            )

    @property
    def weak(self) -> bool:
        return ALGORITHMS[self.algorithm].weak

    def hex(self) -> str:
        return self.digest.hex()

    def __str__(self) -> str:
        return f"{self.algorithm}={self.digest.hex()}"

    def matches(self, digest: bytes) -> bool:
        return hmac.compare_digest(self.digest, digest)


def _decode_digest(algorithm: str, value: str) -> bytes | None:
    size = ALGORITHMS[algorithm].size
    text = value.strip()
    if len(text) == 2 * size and _HEX.fullmatch(text):
        return bytes.fromhex(text)
    if text.startswith(":") and text.endswith(":") and len(text) >= 2:  # RFC 8941 byte sequence
        text = text[1:-1]
    text = text.replace("-", "+").replace("_", "/")  # urlsafe alphabet too
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def parse_checksum(text: object) -> Checksum:
    """``sha256=HEX``, ``sha-256=BASE64``, ``md5:HEX``... into a :class:`Checksum`."""
    if not isinstance(text, str):
        raise InvalidRequest(f"a checksum must be a string like 'sha256=HEX', not {text!r}")
    sep = min((i for i in (text.find("="), text.find(":")) if i > 0), default=-1)
    if sep < 0:
        raise InvalidRequest(f"checksum {text!r} must look like 'sha256=HEX' (algorithm=digest)")
    name = algorithm_name(text[:sep])
    if name is None:
        supported = ", ".join(sorted(ALGORITHMS))
        raise InvalidRequest(f"checksum algorithm {text[:sep]!r} is not one of {supported}")
    digest = _decode_digest(name, text[sep + 1 :])
    if digest is None:
        size = ALGORITHMS[name].size
        raise InvalidRequest(
            f"checksum {text!r}: a {name} digest is {2 * size} hex digits or base64 of {size} bytes"
        )
    return Checksum(name, digest)


def parse_checksums(values: str | Iterable[str] | Mapping[str, str] | None) -> tuple[Checksum, ...]:
    """The caller's ``checksums=`` in any of its forms; two values for one algorithm that
    disagree are refused (one of them is certainly wrong)."""
    if values is None:
        return ()
    items: list[str]
    if isinstance(values, str):
        items = [values]
    elif isinstance(values, Mapping):
        items = [f"{k}={v}" for k, v in values.items()]
    else:
        items = list(values)
    out: dict[str, Checksum] = {}
    for item in items:
        checksum = parse_checksum(item)
        prior = out.get(checksum.algorithm)
        if prior is not None and prior.digest != checksum.digest:
            raise InvalidRequest(f"two different {checksum.algorithm} checksums were given")
        out[checksum.algorithm] = checksum
    return tuple(out.values())


def check_checksums(value: object, *, sha256: str | None = None) -> tuple[str, ...]:
    """``checksums=`` as the options keep it: canonical ``"algorithm=hex"`` strings, one per
    algorithm. Takes a mapping ``{"sha256": HEX}``, one string or a list of strings
    (``"sha256=HEX"``, ``"sha-512=BASE64"``); ``sha256`` (the older option) must agree."""
    if value is None:
        return ()
    if not isinstance(value, str | Mapping) and not (
        isinstance(value, Iterable) and not isinstance(value, bytes)
    ):
        raise InvalidRequest(
            "checksums must be a mapping like {'sha256': HEX} or strings like 'sha256=HEX', "
            f"not {type(value).__name__}"
        )
    if isinstance(value, Mapping):
        bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise InvalidRequest(f"checksums: {bad[0]!r} must map a name to a digest string")
    parsed = parse_checksums(value)
    for c in parsed:
        if c.algorithm == "crc32c" and not crc32c_available():
            raise InvalidRequest("a crc32c checksum needs the google-crc32c package")
        if c.algorithm == "sha256" and sha256 is not None and c.hex() != sha256.lower():
            raise InvalidRequest("sha256= and checksums= name two different sha256 digests")
    return tuple(str(c) for c in parsed)


def caller_checksums(checksums: Iterable[str], sha256: str | None) -> tuple[Expected, ...]:
    """The caller's expectations of a task (its ``checksums`` and ``sha256``), once each."""
    out = {c.algorithm: c for c in (parse_checksum(text) for text in checksums)}
    if sha256 is not None:
        out.setdefault("sha256", Checksum("sha256", bytes.fromhex(sha256)))
    return tuple(Expected(c, "caller") for c in out.values())


def parse_digest_field(values: str | Sequence[str] | None) -> dict[str, bytes]:
    """An RFC 9530 ``Repr-Digest`` / ``Content-Digest`` field (all its lines) as
    ``{canonical algorithm: digest}``. Members that are not byte sequences of the algorithm's
    size, and algorithms we do not support, are left out; a field that is not a valid
    structured dictionary is ignored as a whole (RFC 8941 §4.2)."""
    if values is None:
        return {}
    joined = values if isinstance(values, str) else ", ".join(values)
    if not joined.strip():
        return {}
    field = Dictionary()
    try:
        field.parse(joined.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return {}
    out: dict[str, bytes] = {}
    for key, member in field.items():
        name = _FROM_RFC9530.get(key)
        value = getattr(member, "value", None)
        if name is not None and isinstance(value, bytes) and len(value) == ALGORITHMS[name].size:
            out[name] = value
    return out


def format_digest_field(checksums: Iterable[Checksum]) -> str:
    """The ``Repr-Digest`` value for digests we have (for an upload's request)."""
    field = Dictionary()
    for c in checksums:
        key = ALGORITHMS[c.algorithm].rfc9530
        if key is not None:
            field[key] = Item(c.digest)
    return str(field) if field else ""


def want_digest_headers(prefer: Sequence[str] = ("sha256", "sha512")) -> list[tuple[str, str]]:
    """``Want-Repr-Digest`` and ``Want-Content-Digest`` asking for ``prefer`` in that order
    (RFC 9530 §4: integer preferences 1..10, 10 most wanted)."""
    field = Dictionary()
    weight = 10
    for name in prefer:
        canonical = algorithm_name(name)
        key = ALGORITHMS[canonical].rfc9530 if canonical else None
        if key is None or ALGORITHMS[str(canonical)].weak:
            raise InvalidRequest(f"cannot ask a server for a {name!r} digest")
        field[key] = Item(max(weight, 1))
        weight -= 1
    if not field:
        return []
    value = str(field)
    return [("Want-Repr-Digest", value), ("Want-Content-Digest", value)]


@dataclass(frozen=True, slots=True)
class Expected:
    """One digest the finished bytes must have, and who said so (shown in errors)."""

    checksum: Checksum
    source: str  # "caller", "Repr-Digest", "x-goog-hash", "x-amz-checksum-sha256", "metalink"

    @property
    def from_caller(self) -> bool:
        return self.source in ("caller", "metalink")


def _header(headers: Mapping[str, str] | Iterable[tuple[str, str]], name: str) -> list[str]:
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [v for k, v in pairs if k.lower() == name]


def server_checksums(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[Expected, ...]:
    """The whole-representation digests a response announces (not ``Content-Digest``,
    which covers one body only: check it per response with :func:`parse_digest_field`)."""
    headers = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    out = [
        Expected(Checksum(n, d), "Repr-Digest")
        for n, d in parse_digest_field(_header(headers, "repr-digest")).items()
    ]
    # GCS decompressive transcoding serves gunzipped bytes with the hash of the stored gzip.
    stored = _header(headers, "x-goog-stored-content-encoding")
    if not stored or all(v.strip().lower() == "identity" for v in stored):
        for part in ",".join(_header(headers, "x-goog-hash")).split(","):
            name, _, value = part.strip().partition("=")
            digest = _decode_digest(name, value) if name in ("crc32c", "md5") else None
            if digest is not None:
                out.append(Expected(Checksum(name, digest), "x-goog-hash"))
    # A multipart S3 object's checksum is of the parts' checksums ("...==-3"): not ours.
    composite = any(
        v.strip().upper() == "COMPOSITE" for v in _header(headers, "x-amz-checksum-type")
    )
    for name in ("sha256", "crc32c"):
        for value in _header(headers, f"x-amz-checksum-{name}"):
            digest = None if composite or "-" in value.strip("=") else _decode_digest(name, value)
            if digest is not None:
                out.append(Expected(Checksum(name, digest), f"x-amz-checksum-{name}"))
    return tuple(out)


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class Hashers:
    """Incremental digests of one byte stream for several algorithms at once."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        self._hashes: dict[str, _Hash] = {}
        for name in dict.fromkeys(algorithms):
            if name == "crc32c":
                if _crc32c_extend is not None:
                    self._hashes[name] = _Crc32c()
            elif name in ALGORITHMS:
                self._hashes[name] = hashlib.new(name)
            else:
                raise InvalidRequest(f"unsupported checksum algorithm {name!r}")

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._hashes)

    def update(self, data: bytes) -> None:
        for h in self._hashes.values():
            h.update(data)

    def digests(self) -> dict[str, bytes]:
        return {name: h.digest() for name, h in self._hashes.items()}


class Verdict(Enum):
    OK = "ok"  # every digest we could compute matched
    UNVERIFIED = "unverified"  # nothing to compare against: keep the bytes, say so
    RETRY = "retry"  # a mismatch: discard the bytes and fetch once more
    FAIL = "fail"  # a mismatch again: stop with IntegrityError(reason)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str
    weak_only: bool = False  # only md5/sha1/crc32c vouched for the bytes
    ignored: tuple[str, ...] = ()  # server digests overruled by a matching caller checksum


def _mismatch(e: Expected, got: bytes) -> str:
    return f"{e.checksum.algorithm} from {e.source} expected {e.checksum.hex()}, got {got.hex()}"


def decide(
    expected: Iterable[Expected],
    computed: Mapping[str, bytes],
    *,
    retries_done: int,
    max_retries: int = 1,
) -> Decision:
    """What to do with finished bytes. The caller's checksums are the truth: when one of them
    matches, a server digest that disagrees is reported in ``ignored`` rather than failing
    the download (the server hashed something else, e.g. a content-coded form), unless
    the caller's matching ones are all weak (md5 never replaces a strong digest). Digests of
    an algorithm not in ``computed`` are skipped (crc32c without its library)."""
    checked = [
        (e, computed[e.checksum.algorithm]) for e in expected if e.checksum.algorithm in computed
    ]
    bad = [(e, got) for e, got in checked if not e.checksum.matches(got)]
    good = [e for e, got in checked if e.checksum.matches(got)]
    caller_bad = [pair for pair in bad if pair[0].from_caller]
    # A weak digest (md5, sha1) that matches never outvotes a strong one that does not.
    caller_good = [e for e in good if e.from_caller and not e.checksum.weak]
    ignored: tuple[str, ...] = ()
    if not caller_bad and caller_good and bad:
        ignored = tuple(_mismatch(e, got) for e, got in bad)
        bad = []
    if bad:
        reason = "; ".join(_mismatch(e, got) for e, got in bad)
        if retries_done < max_retries:
            return Decision(Verdict.RETRY, f"checksum mismatch ({reason}): fetching again")
        return Decision(Verdict.FAIL, f"checksum mismatch after {retries_done + 1} tries: {reason}")
    if not good:
        return Decision(Verdict.UNVERIFIED, "no checksum to verify the bytes against")
    names = sorted({f"{e.checksum.algorithm} ({e.source})" for e in good})
    weak_only = all(e.checksum.weak for e in good)
    return Decision(Verdict.OK, "verified: " + ", ".join(names), weak_only, ignored)
