"""Metalink 4 documents (RFC 5854, ``.meta4``): URLs, size and hashes of files in one go.

The document comes from the caller (``--metalink FILE``) or a server, so it is untrusted XML:
``defusedxml`` refuses DTDs, entities and external references (billion laughs, XXE), the
size and counts are bounded, and a file ``name`` that could escape the download directory is
refused (RFC 5854 §4.1.2.1 requires it). Only http(s) URLs are kept: the others (ftp,
torrents in ``metaurl``) are counted in ``skipped_urls`` so the caller can say so.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # only for the Element type: parsing goes through defusedxml
from dataclasses import dataclass

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import ALGORITHMS, Checksum, algorithm_name
from bgtransfer._protocol._pieces import PiecePlan
from bgtransfer._protocol._validate import check_url

__all__ = [
    "LOWEST_PRIORITY",
    "MAX_DOCUMENT",
    "Metalink",
    "MetalinkFile",
    "MetalinkUrl",
    "parse_metalink",
]

NS = "urn:ietf:params:xml:ns:metalink"
_V3_NS = "http://www.metalinker.org/"
LOWEST_PRIORITY = 999999  # RFC 5854 §4.2.16.1: a url without priority ranks last
MAX_DOCUMENT = 16 << 20  # bytes; a million piece hashes fit in it
_MAX_FILES = 10_000
_MAX_URLS = 1_000  # per file
# Strongest first: the piece list to use when a file has several.
_PREFERENCE = ("sha512", "sha384", "sha256", "sha1", "md5")
_DRIVE = re.compile(r"[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class MetalinkUrl:
    url: str
    priority: int = LOWEST_PRIORITY  # 1 is the most preferred
    location: str | None = None  # ISO 3166-1 alpha-2, lower case


@dataclass(frozen=True, slots=True)
class MetalinkFile:
    name: str  # a relative path, checked safe
    size: int | None
    checksums: tuple[Checksum, ...]  # of the whole file
    pieces: PiecePlan | None
    urls: tuple[MetalinkUrl, ...]  # http(s) only, by priority (stable for equal ones)
    skipped_urls: int = 0  # ftp, rsync, torrents...: not fetched by bgtransfer
    notes: tuple[str, ...] = ()  # what was ignored, for the caller to show

    @property
    def sources(self) -> list[str]:
        return [u.url for u in self.urls]


@dataclass(frozen=True, slots=True)
class Metalink:
    files: tuple[MetalinkFile, ...]
    published: str | None = None


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"Metalink document: {message}")


def _text(el: ET.Element) -> str:
    return (el.text or "").strip()


def _check_name(name: str | None) -> str:
    """RFC 5854 §4.1.2.1: relative, no "..", and (for Windows and us) no backslash or drive."""
    if not name or not name.strip():
        raise _bad("a <file> has no name")
    parts = name.split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or "\0" in name
        or _DRIVE.match(name)
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 0x20 for c in name)
    ):
        raise _bad(f"file name {name!r} is not a safe relative path")
    return name


def _non_negative(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise _bad(f"{what} must be a non-negative integer, not {text!r}")
    return int(text)


def _hex(text: str, algorithm: str, what: str) -> bytes:
    size = ALGORITHMS[algorithm].size
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != size or len(text) != 2 * size:
        raise _bad(f"{what} is not a {algorithm} digest in hexadecimal: {text[:140]!r}")
    return raw


def _url(el: ET.Element) -> MetalinkUrl | None:
    try:
        text = check_url(_text(el))
    except InvalidRequest:
        return None  # ftp://, rsync://, or not a URL we could fetch
    prio_text = el.get("priority")
    priority = LOWEST_PRIORITY
    if prio_text is not None:
        priority = _non_negative(prio_text.strip(), "a url priority")
        if not 1 <= priority <= LOWEST_PRIORITY:
            raise _bad(f"a url priority must be 1..999999, not {priority}")
    location = el.get("location")
    if location is not None:
        location = location.strip().lower()
        if len(location) != 2 or not location.isalpha() or not location.isascii():
            raise _bad(f"a url location must be a two-letter country code, not {location!r}")
    return MetalinkUrl(text, priority, location)


def _pieces(file_el: ET.Element, size: int | None, name: str) -> tuple[PiecePlan | None, str]:
    """The strongest usable piece list, or None and why not. A list that does not fit the
    size is dropped, not fatal: the whole-file hash still checks the result (a wrong grid
    would only fail every piece)."""
    found: dict[str, ET.Element] = {}
    for el in file_el.findall(f"{{{NS}}}pieces"):
        algorithm = algorithm_name(el.get("type") or "")
        if algorithm is None or algorithm == "crc32c":
            continue  # an algorithm we cannot compute: as if absent
        if algorithm in found:
            raise _bad(f"file {name!r} has two <pieces> of type {algorithm}")
        found[algorithm] = el
    best = next((a for a in _PREFERENCE if a in found), None)
    if best is None:
        return None, ""
    if size is None:
        return None, "piece hashes ignored: the file has no <size> to divide"
    el = found[best]
    length = _non_negative((el.get("length") or "").strip(), "a <pieces> length")
    if length == 0:
        raise _bad("a <pieces> length must be positive")
    hashes = [
        _hex(_text(h), best, f"piece hash {i} of {name!r}")
        for i, h in enumerate(el.findall(f"{{{NS}}}hash"))
    ]
    try:
        return PiecePlan(best, length, tuple(hashes), size), ""
    except InvalidRequest as exc:
        return None, f"piece hashes ignored: {exc.message}"


def _file(el: ET.Element) -> MetalinkFile:
    name = _check_name(el.get("name"))
    size_el = el.find(f"{{{NS}}}size")
    size = None if size_el is None else _non_negative(_text(size_el), f"the size of {name!r}")
    checksums: dict[str, Checksum] = {}
    for h in el.findall(f"{{{NS}}}hash"):
        algorithm = algorithm_name(h.get("type") or "")
        if algorithm is None:
            continue  # unknown types (sha3-256, ed2k...) and untyped hashes outside <pieces>
        digest = _hex(_text(h), algorithm, f"the {algorithm} hash of {name!r}")
        prior = checksums.get(algorithm)
        if prior is not None and prior.digest != digest:
            raise _bad(f"file {name!r} has two different {algorithm} hashes")
        checksums[algorithm] = Checksum(algorithm, digest)
    url_els = el.findall(f"{{{NS}}}url")
    if len(url_els) > _MAX_URLS:
        raise _bad(f"file {name!r} has more than {_MAX_URLS} urls")
    urls = [u for u in (_url(u_el) for u_el in url_els) if u is not None]
    skipped = len(url_els) - len(urls) + len(el.findall(f"{{{NS}}}metaurl"))
    urls.sort(key=lambda u: u.priority)
    unique: dict[str, MetalinkUrl] = {}
    for u in urls:  # a mirror listed twice is one source, at its best priority
        unique.setdefault(u.url, u)
    pieces, note = _pieces(el, size, name)
    return MetalinkFile(
        name,
        size,
        tuple(checksums.values()),
        pieces,
        tuple(unique.values()),
        skipped,
        (note,) if note else (),
    )


def parse_metalink(data: bytes | str) -> Metalink:
    """Every ``<file>`` of a Metalink 4 document; :class:`InvalidRequest` for anything
    malformed or unsafe. A file without a usable URL is kept (its ``urls`` empty) so the
    caller can report it by name."""
    if len(data) > MAX_DOCUMENT:
        raise _bad(f"larger than {MAX_DOCUMENT} bytes")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise _bad(f"refused unsafe XML ({type(exc).__name__})") from None
    except (ET.ParseError, ValueError) as exc:
        raise _bad(f"not well-formed XML ({exc})") from None
    if root.tag == f"{{{_V3_NS}}}metalink":
        raise _bad("Metalink 3 (metalinker.org) is not supported: use Metalink 4 (RFC 5854)")
    if root.tag != f"{{{NS}}}metalink":
        raise _bad(f"the root element is {root.tag!r}, not metalink in namespace {NS}")
    file_els = root.findall(f"{{{NS}}}file")
    if not file_els:
        raise _bad("it describes no <file>")
    if len(file_els) > _MAX_FILES:
        raise _bad(f"more than {_MAX_FILES} files")
    files = [_file(el) for el in file_els]
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _bad(f"two files are named {dup!r}")
    published = root.find(f"{{{NS}}}published")
    return Metalink(tuple(files), None if published is None else _text(published))
