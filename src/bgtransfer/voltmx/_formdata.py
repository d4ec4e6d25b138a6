"""``voltmx.net.FormData`` and the request bodies ``send(data)`` accepts, spooled to a file.

A background upload comes from a file (as NSURLSession's do), so every body is written to a
file first; a file part is copied in pieces, never read into memory whole.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from typing import IO, Any, BinaryIO
from urllib.parse import urlencode

from bgtransfer.voltmx._errors import bad_type, missing

__all__ = ["FormData", "FormValue", "spool_body"]

FormValue = str | bytes | os.PathLike[str] | BinaryIO
_PIECE = 1 << 20


class _File:
    """A file part: a path (opened when the body is written) or an open binary file."""

    def __init__(
        self, source: os.PathLike[str] | BinaryIO, filename: str | None, public: Any = None
    ) -> None:
        self.source = source
        self.public = source if public is None else public  # what getAll() and co. return
        if filename is None:
            raw = (
                os.fspath(source)
                if isinstance(source, os.PathLike)
                else getattr(source, "name", "")
            )
            filename = os.path.basename(raw) if isinstance(raw, str) and raw else "file"
        self.filename = filename

    def copy_to(self, out: IO[bytes]) -> None:
        if isinstance(self.source, os.PathLike):
            with open(self.source, "rb") as f:
                shutil.copyfileobj(f, out, _PIECE)
        else:
            shutil.copyfileobj(self.source, out, _PIECE)


class FormData:
    """``new voltmx.net.FormData()``: an ordered list of (name, value) entries."""

    def __init__(self) -> None:
        self._entries: list[tuple[str, str | bytes | _File]] = []

    def append(
        self, name: str | None = None, value: Any = None, filename: str | None = None
    ) -> None:
        """Add an entry. ``value``: a string, bytes (RawBytes; the name doubles as the file
        name, as the docs say), a path or an open binary file (``filename`` overrides the
        part's file name, as iOS's ``appendName:withValue:andFileName:``)."""
        if name is None or value is None:
            raise missing("FormData.append()", "a name and a value")
        if not isinstance(name, str):
            raise bad_type("the FormData entry name must be a string", name)
        if filename is not None and not isinstance(filename, str):
            raise bad_type("filename must be a string", filename)
        if isinstance(value, str):
            self._entries.append((name, value))
        elif isinstance(value, bytes | bytearray | memoryview):
            if filename is None:
                self._entries.append((name, bytes(value)))
            else:
                raw = bytes(value)
                self._entries.append((name, _File(io.BytesIO(raw), filename, raw)))
        elif isinstance(value, os.PathLike) or (
            hasattr(value, "read") and not isinstance(value, str)
        ):
            if isinstance(value, os.PathLike) and not os.path.isfile(value):
                raise bad_type(
                    f"no such file for FormData entry {name!r}: {os.fspath(value)}", value
                )
            self._entries.append((name, _File(value, filename)))
        else:
            raise bad_type("a FormData value must be a string, bytes, a path or a file", value)

    def set(self, name: str, value: Any, filename: str | None = None) -> None:
        """XHR's FormData.set: replace every entry of ``name`` by this one."""
        self.delete(name)
        self.append(name, value, filename)

    def delete(self, name: str) -> None:
        self._entries = [(k, v) for k, v in self._entries if k != name]

    def get(self, name: str) -> Any:
        for k, v in self._entries:
            if k == name:
                return _public(v)
        return None

    def getAll(self, name: str) -> list[Any]:
        return [_public(v) for k, v in self._entries if k == name]

    def has(self, name: str) -> bool:
        return any(k == name for k, _ in self._entries)

    def keys(self) -> list[str]:
        return [k for k, _ in self._entries]

    def values(self) -> list[Any]:
        return [_public(v) for _, v in self._entries]

    def entries(self) -> list[tuple[str, Any]]:
        return [(k, _public(v)) for k, v in self._entries]

    def toString(self) -> str:
        """iOS's ``toString`` (real apps log it): the string entries, URL-encoded."""
        return urlencode([(k, v) for k, v in self._entries if isinstance(v, str)])

    def __len__(self) -> int:
        return len(self._entries)

    def has_files(self) -> bool:
        return any(not isinstance(v, str) for _, v in self._entries)

    def write_to(self, out: IO[bytes]) -> str:
        """Serialize into ``out``; returns the Content-Type. Only strings: a URL-encoded form
        (what Volt MX runtimes send for ``kony_sdk.js``'s parameter forms); with bytes or a
        file: multipart/form-data (RFC 7578)."""
        if not self.has_files():
            pairs = [(k, v) for k, v in self._entries if isinstance(v, str)]
            out.write(urlencode(pairs).encode())
            return "application/x-www-form-urlencoded"
        boundary = f"bgtransfer-{uuid.uuid4().hex}"
        for name, value in self._entries:
            out.write(f"--{boundary}\r\n".encode())
            disposition = f'form-data; name="{_quote(name)}"'
            if isinstance(value, str):
                out.write(f"Content-Disposition: {disposition}\r\n\r\n".encode())
                out.write(value.encode())
            else:
                filename = name if isinstance(value, bytes) else value.filename
                out.write(
                    f'Content-Disposition: {disposition}; filename="{_quote(filename)}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n".encode()
                )
                if isinstance(value, bytes):
                    out.write(value)
                else:
                    value.copy_to(out)
            out.write(b"\r\n")
        out.write(f"--{boundary}--\r\n".encode())
        return f"multipart/form-data; boundary={boundary}"


def _public(value: str | bytes | _File) -> Any:
    return value.public if isinstance(value, _File) else value


def _quote(text: str) -> str:
    # The WHATWG form encoding: escape only what would end the quoted string or the header
    # line; everything else goes as UTF-8 (RFC 7578 4.2).
    return text.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


def spool_body(data: object, path: str) -> str | None:
    """Write ``send(data)``'s body to ``path`` (fsynced); returns its default Content-Type."""
    with open(path, "wb") as out:
        ctype = _write(data, out)
        out.flush()
        os.fsync(out.fileno())
    return ctype


def _write(data: object, out: IO[bytes]) -> str | None:
    if data is None:
        return None
    if isinstance(data, FormData):
        return data.write_to(out)
    if isinstance(data, str):
        out.write(data.encode())
        return "text/plain; charset=utf-8"
    if isinstance(data, bytes | bytearray | memoryview):
        out.write(bytes(data))
        return "application/octet-stream"
    if isinstance(data, Mapping | Sequence):
        try:
            out.write(json.dumps(data, separators=(",", ":")).encode())
        except (TypeError, ValueError) as exc:
            raise bad_type(f"a JSON object that serializes ({exc})", data) from None
        return "application/json"
    raise bad_type("send() takes a string, bytes, a JSON object (dict or list) or a FormData", data)
