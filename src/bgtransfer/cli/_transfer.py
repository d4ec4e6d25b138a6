"""Transfer commands: get, add, ls, show, suspend, resume, cancel, wait, watch, serve-test."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import click

from bgtransfer._client import DaemonClient, DaemonUnavailable
from bgtransfer._engine._files import current_umask
from bgtransfer._exceptions import (
    DaemonStopped,
    DestinationError,
    InvalidRequest,
    InvalidTransition,
    TaskNotFound,
    TransferError,
    UnsafeHome,
)
from bgtransfer._protocol._schedule import parse_size
from bgtransfer._protocol._validate import check_url
from bgtransfer._redact import redact
from bgtransfer.cli._app import cli, home_of
from bgtransfer.cli._narrate import (
    Narrator,
    duration,
    iso_time,
    local_time,
    suspended_by_daemon,
)
from bgtransfer.cli._options import SUBMIT_EXTRA, scheduling_options

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_NOT_FOUND = 4
EXIT_INVALID = 5
EXIT_DAEMON = 6
# The task's state does not allow it: suspend/resume/cancel a completed task, rm a running one.
EXIT_STATE = 8
EXIT_SUSPENDED = 9  # get/wait: the daemon suspended the task (disk full...); resume it later
EXIT_STOPPED = 75  # EX_TEMPFAIL: the daemon was stopped while the command waited; try later
EXIT_DETACHED = 130
DEFAULT_SESSION = "cli"
POLL = 0.2
PROGRESS_EVERY = 5.0  # seconds between progress lines when there is no bar
WAIT_SLICE = 1.0  # seconds per long poll of `wait` (a suspension by the daemon ends it)


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def _fail(message: str, code: int) -> int:
    click.echo(f"bgtransfer: {redact(message)}", err=True)
    return code


def _run(home: str, fn: Callable[[DaemonClient], Awaitable[T]]) -> T:
    async def go() -> T:
        client = DaemonClient(home)
        try:
            return await fn(client)
        finally:
            await client.close()

    try:
        return asyncio.run(go())
    except (DaemonUnavailable, UnsafeHome) as exc:
        raise CliError(exc.message, EXIT_DAEMON) from None
    except DaemonStopped:
        raise CliError(
            "the daemon was stopped (the transfer is kept: it goes on when the daemon starts "
            "again, e.g. with 'bgtransfer daemon start')",
            EXIT_STOPPED,
        ) from None
    except TaskNotFound as exc:
        raise CliError(exc.message, EXIT_NOT_FOUND) from None
    except (InvalidRequest, DestinationError) as exc:
        # DestinationError at call time: the target belongs to another unfinished task.
        raise CliError(exc.message, EXIT_INVALID) from None
    except InvalidTransition as exc:
        raise CliError(exc.message, EXIT_STATE) from None
    except TransferError as exc:
        raise CliError(exc.message, EXIT_FAILED) from None


def _handled(fn: Callable[..., int]) -> Callable[..., int]:
    """Turn CliError into one line on stderr and its exit code (no traceback)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            return _fail(exc.message, exc.code)

    return wrapper


def public(task: dict[str, Any]) -> dict[str, Any]:
    """The task as ``--json`` prints it: no internals, dates in ISO 8601."""
    out = {k: v for k, v in task.items() if k != "internal"}
    for key in ("created_at", "finished_at"):
        if key in out:
            out[key] = iso_time(out[key])
    return out


def fancy() -> bool:
    """Bars and colour only for a person at a terminal."""
    return sys.stdout.isatty() and sys.stderr.isatty() and not os.environ.get("NO_COLOR")


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


async def resolve(client: DaemonClient, prefix: str) -> dict[str, Any]:
    """A task by its id or a unique prefix of it, like git."""
    if not prefix or not all(c in "0123456789abcdefABCDEF" for c in prefix):
        raise CliError(f"no task with id {prefix!r}", EXIT_NOT_FOUND)
    matches = await client.call("GET", "/v1/tasks", params={"prefix": prefix.lower()})
    if not matches:
        raise CliError(f"no task with id {prefix!r}", EXIT_NOT_FOUND)
    if len(matches) > 1:
        ids = ", ".join(t["id"][:12] for t in matches[:5])
        raise CliError(f"id prefix {prefix!r} is ambiguous: {ids}", EXIT_NOT_FOUND)
    return dict(matches[0])


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def percent(task: dict[str, Any]) -> str:
    total = task["bytes_expected"]
    done = task["bytes_sent"] if task.get("kind") == "upload" else task["bytes_received"]
    if not total:
        return human(done)
    return f"{100 * done / total:.0f} %"


