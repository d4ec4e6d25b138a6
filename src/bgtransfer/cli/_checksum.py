"""``--checksum ALGO=HEX`` and ``--checksum-from URL`` of ``get`` / ``add``.

``--checksum-from`` names a ``.sha256`` / ``SHA256SUMS`` / ``MD5SUMS`` file (GNU or BSD
lines, see :mod:`bgtransfer._protocol._sums`); the line for the download's file name is
picked and becomes one more ``checksums=`` entry. The sums file is fetched here, before
the task is submitted, by one small direct GET under the engine's rules: http(s) only,
TLS verified, at most 10 redirects and never from https to http, the ``-H`` headers
sent only to the download's own origin (credentials never follow a redirect elsewhere),
at most 4 MiB within 30 s. Any failure is an error before anything is submitted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from bgtransfer import InvalidRequest
from bgtransfer._protocol._digest import parse_checksum
from bgtransfer._protocol._redirects import SENSITIVE_HEADERS, origin, resolve_redirect
from bgtransfer._protocol._sums import MAX_SUMS_FILE, checksum_from_sums, file_name_of
from bgtransfer._protocol._validate import check_url
from bgtransfer._redact import redact
from bgtransfer._version import USER_AGENT
from bgtransfer.cli._common import EXIT_FAILED, EXIT_INVALID, CliError

__all__ = ["checksum_from_url", "checksum_option"]

MAX_REDIRECTS = 10
TIMEOUT = 30.0


def checksum_option(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """Click callback: each ``--checksum`` parsed now (a usage error otherwise)."""
    out = []
    for value in values:
        try:
            out.append(str(parse_checksum(value)))
        except InvalidRequest as exc:
            raise click.BadParameter(exc.message) from None
    return tuple(out)


async def _get(url: str, headers: list[tuple[str, str]], first: str) -> tuple[str, bytes]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(
        timeout=timeout, auto_decompress=True, headers={"User-Agent": USER_AGENT}
    ) as http:
        for _ in range(MAX_REDIRECTS + 1):
            same = origin(url) == origin(first)
            sent = [(k, v) for k, v in headers if same or k.lower() not in SENSITIVE_HEADERS]
            async with http.get(url, headers=sent, allow_redirects=False) as resp:
                if resp.status in (301, 302, 303, 307, 308):
                    target, why = resolve_redirect(url, resp.headers.get("Location"))
                    if target is None:
                        raise CliError(f"--checksum-from: {why}", EXIT_FAILED)
                    url = target
                    continue
                if resp.status != 200:
                    raise CliError(
                        f"--checksum-from: {redact(url)} answered {resp.status}", EXIT_FAILED
                    )
                body = await resp.content.read(MAX_SUMS_FILE + 1)
                if len(body) > MAX_SUMS_FILE:
                    raise CliError(
                        f"--checksum-from: {redact(url)} is larger than {MAX_SUMS_FILE} bytes",
                        EXIT_FAILED,
                    )
                return url, body
    raise CliError(f"--checksum-from: more than {MAX_REDIRECTS} redirects", EXIT_FAILED)


def checksum_from_url(sums_url: str, download_url: str, headers: list[tuple[str, str]]) -> str:
    """The ``algorithm=hex`` a sums file gives for ``download_url``'s file name."""
    import aiohttp

    try:
        check_url(sums_url)
    except InvalidRequest as exc:
        raise CliError(f"--checksum-from: {exc.message}", EXIT_INVALID) from None
    name = file_name_of(download_url)
    try:
        final, body = asyncio.run(_get(sums_url, headers, download_url))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        why: Any = exc if str(exc) else type(exc).__name__
        raise CliError(
            f"--checksum-from: cannot fetch {redact(sums_url)}: {why}", EXIT_FAILED
        ) from None
    try:
        checksum = checksum_from_sums(body, name, sums_name=file_name_of(final))
    except InvalidRequest as exc:
        raise CliError(f"--checksum-from {redact(sums_url)}: {exc.message}", EXIT_INVALID) from None
    return str(checksum)
