"""The faces' side of issue 17: ``download(urls=[...])`` and ``refresh=`` checked and split
into what the options store (the URLs, a refresh argv) and what only a foreground engine
can hold (a refresh callable); and :func:`metalink_downloads`, a Metalink 4 document as
``download()`` arguments."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from bgtransfer._exceptions import InvalidRequest
from bgtransfer._protocol._digest import crc32c_available
from bgtransfer._protocol._metalink import MAX_DOCUMENT, parse_metalink

__all__ = ["metalink_downloads", "split_sources"]

RefreshCallable = Callable[[Any], Any]


def split_sources(
    url: object, urls: object, refresh: object, *, background: bool
) -> tuple[Any, tuple[Any, ...], tuple[str, ...] | None, RefreshCallable | None]:
    """``(url, urls, refresh argv, refresh callable)`` from what the caller gave: exactly
    one of ``url`` and ``urls``; a callable refresh only in a foreground session."""
    given_urls: tuple[Any, ...] = ()
    if urls is not None and urls != ():
        if url is not None:
            raise InvalidRequest("give url or urls (mirrors of one file), not both")
        if isinstance(urls, str) or not isinstance(urls, Sequence) or not urls:
            raise InvalidRequest(f"urls must be a non-empty list of URLs, not {urls!r}")
        given_urls = tuple(urls)
        url = given_urls[0]
    elif url is None:
        raise InvalidRequest("a URL is needed: url=... or urls=[...] (mirrors of one file)")
    hook: RefreshCallable | None = None
    argv: Any = refresh
    if callable(refresh):
        if background:
            raise InvalidRequest(
                "refresh: a callable runs only in a foreground session "
                "(Session(background=False)); the daemon runs a command: refresh=[argv...]"
            )
        hook, argv = refresh, None
    if (hook is not None or argv is not None) and len(given_urls) > 1:
        raise InvalidRequest(
            "refresh and several urls together are not supported: a refresh names one new URL"
        )
    return url, given_urls, argv, hook


def _document(source: str | bytes | os.PathLike[str]) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("<"):
        return source.encode()
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_DOCUMENT + 1)
    except OSError as exc:
        raise InvalidRequest(f"cannot read the Metalink file {source!r}: {exc.strerror}") from None
    return data


def metalink_downloads(
    source: str | bytes | os.PathLike[str],
    *,
    path: str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """A Metalink 4 document (RFC 5854; a file path, or its bytes) as keyword arguments of
    ``download()``, one dict per file: ``urls`` (its http(s) mirrors, by priority),
    ``sha256`` (when it gives a whole-file sha-256), ``checksums`` (its other whole-file
    hashes), ``pieces`` (its piece hashes: a bad piece is fetched again alone) and ``path``.

    ``path`` names the target of a document with one file; ``directory`` (default: the
    current one) receives every file under its Metalink name.
    """
    doc = parse_metalink(_document(source))
    if path is not None and len(doc.files) != 1:
        raise InvalidRequest(
            f"the Metalink document lists {len(doc.files)} files: give a directory, not a path"
        )
    if path is not None and directory is not None:
        raise InvalidRequest("give path (one file) or directory, not both")
    out = []
    for f in doc.files:
        if not f.urls:
            raise InvalidRequest(f"Metalink file {f.name!r} has no http(s) URL")
        target = path if path is not None else os.path.join(directory or os.curdir, f.name)
        kwargs: dict[str, Any] = {"urls": f.sources, "path": os.fspath(target)}
        sha256 = next((c.hex() for c in f.checksums if c.algorithm == "sha256"), None)
        if sha256 is not None:
            kwargs["sha256"] = sha256
        others = [
            str(c)
            for c in f.checksums
            if c.algorithm != "sha256" and (c.algorithm != "crc32c" or crc32c_available())
        ]
        if others:
            kwargs["checksums"] = others
        if f.pieces is not None:
            kwargs["pieces"] = {
                "algorithm": f.pieces.algorithm,
                "piece_size": f.pieces.piece_size,
                "hashes": [h.hex() for h in f.pieces.hashes],
            }
        out.append(kwargs)
    return out