def submit_body(
    url: str, path: str, headers: tuple[str, ...], session: str, **options: Any
) -> dict[str, Any]:
    pairs = []
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep:
            raise CliError(f"header must look like 'Name: value': {h!r}", EXIT_INVALID)
        pairs.append([name.strip(), value.strip()])
    body = {
        "session": session,
        "url": url,
        # A trailing "/" says "a directory": kept, so the daemon refuses it as one.
        "path": os.path.abspath(path) + (os.sep if path.endswith(os.sep) else ""),
        "headers": pairs,
        "idempotency_key": uuid.uuid4().hex,
    }
    body.update({k: v for k, v in options.items() if v is not None})
    return body


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
            "--session",
            default=DEFAULT_SESSION,
            show_default=True,
            help="Session identifier the task belongs to.",
        ),
        click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _submit(
    ctx: click.Context,
    url: str,
    output: str | None,
    headers: tuple[str, ...],
    sha256: str | None,
    request_timeout: float | None,
    resource_timeout: float | None,
    overwrite: bool,
    session: str,
    remote_name: bool = False,
    segments: int | None = None,
    max_attempts: int | None = None,
    retry_for: float | None = None,
    *,
    max_filesize: int | None = None,
) -> tuple[str, dict[str, Any]]:
    home = home_of(ctx)
    try:
        check_url(url)  # before a file name is made from it
    except InvalidRequest as exc:
        raise CliError(exc.message, EXIT_INVALID) from None
    path = output or (remote_name and name_from_server(url, headers)) or name_from_url(url)
    body = submit_body(
        url,
        path,
        headers,
        session,
        sha256=sha256,
        request_timeout=request_timeout,
        resource_timeout=resource_timeout,
        overwrite=overwrite or None,
        segments=segments,
        max_bytes=max_filesize,
        max_attempts=max_attempts,
        retry_for=retry_for,
        umask=current_umask(),
        **ctx.meta.get(SUBMIT_EXTRA, {}),
    )
    task = _run(home, lambda c: c.call("POST", "/v1/tasks", body=body))
    return home, task


@cli.command()
@click.argument("url")
@transfer_options
@scheduling_options
@click.pass_context
@_handled
def get(
    ctx: click.Context,
    url: str,
    output: str | None,
    headers: tuple[str, ...],
    sha256: str | None,
    request_timeout: float | None,
    resource_timeout: float | None,
    overwrite: bool,
    max_attempts: int | None,
    retry_for: float | None,
    segments: int | None,
    remote_name: bool,
    session: str,
    as_json: bool,
    max_filesize: int | None = None,
) -> int:
    """Download URL through the daemon, showing progress, and wait for it.

    Exit 0 when the file is complete and correct. Ctrl-C detaches: the transfer goes on in
    the background and the command says how to follow it.

    \b
    Examples:
      bgtransfer get http://127.0.0.1:8080/big.iso
      bgtransfer get http://host/f.tar -o /data/f.tar --sha256 9f86d0...
      bgtransfer get http://host/f -H 'Authorization: Bearer x' --json
    """
    home, task = _submit(
        ctx,
        url,
        output,
        headers,
        sha256,
        request_timeout,
        resource_timeout,
        overwrite,
        session,
        remote_name,
        segments,
        max_attempts,
        retry_for,
        max_filesize=max_filesize,
    )
    try:
        final = follow(home, task, show_bar=fancy() and not as_json)
    except KeyboardInterrupt:
        return detached(task)
    return finish(final, as_json)


def detached(task: dict[str, Any]) -> int:
    short = task["id"][:12]
    click.echo(
        f"\ndetached: the transfer goes on in the background.\n"
        f"  follow it:   bgtransfer watch {short}\n"
        f"  wait for it: bgtransfer wait {short}\n"
        f"  cancel it:   bgtransfer cancel {short}",
        err=True,
    )
    return EXIT_DETACHED


