"""Following transfers: the progress of get/put, and the wait and watch commands."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import click

from bgtransfer._clients import Client
from bgtransfer._redact import redact
from bgtransfer.cli._app import cli, home_of
from bgtransfer.cli._common import (
    DEFAULT_SESSION,
    EXIT_DETACHED,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_SUSPENDED,
    EXIT_TIMEOUT,
    CliError,
    done_bytes,
    fail,
    fancy,
    handled,
    human,
    percent,
    public,
    resolve,
    run,
)
from bgtransfer.cli._narrate import Narrator, suspended_by_daemon
from bgtransfer.cli._show import print_table, table_rows

__all__ = ["detached", "events", "finish", "follow", "wait", "wait_for", "watch"]

POLL = 0.2
PROGRESS_EVERY = 5.0  # seconds between progress lines when there is no bar
WAIT_SLICE = 1.0  # seconds per long poll of `wait` (a suspension by the daemon ends it)

Say = Callable[[str], None]


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
        return fail(
            f"{short} was suspended by the daemon: {task['detail']}. "
            f"Once that is fixed: bgtransfer resume {short}",
            EXIT_SUSPENDED,
        )
    if task["error"] is None:
        if not as_json:
            click.echo(f"saved {task['path']} ({human(task['bytes_received'])})", err=True)
        return 0
    return fail(f"failed: {task['error']}", EXIT_FAILED)


def _say(line: str) -> None:
    click.echo(redact(line), err=True)


async def _poll(
    client: Client,
    task_id: str,
    update: Callable[[dict[str, Any]], None],
    say: Callable[[], Say],
) -> dict[str, Any]:
    """Read the task until it completes or the daemon suspends it, telling ``say()`` every
    retry, resume, restart and suspension (``say`` is asked each time: a bar replaces it)."""
    narrator = Narrator()
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
            say()(line)
        end = cur["state"] == "completed" or suspended_by_daemon(cur)
        if narrator.missed(cur) and (end or time.monotonic() - last_history >= 1.0):
            last_history = time.monotonic()
            history = await client.call("GET", f"/v1/tasks/{task_id}/attempts", followed=followed)
            for line in narrator.from_history(cur, history):
                say()(line)
        if end:
            return dict(cur)


def _follow_plain(home: str, task: dict[str, Any], progress_lines: bool) -> dict[str, Any]:
    last = {"at": time.monotonic()}

    def plain(cur: dict[str, Any]) -> None:
        if progress_lines and time.monotonic() - last["at"] >= PROGRESS_EVERY:
            last["at"] = time.monotonic()
            _say(f"{os.path.basename(cur['path'])}: {percent(cur)} ({cur['detail']})")

    return run(home, lambda c: _poll(c, task["id"], plain, lambda: _say))


def _follow_bar(home: str, task: dict[str, Any]) -> dict[str, Any]:
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
    say: Say = _say

    async def loop(client: Client) -> dict[str, Any]:
        nonlocal say
        with Progress(*columns, console=console, transient=False) as bar:
            handle = bar.add_task(os.path.basename(task["path"]), total=task["bytes_expected"])
            say = lambda line: bar.console.print(redact(line), style="yellow", markup=False)  # noqa: E731

            def draw(cur: dict[str, Any]) -> None:
                bar.update(handle, completed=done_bytes(cur), total=cur["bytes_expected"])

            return await _poll(client, task["id"], draw, lambda: say)

    return run(home, loop)


def follow(
    home: str, task: dict[str, Any], *, show_bar: bool, progress_lines: bool = False
) -> dict[str, Any]:
    """Follow the task until it completes or the daemon suspends it (a task that a person
    suspended is waited for). Every retry, resume, restart and suspension is a line on
    stderr, terminal or not; on a terminal a bar too; ``progress_lines``: without a bar,
    a progress line every few seconds."""
    if show_bar:
        return _follow_bar(home, task)
    return _follow_plain(home, task, progress_lines)


async def wait_for(client: Client, task_id: str, timeout: float | None) -> dict[str, Any]:
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
@click.argument("task_id")
@click.option("--timeout", type=float, default=None, help="Give up waiting after S seconds.")
@click.option("--json", "as_json", is_flag=True, help="The task as JSON on stdout.")
@click.pass_context
@handled
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

    async def go(c: Client) -> dict[str, Any]:
        task = await resolve(c, task_id)
        return await wait_for(c, task["id"], timeout)

    task = run(home_of(ctx), go)
    if task["state"] != "completed" and not suspended_by_daemon(task):
        if as_json:
            click.echo(json.dumps(public(task), sort_keys=True))
        return fail(f"timed out; {task['id'][:12]} is {task['state']}", EXIT_TIMEOUT)
    return finish(task, as_json)


async def _watch_all(c: Client) -> int:
    """Until no task runs: the table redrawn (a terminal), or each row when it changes."""
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


@cli.command()
@click.argument("task_id", required=False)
@click.pass_context
@handled
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
        task = run(home, lambda c: resolve(c, task_id))
        try:
            final = follow(home, task, show_bar=fancy(), progress_lines=True)
        except KeyboardInterrupt:
            return 0  # watching stops; the transfer does not
        return finish(final, as_json=False)
    try:
        return run(home, _watch_all)
    except KeyboardInterrupt:
        return 0


@cli.command()
@click.option(
    "--session", default=DEFAULT_SESSION, show_default=True, help="Whose events to print."
)
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=None,
    metavar="CURSOR",
    help="Replay every state event after this cursor (default: the completions not yet "
    "acknowledged).",
)
@click.option(
    "--follow/--no-follow",
    default=True,
    help="After the replay, go on with each event as it happens (default), or stop.",
)
@click.pass_context
@handled
def events(ctx: click.Context, session: str, since: int | None, follow: bool) -> int:
    """A session's events, one JSON object a line: the replay, a line
    {"kind": "replay_end", "cursor": C}, then each event as it happens until Ctrl-C.
    Pass the last cursor seen as --since to continue later without a gap.

    \b
    Examples:
      bgtransfer events --no-follow
      bgtransfer --store postgresql://me@db/transfers events --session app --since 1200
    """

    async def go(c: Client) -> int:
        # The stream is closed with the loop (asyncio.run ends its async generators).
        async for line in c.events(session, since):
            click.echo(json.dumps(line, sort_keys=True))
            if not follow and line.get("kind") == "replay_end":
                break
        return 0

    try:
        return run(home_of(ctx), go)
    except KeyboardInterrupt:
        return 0
