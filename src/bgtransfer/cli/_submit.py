"""Submitting commands: get, add (downloads) and put (uploads), and the file names they make."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import unicodedata
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import click

from bgtransfer import InvalidRequest, metalink_downloads
from bgtransfer._protocol._schedule import parse_size
from bgtransfer._protocol._validate import check_url
from bgtransfer._tasks import body_of, build_row, build_upload_row
from bgtransfer.cli._app import cli, home_of
from bgtransfer.cli._checksum import checksum_from_url, checksum_option
from bgtransfer.cli._common import (
    DEFAULT_SESSION,
    EXIT_FAILED,
    EXIT_INVALID,
    CliError,
    daemon_errors,
    fail,
    fancy,
    handled,
    human,
    public,
    run,
)
from bgtransfer.cli._follow import detached, finish, follow
from bgtransfer.cli._narrate import duration
from bgtransfer.cli._options import SUBMIT_EXTRA, scheduling_options

__all__ = ["add", "get", "header_pairs", "name_from_server", "name_from_url", "put", "safe_name"]


def safe_name(raw: str) -> str:
    """Basename only, no dot-file, no control characters, at most 200 characters."""
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip().lstrip(".")
    return clean[:200]


def name_from_url(url: str) -> str:
    """The file name a URL's path suggests, made safe."""
    return safe_name(unquote(urlsplit(url).path)) or "index.html"