def finish(task: dict[str, Any], as_json: bool) -> int:
    if as_json:
        click.echo(json.dumps(public(task), sort_keys=True))
    if task["state"] != "completed" and suspended_by_daemon(task):
        short = task["id"][:12]
        return _fail(
            f"{short} was suspended by the daemon: {task['detail']}. "
            f"Once that is fixed: bgtransfer resume {short}",
            EXIT_SUSPENDED,
        )
    if task["error"] is None:
        if not as_json:
            click.echo(f"saved {task['path']} ({human(task['bytes_received'])})", err=True)
        return 0
    return _fail(f"failed: {task['error']}", EXIT_FAILED)


def follow(
    home: str, task: dict[str, Any], *, show_bar: bool, progress_lines: bool = False
) -> dict[str, Any]:
    """Follow the task until it completes or the daemon suspends it (a task that a person
    suspended is waited for). Every retry, resume, restart and suspension is a line on
    stderr, terminal or not; on a terminal a bar too; ``progress_lines``: without a bar,
    a progress line every few seconds."""
    task_id = task["id"]
    narrator = Narrator()
    say: Callable[[str], None] = lambda line: click.echo(redact(line), err=True)  # noqa: E731

    async def poll(client: DaemonClient, update: Callable[[dict[str, Any]], None]) -> Any:
        last_history = 0.0
        followed: int | None = None  # a stop of this daemon ends the command (exit 75)
        while True:
            # A long poll in slices: the answer comes at once when the task completes (no
            # poll interval added to a download's time), else after POLL with its progress.
            cur = await client.call(
                "GET",
                f"/v1/tasks/{task_id}/wait",
                params={"timeout": f"{POLL}"},
                timeout=30,
                waiter=True,
                followed=followed,
            )
            followed = client.peer_pid
            update(cur)
            for line in narrator.lines(cur):
                say(line)
            end = cur["state"] == "completed" or suspended_by_daemon(cur)
            if narrator.missed(cur) and (end or time.monotonic() - last_history >= 1.0):
                last_history = time.monotonic()
                history = await client.call(
                    "GET", f"/v1/tasks/{task_id}/attempts", followed=followed
                )
                for line in narrator.from_history(cur, history):
                    say(line)
            if end:
                return dict(cur)

    if not show_bar:
        last = {"at": time.monotonic()}

        def plain(cur: dict[str, Any]) -> None:
            if progress_lines and time.monotonic() - last["at"] >= PROGRESS_EVERY:
                last["at"] = time.monotonic()
                say(f"{os.path.basename(cur['path'])}: {percent(cur)} ({cur['detail']})")

        return _run(home, lambda c: poll(c, plain))

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )

    async def loop(client: DaemonClient) -> dict[str, Any]:
        nonlocal say
        with Progress(*columns, console=console, transient=False) as bar:
            handle = bar.add_task(os.path.basename(task["path"]), total=task["bytes_expected"])
            say = lambda line: bar.console.print(redact(line), style="yellow", markup=False)  # noqa: E731

            def draw(cur: dict[str, Any]) -> None:
                done = cur["bytes_sent"] if cur.get("kind") == "upload" else cur["bytes_received"]
                bar.update(handle, completed=done, total=cur["bytes_expected"])

            return dict(await poll(client, draw))

    return _run(home, loop)


async def _wait(client: DaemonClient, task_id: str, timeout: float | None) -> dict[str, Any]:
    """Long polls until the task completes, the daemon suspends it, or ``timeout`` passes.

    A task that a person suspended is waited for (it completes once someone resumes it);
    one note on stderr says so. Short slices, so a suspension by the daemon ends the wait
    within about a second."""
    deadline = None if timeout is None else time.monotonic() + timeout
    followed: int | None = None
    noted = False
    while True:
        left = (
            WAIT_SLICE
            if deadline is None
            else max(0.0, min(WAIT_SLICE, deadline - time.monotonic()))
        )
        cur = await client.call(
            "GET",
            f"/v1/tasks/{task_id}/wait",
            params={"timeout": f"{left:.3f}"},
            timeout=left + 15,
            waiter=True,
            followed=followed,
        )
        followed = client.peer_pid
        if cur["state"] == "completed" or suspended_by_daemon(cur):
            return dict(cur)
        if deadline is not None and time.monotonic() >= deadline:
            return dict(cur)
        if cur["state"] == "suspended" and not noted:
            noted = True
            click.echo(
                f"{task_id[:12]} is suspended; waiting until it is resumed "
                f"(bgtransfer resume {task_id[:12]})",
                err=True,
            )


