"""Checksum files published next to a download (``--checksum-from URL``): ``file.sha256``,
``SHA256SUMS``, ``MD5SUMS``, in the GNU coreutils and BSD formats.

    e3b0c442...b855  file.iso          GNU, text mode (two spaces)
    e3b0c442...b855 *file.iso          GNU, binary mode
    SHA256 (file.iso) = e3b0c442...    BSD tag (``sha256sum --tag``, ``shasum``)
    e3b0c442...b855                    a lone digest (many ``.sha256`` files)

Pure: the engine fetches the text; this finds the line for the file being downloaded.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import unquote, urlsplit

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import ALGORITHMS, Checksum, algorithm_name

__all__ = ["MAX_SUMS_FILE", "checksum_from_sums", "file_name_of"]

MAX_SUMS_FILE = 4 << 20  # a SHA256SUMS of a large release is a few hundred KB
_GNU = re.compile(r"(\\?)([0-9a-fA-F]+) [ *]?(.+)\Z")
_BSD = re.compile(r"(\\?)([A-Za-z0-9-]+) ?\((.+)\) ?= ?([0-9a-fA-F]+)\Z")
_LONE = re.compile(r"[0-9a-fA-F]+\Z")
_BY_HEX_LENGTH = {2 * a.size: name for name, a in ALGORITHMS.items() if name != "crc32c"}


def file_name_of(url: str) -> str:
    """The file name a sums file lists for ``url``: its last path segment, unquoted."""
    return posixpath.basename(unquote(urlsplit(url).path))


def _algorithm_of(sums_name: str | None) -> str | None:
    """``SHA256SUMS``, ``file.sha512``, ``MD5SUMS.txt`` -> the algorithm they hold."""
    if not sums_name:
        return None
    stem = posixpath.basename(sums_name).lower()
    for name in ALGORITHMS:
        if stem.startswith(f"{name}sum") or stem.endswith(f".{name}") or f".{name}." in stem:
            return name
    return None


def _unescape(name: str) -> str:
    # coreutils marks a line whose name has "\\" or "\n" with a leading backslash.
    return name.replace("\\n", "\n").replace("\\\\", "\\")


def _entries(text: str) -> list[tuple[str | None, str, str | None]]:
    """(algorithm named by the line or None, hex digest, file name or None), per line."""
    out: list[tuple[str | None, str, str | None]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        bsd = _BSD.match(line)
        if bsd is not None:
            name = _unescape(bsd[3]) if bsd[1] else bsd[3]
            out.append((algorithm_name(bsd[2]) or "?", bsd[4], name))
            continue
        gnu = _GNU.match(line)
        if gnu is not None:
            name = _unescape(gnu[3]) if gnu[1] else gnu[3]
            out.append((None, gnu[2], name))
            continue
        if _LONE.match(line):
            out.append((None, line, None))
            continue
        raise InvalidRequest(f"checksum file: cannot read the line {line[:120]!r}")
    return out


def checksum_from_sums(
    text: str | bytes, file_name: str, *, sums_name: str | None = None
) -> Checksum:
    """The checksum of ``file_name`` in a sums file (``sums_name`` is its own name or URL,
    which tells the algorithm when the lines do not). A file with one lone digest applies to
    whatever it is next to; otherwise the line naming ``file_name`` is required."""
    if len(text) > MAX_SUMS_FILE:
        raise InvalidRequest(f"checksum file: larger than {MAX_SUMS_FILE} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("checksum file: not UTF-8 text") from None
    entries = _entries(text)
    if not entries:
        raise InvalidRequest("checksum file: it lists no checksum")
    lone = [e for e in entries if e[2] is None]
    if lone and len(entries) > 1:
        raise InvalidRequest("checksum file: a lone digest among named ones is ambiguous")
    matches = lone or [e for e in entries if e[2] and posixpath.basename(e[2]) == file_name]
    if not matches:
        raise InvalidRequest(f"checksum file: no line for {file_name!r}")
    if len({(m[0], m[1].lower()) for m in matches}) > 1:
        raise InvalidRequest(f"checksum file: several different lines for {file_name!r}")
    tag, digest, _ = matches[0]
    if tag == "?":
        raise InvalidRequest("checksum file: the algorithm it names is not supported")
    name = tag or _algorithm_of(sums_name) or _BY_HEX_LENGTH.get(len(digest))
    if name is None or len(digest) != 2 * ALGORITHMS[name].size:
        raise InvalidRequest(
            f"checksum file: {len(digest)} hex digits is not a digest of a known algorithm"
        )
    return Checksum(name, bytes.fromhex(digest))