def name_from_server(url: str, headers: tuple[str, ...]) -> str | None:
    """The server's Content-Disposition filename (curl -J), sanitised; None if it gives none."""
    import email.message

    import aiohttp

    async def head() -> str | None:
        hdrs = [(h.partition(":")[0].strip(), h.partition(":")[2].strip()) for h in headers]
        async with (
            aiohttp.ClientSession() as http,
            http.head(
                url, headers=hdrs, allow_redirects=True, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp,
        ):
            return resp.headers.get("Content-Disposition")

    try:
        value = asyncio.run(head())
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise CliError(f"cannot ask the server for a file name: {exc}", EXIT_FAILED) from None
    if not value:
        return None
    msg = email.message.Message()
    msg["content-disposition"] = value
    name = msg.get_filename()
    return safe_name(name) or None if name else None


def header_pairs(headers: tuple[str, ...]) -> list[tuple[str, str]]:
    """``-H 'Name: value'`` options as (name, value) pairs."""
    pairs = []
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep:
            raise CliError(f"header must look like 'Name: value': {h!r}", EXIT_INVALID)
        pairs.append((name.strip(), value.strip()))
    return pairs


def absolute(path: str) -> str:
    # A trailing "/" says "a directory": kept, so the target is refused as one.
    return os.path.abspath(path) + (os.sep if path.endswith(os.sep) else "")


def _post(home: str, body: dict[str, Any]) -> dict[str, Any]:
    return run(home, lambda c: c.call("POST", "/v1/tasks", body=body))


if TYPE_CHECKING:
    _IntParam = click.ParamType[int]
else:  # generic only in newer click
    _IntParam = click.ParamType


class ByteSize(_IntParam):
    """A byte count as curl takes it: digits with an optional k, M, G or T (powers of 1024)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def transfer_options(fn: Callable[..., int]) -> Callable[..., int]:
    opts = [
        click.option(
            "-o",
            "--output",
            "output",
            default=None,
            help="Target file (default: the name in the URL's path, here).",
        ),
        click.option("-H", "--header", "headers", multiple=True, help="'Name: value' (repeat)."),
        click.option(
            "--sha256", default=None, help="Expected SHA-256; verified before the file appears."
        ),
        click.option(
            "--request-timeout",
            type=float,
            default=None,
            help="Idle timeout in seconds (default 60).",
        ),
        click.option(
            "--resource-timeout",
            type=float,
            default=None,
            help="Whole-transfer timeout in seconds, suspended time excluded (default 7 days).",
        ),
        click.option("--overwrite", is_flag=True, help="Replace an existing target."),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            default=None,
            help="Give up after N attempts (default: retry until the resource timeout).",
        ),
        click.option(
            "--retry-for",
            callback=duration,
            metavar="DURATION",
            default=None,
            help="Give up once attempts have kept failing for this long with no byte "
            "arriving, e.g. 30s, 5m (default: retry until the resource timeout).",
        ),
        click.option(
            "--segments",
            type=click.IntRange(1, 16),
            default=None,
            help="Download over up to N connections at once (1-16, default 1) when the "
            "server allows ranges.",
        ),
        click.option(
            "--max-filesize",
            type=ByteSize(),
            default=None,
            help="Fail a download larger than this many bytes (10M, 2G: as curl), whether "
            "announced or grown to; nothing is kept.",
        ),
        click.option(
            "-J",
            "--remote-name",
            is_flag=True,
            help="Name the file from the server's Content-Disposition (sanitised: "
            "basename only, no dot-files, no control characters).",
        ),
        click.option(
            "--refresh-cmd",
            default=None,
            metavar="'CMD ARGS'",
            help="When the URL expires (401/403/410 after a first answer, or a signed URL's "
            "own expiry), the daemon runs CMD (split like a shell would, but run with no "
            'shell) and takes the new URL from its stdout: one URL, or {"url": ..., '
            '"headers": {...}}.',
        ),
        click.option(
            "--metalink",
            default=None,
            type=click.Path(dir_okay=False, exists=True),
            help="A Metalink 4 file (RFC 5854): its mirrors, size and sha-256 in one go; "
            "one task per file (-o: the file, or the directory for several).",
        ),
        click.option(
            "--session",
            default=DEFAULT_SESSION,
            show_default=True,
            help="Session identifier the task belongs to.",
        ),
        click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout."),
        click.option(
            "--checksum",
            "checksums",
            multiple=True,
            callback=checksum_option,
            metavar="ALGO=HEX",
            help="Expected checksum of the file (sha256, sha512, sha384, sha1, md5; md5 and "
            "sha1 are weak), verified before the file appears. Repeat for several.",
        ),
        click.option(
            "--checksum-from",
            "checksum_from",
            default=None,
            metavar="URL",
            help="A .sha256 / SHA256SUMS / MD5SUMS file: the line for this URL's file name "
            "is verified like --checksum (fetched before the task is submitted).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _submit(
    ctx: click.Context,
    url: str,
    *,
    output: str | None,
    headers: tuple[str, ...],
    remote_name: bool,
    session: str,
    overwrite: bool,
    max_filesize: int | None,
    urls: tuple[str, ...] = (),
    refresh_cmd: str | None = None,
    checksum_from: str | None = None,
    **options: Any,
) -> tuple[str, dict[str, Any]]:
    """Submit a download: the row built and checked here by the library's one builder,
    then sent to the daemon (which builds it again from what it is sent). ``urls``: every
    source of the one file (mirrors), ``url`` first."""
    home = home_of(ctx)
    try:
        check_url(url)  # before a file name is made from it
    except InvalidRequest as exc:
        raise CliError(exc.message, EXIT_INVALID) from None
    path = output or (remote_name and name_from_server(url, headers)) or name_from_url(url)
    pairs = header_pairs(headers)
    if checksum_from is not None:
        options["checksums"] = (
            *options.get("checksums", ()),
            checksum_from_url(checksum_from, url, pairs),
        )
    given = {
        **options,
        "overwrite": overwrite or None,
        "max_bytes": max_filesize,
        "urls": urls if len(urls) > 1 else None,
        "refresh": refresh_argv(refresh_cmd),
        **ctx.meta.get(SUBMIT_EXTRA, {}),
    }
    with daemon_errors():
        # The library's builder checks everything; its body_of says what to send.
        row = build_row(
            session,
            url,
            absolute(path),
            background=True,
            headers=pairs,
            idempotency_key=uuid.uuid4().hex,
            **{k: v for k, v in given.items() if v is not None},
        )
    return home, _post(home, body_of(row).to_json())


@cli.command()
@click.argument("urls", nargs=-1, metavar="URL [MIRROR...]")
@transfer_options
@scheduling_options
@click.pass_context
@handled
def get(ctx: click.Context, urls: tuple[str, ...], as_json: bool, **options: Any) -> int:
    """Download URL through the daemon, showing progress, and wait for it.

    Several URLs are mirrors of ONE file (one -o): segments and retries go to any of
    them, and a mirror that serves other bytes is dropped. Exit 0 when the file is
    complete and correct. Ctrl-C detaches: the transfer goes on in the background and the
    command says how to follow it.

    \b
    Examples:
      bgtransfer get http://127.0.0.1:8080/big.iso
      bgtransfer get http://host/f.tar -o /data/f.tar --sha256 9f86d0...
      bgtransfer get http://host/f -H 'Authorization: Bearer x' --json
      bgtransfer get http://a/f.iso http://b/f.iso -o f.iso --segments 4
      bgtransfer get --metalink f.meta4 -o downloads/
      bgtransfer get "$SIGNED_URL" --refresh-cmd 'aws s3 presign s3://bucket/f'
    """
    code = 0
    for home, task in _submit_all(ctx, urls, options):
        try:
            final = follow(home, task, show_bar=fancy() and not as_json)
        except KeyboardInterrupt:
            return detached(task)
        code = max(code, finish(final, as_json))
    return code


@cli.command()
@click.argument("urls", nargs=-1, metavar="URL [MIRROR...]")
@transfer_options
@scheduling_options
@click.pass_context
@handled
def add(ctx: click.Context, urls: tuple[str, ...], as_json: bool, **options: Any) -> int:
    """Queue a download and return at once; prints the task id (one per line for the
    files of a Metalink). Several URLs are mirrors of one file, as for get.

    \b
    Example:
      id=$(bgtransfer add http://host/big.iso -o big.iso) && bgtransfer wait "$id"
    """
    for _, task in _submit_all(ctx, urls, options):
        click.echo(json.dumps(public(task), sort_keys=True) if as_json else task["id"])
    return 0


def refresh_argv(command: str | None) -> list[str] | None:
    """``--refresh-cmd 'CMD ARGS'`` as an argv: split as a shell would, run with none."""
    if command is None:
        return None
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise CliError(f"--refresh-cmd: {exc}", EXIT_INVALID) from None
    if not argv:
        raise CliError("--refresh-cmd: an empty command", EXIT_INVALID)
    return argv


def _submit_all(
    ctx: click.Context, urls: tuple[str, ...], options: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The tasks of one get/add: one file from its URL(s), or one per Metalink file."""
    metalink = options.pop("metalink", None)
    if metalink is None:
        if not urls:
            raise CliError("a URL is needed (or --metalink FILE)", EXIT_INVALID)
        return [_submit(ctx, urls[0], urls=urls, **options)]
    if urls:
        raise CliError("give URLs or --metalink FILE, not both", EXIT_INVALID)
    output = options.pop("output", None)
    try:
        files = metalink_downloads(metalink, directory=output or os.curdir)
        if len(files) == 1 and output is not None and not _is_dir(output):
            files = metalink_downloads(metalink, path=output)
    except InvalidRequest as exc:
        raise CliError(exc.message, EXIT_INVALID) from None
    if options.get("sha256") is not None and len(files) > 1:
        raise CliError("--sha256 names one file; the Metalink lists several", EXIT_INVALID)
    if (options.get("checksums") or options.get("checksum_from")) and len(files) > 1:
        raise CliError("--checksum names one file; the Metalink lists several", EXIT_INVALID)
    out = []
    for f in files:
        given = {**options, "output": f["path"]}
        if f.get("sha256") and not given.get("sha256"):
            given["sha256"] = f["sha256"]
        if f.get("checksums"):
            given["checksums"] = (*given.get("checksums", ()), *f["checksums"])
        if f.get("pieces") is not None:
            given["pieces"] = f["pieces"]
        os.makedirs(os.path.dirname(os.path.abspath(f["path"])), exist_ok=True)
        out.append(_submit(ctx, f["urls"][0], urls=tuple(f["urls"]), **given))
    return out


def _is_dir(path: str) -> bool:
    return path.endswith(os.sep) or os.path.isdir(path)


def _form_fields(form: tuple[str, ...]) -> list[tuple[str, str]]:
    fields = []
    for f in form:
        name, sep, value = f.partition("=")
        if not sep:
            raise CliError(f"form field must look like 'name=value': {f!r}", EXIT_INVALID)
        fields.append((name, value))
    return fields


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("url")
@click.option("--method", default="PUT", show_default=True, help="HTTP method for plain uploads.")
@click.option(
    "--protocol",
    type=click.Choice(["plain", "multipart", "tus", "ietf"]),
    default="plain",
    show_default=True,
    help="plain: one streamed request; multipart: a form POST; tus: tus 1.0; "
    "ietf: draft-ietf-httpbis-resumable-upload-05 (tus and ietf resume from the server's offset).",
)
@click.option("-H", "--header", "headers", multiple=True, help="'Name: value' (repeat).")
@click.option(
    "--field", "field_name", default="file", show_default=True, help="multipart: file field."
)
@click.option("-F", "--form", "form", multiple=True, help="multipart: extra field 'name=value'.")
@click.option("--retry-unsafe", is_flag=True, help="Retry a POST even without an Idempotency-Key.")
@click.option(
    "--request-timeout", type=float, default=None, help="Idle timeout in seconds (default 60)."
)
@click.option(
    "--resource-timeout",
    type=float,
    default=None,
    help="Whole-transfer timeout in seconds, suspended time excluded (default 7 days).",
)
@click.option(
    "--session",
    default=DEFAULT_SESSION,
    show_default=True,
    help="Session identifier the task belongs to.",
)
@click.option(
    "--refresh-cmd",
    default=None,
    metavar="'CMD ARGS'",
    help="When the URL or token expires (401/403/410 once the upload began), the daemon "
    "runs CMD (no shell) for a new URL and headers, as for get.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@scheduling_options
@click.pass_context
@handled
def put(ctx: click.Context, file: str, url: str, headers: tuple[str, ...], form: tuple[str, ...],
        session: str, as_json: bool, **options: Any) -> int:  # fmt: skip
    """Upload FILE to URL through the daemon and wait for it.

    \b
    Examples:
      bgtransfer put backup.tar http://127.0.0.1:8080/upload/backup.tar
      bgtransfer put big.iso http://127.0.0.1:8080/tus/ --protocol tus
      bgtransfer put photo.jpg http://host/form --protocol multipart -F album=2026
    """
    home = home_of(ctx)
    pairs = header_pairs(headers)
    fields = _form_fields(form)
    options["refresh"] = refresh_argv(options.pop("refresh_cmd", None))
    given = {**options, **ctx.meta.get(SUBMIT_EXTRA, {})}
    with daemon_errors():
        row = build_upload_row(
            session,
            absolute(file),
            url,
            background=True,
            headers=pairs,
            form_fields=fields,
            idempotency_key=uuid.uuid4().hex,
            **{k: v for k, v in given.items() if v is not None},
        )
    task = _post(home, body_of(row).to_json())
    try:
        final = follow(home, task, show_bar=fancy() and not as_json)
    except KeyboardInterrupt:
        return detached(task)
    if final["state"] != "completed":
        return finish(final, as_json)  # suspended by the daemon
    if as_json:
        click.echo(json.dumps(public(final), sort_keys=True))
    if final["error"] is None:
        if not as_json:
            click.echo(f"uploaded {file} ({human(final['bytes_sent'])}), server answered "
                       f"{final['status_code']}", err=True)  # fmt: skip
        return 0
    return fail(f"failed: {final['error']}", EXIT_FAILED)