@cli.command()
@click.argument("url")
@transfer_options
@scheduling_options
@click.pass_context
@_handled
def add(
    ctx: click.Context,
    url: str,
    output: str | None,
    headers: tuple[str, ...],
    sha256: str | None,
    request_timeout: float | None,
    resource_timeout: float | None,
    overwrite: bool,
    max_attempts: int | None,
    retry_for: float | None,
    segments: int | None,
    remote_name: bool,
    session: str,
    as_json: bool,
    max_filesize: int | None = None,
) -> int:
    """Queue a download and return at once; prints the task id.

    \b
    Example:
      id=$(bgtransfer add http://host/big.iso -o big.iso) && bgtransfer wait "$id"
    """
    _, task = _submit(
        ctx,
        url,
        output,
        headers,
        sha256,
        request_timeout,
        resource_timeout,
        overwrite,
        session,
        remote_name,
        segments,
        max_attempts,
        retry_for,
        max_filesize=max_filesize,
    )
    click.echo(json.dumps(public(task), sort_keys=True) if as_json else task["id"])
    return 0


@cli.command("ls")
@click.option("--session", default=None, help="Only this session's tasks.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["running", "suspended", "canceling", "completed"]),
    help="Only tasks in this state (repeatable).",
)
@click.option(
    "--since",
    type=float,
    default=None,
    help="Only tasks created at or after this time (epoch seconds).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N tasks.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip the first N.")
@click.option(
    "--after",
    default=None,
    metavar="ID",
    help="Continue after this task id (the last one of the page before).",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array on stdout.")
@click.pass_context
@_handled
def ls(
    ctx: click.Context,
    session: str | None,
    states: tuple[str, ...],
    since: float | None,
    limit: int | None,
    offset: int,
    after: str | None,
    as_json: bool,
) -> int:
    """List transfers: id prefix, state, progress, name, detail.

    \b
    Examples:
      bgtransfer ls
      bgtransfer ls --state completed --limit 50
      bgtransfer ls --state completed --limit 50 --after 3f2a...   (the next page)
      bgtransfer ls --json | jq '.[] | select(.state == "running") | .id'
    """
    params = {"offset": str(offset), "limit": str(limit or -1)}
    if session:
        params["session"] = session
    if states or since is not None or after is not None:
        if offset:
            return _fail("--offset does not combine with --state, --since, --after", EXIT_INVALID)
        del params["offset"]
        params["state"] = ",".join(states)
        if since is not None:
            params["since"] = repr(since)
        if after is not None:
            params["after"] = after
    tasks = _run(home_of(ctx), lambda c: c.call("GET", "/v1/tasks", params=params))
    if as_json:
        click.echo(json.dumps([public(t) for t in tasks], sort_keys=True))
        return 0
    print_table(tasks)
    return 0


def table_rows(tasks: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (t["id"][:8], t["state"], percent(t), os.path.basename(t["path"]), t["detail"])
        for t in tasks
    ]


def print_table(tasks: list[dict[str, Any]]) -> None:
    rows = table_rows(tasks)
    if fancy():
        from rich.console import Console
        from rich.table import Table

        table = Table("id", "state", "progress", "name", "detail", box=None)
        for r in rows:
            table.add_row(*r)
        Console().print(table)
    else:
        for r in rows:
            click.echo("\t".join(r))


@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
@_handled
def show(ctx: click.Context, task_id: str, as_json: bool) -> int:
    """Everything about one transfer (id or unique prefix), with the history of its requests.

    \b
    Examples:
      bgtransfer show 3f2a
      bgtransfer show 3f2a --json | jq '.history[] | [.status, .outcome]'
    """

    async def go(c: DaemonClient) -> dict[str, Any]:
        task = await resolve(c, task_id)
        task["history"] = await c.call("GET", f"/v1/tasks/{task['id']}/attempts")
        return task

    task = _run(home_of(ctx), go)
    history = task.pop("history")
    if as_json:
        click.echo(json.dumps({**public(task), "history": history}, sort_keys=True))
        return 0
    internal = task.get("internal", {})
    spec = internal.get("spec", {})
    dates = ("created_at", "finished_at")
    lines = [(k, local_time(task[k]) if k in dates else task[k]) for k in public(task)]
    lines += [
        ("request_timeout", spec.get("request_timeout")),
        ("resource_timeout", spec.get("resource_timeout")),
        ("sha256", spec.get("sha256")),
        ("request headers", ", ".join(h[0] for h in spec.get("headers", [])) or "-"),
        ("etag", internal.get("etag")),
        ("last_modified", internal.get("last_modified")),
        ("resource time used", f"{internal.get('active_seconds', 0):.1f} s"),
    ]
    if task["state"] != "completed" and internal.get("partial"):
        lines.append(("partial file", internal["partial"]))  # gone once the task finished
    used = internal.get("segments") or []
    if task.get("kind", "download") == "download" and task["state"] == "completed":
        # What it really used: the server may have refused ranges (then one connection).
        asked = task["segments"]
        note = (
            f" (asked for {asked}: the server did not allow ranges)"
            if asked > 1 and not used
            else ""
        )
        lines = [(k, f"{len(used) or 1}{note}" if k == "segments" else v) for k, v in lines]
    elif used:
        done = sum(1 for _, pos, end in used if pos >= end)
        lines.append(("segment progress", f"{done} of {len(used)} complete"))
    for k, v in lines:
        click.echo(f"{k:>20}: {v}")
    click.echo("history:")
    for a in history:
        start = "-" if a["range_start"] is None else f"bytes={a['range_start']}-"
        click.echo(
            f"  #{a['n']:<3} {a['status'] or '---'} {start:<18} {human(a['bytes']):>10}  "
            f"{a['outcome']}  {a['url']}"
        )
    return 0


def _control(verb: str, past: str) -> Callable[..., int]:
    @click.argument("task_id")
    @click.pass_context
    @_handled
    def command(ctx: click.Context, task_id: str) -> int:
        async def go(c: DaemonClient) -> dict[str, Any]:
            task = await resolve(c, task_id)
            return dict(await c.call("POST", f"/v1/tasks/{task['id']}/{verb}"))

        task = _run(home_of(ctx), go)
        click.echo(f"{past} {task['id'][:12]} ({task['state']}: {task['detail']})", err=True)
        return 0

    command.__doc__ = {
        "suspend": "Suspend a transfer: the connection closes, the bytes are kept.",
        "resume": "Resume a suspended transfer from where it stopped (or afresh if it must).",
        "cancel": "Cancel a transfer and remove its partial file.",
    }[verb] + f"\n\n    \b\n    Example:\n      bgtransfer {verb} 3f2a   # an id or a unique prefix"
    return command


for _verb, _past in (("suspend", "suspended"), ("resume", "resumed"), ("cancel", "cancelled")):
    cli.command(_verb)(_control(_verb, _past))


@cli.command()
@click.argument("task_id")
@click.option("--timeout", type=float, default=None, help="Give up waiting after S seconds.")
@click.option("--json", "as_json", is_flag=True, help="The task as JSON on stdout.")
@click.pass_context
@_handled
def wait(ctx: click.Context, task_id: str, timeout: float | None, as_json: bool) -> int:
    """Wait for a transfer: exit 0 if it succeeded, 1 if it failed, 2 on timeout.

    Exit 9 at once when the daemon suspends the transfer (disk full, the file cannot be
    written): the reason is on stderr; fix it and `bgtransfer resume ID`. A transfer that
    someone suspended is waited for until it is resumed and completes (or --timeout passes).

    \b
    Examples:
      bgtransfer wait 3f2a
      bgtransfer wait 3f2a --timeout 600 || echo "not yet"
    """
    if timeout is not None and timeout < 0:
        raise CliError(f"--timeout must not be negative: {timeout}", EXIT_INVALID)

    async def go(c: DaemonClient) -> dict[str, Any]:
        task = await resolve(c, task_id)
        return await _wait(c, task["id"], timeout)

    task = _run(home_of(ctx), go)
    if task["state"] != "completed" and not suspended_by_daemon(task):
        if as_json:
            click.echo(json.dumps(public(task), sort_keys=True))
        return _fail(f"timed out; {task['id'][:12]} is {task['state']}", EXIT_TIMEOUT)
    return finish(task, as_json)


@cli.command()
@click.argument("task_id", required=False)
@click.pass_context
@_handled
def watch(ctx: click.Context, task_id: str | None) -> int:
    """Live view of one transfer until it completes, or of all until none is running.

    On a terminal: a bar (one transfer) or a table redrawn every second. Otherwise plain
    lines: every retry, resume and suspension plus a progress line every 5 s (one
    transfer), or each task's row whenever it changes (all). Ctrl-C stops watching, not
    the transfer.

    \b
    Examples:
      bgtransfer watch 3f2a
      bgtransfer watch
    """
    home = home_of(ctx)
    if task_id is not None:
        task = _run(home, lambda c: resolve(c, task_id))
        try:
            final = follow(home, task, show_bar=fancy(), progress_lines=True)
        except KeyboardInterrupt:
            return 0  # watching stops; the transfer does not
        return finish(final, as_json=False)

    async def loop(c: DaemonClient) -> int:
        followed: int | None = None
        last: list[tuple[str, ...]] = []
        while True:
            tasks = await c.call("GET", "/v1/tasks", followed=followed)
            followed = c.peer_pid
            if fancy():
                click.clear()
                print_table(tasks)
            else:
                # Plain lines: only the rows that changed since the last look.
                rows = table_rows(tasks)
                for row in rows:
                    if row not in last:
                        click.echo("\t".join(row))
                last = rows
            if not any(t["state"] in ("running", "canceling") for t in tasks):
                return 0
            await asyncio.sleep(1.0)

    try:
        return _run(home, loop)
    except KeyboardInterrupt:
        return 0


@cli.command("serve-test", epilog="See the endpoints and fault knobs it prints at start.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Port (default: any free port)."
)
@click.option("--other-host", is_flag=True, help="Also listen on 127.0.0.2 (another origin).")
def serve_test(host: str, port: int, other_host: bool) -> int:
    """Run the project's fault-injecting HTTP server (for trying things out and tests).

    It prints "serving on URL", then its endpoints (/gen/SIZE, /r/NAME, /upload/NAME,
    /tus/, /ietf/NAME, /redirect, /echo) and the query parameters that make a request
    fail (cut=N, rst=N, status=CODE, rate=B/s, times=K...). Runs until Ctrl-C or SIGTERM.

    \b
    Example:
      bgtransfer serve-test --port 8080 &
      bgtransfer get 'http://127.0.0.1:8080/gen/64M?cut=20000000&times=1'
    """
    from bgtransfer.testing.__main__ import main as serve

    return serve(["--host", host, "--port", str(port), *(["--other-host"] if other_host else [])])


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
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@scheduling_options
@click.pass_context
@_handled
def put(ctx: click.Context, file: str, url: str, method: str, protocol: str,
        headers: tuple[str, ...], field_name: str, form: tuple[str, ...], retry_unsafe: bool,
        request_timeout: float | None, resource_timeout: float | None, session: str,
        as_json: bool) -> int:  # fmt: skip
    """Upload FILE to URL through the daemon and wait for it.

    \b
    Examples:
      bgtransfer put backup.tar http://127.0.0.1:8080/upload/backup.tar
      bgtransfer put big.iso http://127.0.0.1:8080/tus/ --protocol tus
      bgtransfer put photo.jpg http://host/form --protocol multipart -F album=2026
    """
    home = home_of(ctx)
    body = submit_body(url, file, headers, session)
    fields = []
    for f in form:
        name, sep, value = f.partition("=")
        if not sep:
            raise CliError(f"form field must look like 'name=value': {f!r}", EXIT_INVALID)
        fields.append([name, value])
    body.update(
        {
            "kind": "upload",
            "method": method,
            "protocol": protocol,
            "field_name": field_name,
            "form_fields": fields,
            "retry_unsafe": retry_unsafe,
        }
    )
    for key, seconds in (
        ("request_timeout", request_timeout),
        ("resource_timeout", resource_timeout),
    ):
        if seconds is not None:
            body[key] = seconds
    body.update(ctx.meta.get(SUBMIT_EXTRA, {}))
    task = _run(home, lambda c: c.call("POST", "/v1/tasks", body=body))
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
    return _fail(f"failed: {final['error']}", EXIT_FAILED)
