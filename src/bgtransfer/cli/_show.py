"""Reading transfers: ls (a table or JSON) and show (one transfer with its history)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from bgtransfer._clients import Client
from bgtransfer.cli._app import cli, daemon_status, home_of, store_of
from bgtransfer.cli._common import (
    EXIT_INVALID,
    fail,
    fancy,
    handled,
    human,
    percent,
    public,
    resolve,
    run,
)
from bgtransfer.cli._narrate import iso_time, local_time

__all__ = ["ls", "print_table", "show", "status", "table_rows"]


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
@handled
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
            return fail("--offset does not combine with --state, --since, --after", EXIT_INVALID)
        del params["offset"]
        params["state"] = ",".join(states)
        if since is not None:
            params["since"] = repr(since)
        if after is not None:
            params["after"] = after
    tasks = run(home_of(ctx), lambda c: c.call("GET", "/v1/tasks", params=params))
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


Lines = list[tuple[str, Any]]


def _options_lines(task: dict[str, Any]) -> Lines:
    """The public fields, then what was asked for and what the server said."""
    internal = task.get("internal", {})
    spec = internal.get("spec", {})
    dates = ("created_at", "finished_at")
    lines: Lines = [(k, local_time(task[k]) if k in dates else task[k]) for k in public(task)]
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
    return lines


def _with_segments(task: dict[str, Any], lines: Lines) -> Lines:
    """A finished download says how many connections it really used (the server may have
    refused ranges: then one); an unfinished segmented one, how many segments are done."""
    used = task.get("internal", {}).get("segments") or []
    if task.get("kind", "download") == "download" and task["state"] == "completed":
        asked = task["segments"]
        note = (
            f" (asked for {asked}: the server did not allow ranges)"
            if asked > 1 and not used
            else ""
        )
        return [(k, f"{len(used) or 1}{note}" if k == "segments" else v) for k, v in lines]
    if used:
        done = sum(1 for _, pos, end in used if pos >= end)
        return [*lines, ("segment progress", f"{done} of {len(used)} complete")]
    return lines


def _attempt_line(a: dict[str, Any]) -> str:
    start = "-" if a["range_start"] is None else f"bytes={a['range_start']}-"
    return (
        f"  #{a['n']:<3} {a['status'] or '---'} {start:<18} {human(a['bytes']):>10}  "
        f"{a['outcome']}  {a['url']}"
    )


@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
@handled
def show(ctx: click.Context, task_id: str, as_json: bool) -> int:
    """Everything about one transfer (id or unique prefix), with the history of its requests.

    \b
    Examples:
      bgtransfer show 3f2a
      bgtransfer show 3f2a --json | jq '.history[] | [.status, .outcome]'
    """

    async def go(c: Client) -> dict[str, Any]:
        task = await resolve(c, task_id)
        task["history"] = await c.call("GET", f"/v1/tasks/{task['id']}/attempts")
        return task

    task = run(home_of(ctx), go)
    history = task.pop("history")
    if as_json:
        click.echo(json.dumps({**public(task), "history": history}, sort_keys=True))
        return 0
    for k, v in _with_segments(task, _options_lines(task)):
        click.echo(f"{k:>20}: {v}")
    click.echo("history:")
    for a in history:
        click.echo(_attempt_line(a))
    return 0


def _ago(worker: dict[str, Any]) -> str:
    return f"{worker['seen_ago']:.1f} s ago"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
@handled
def status(ctx: click.Context, as_json: bool) -> int:
    """The fleet (with --store postgresql://...): its workers (name, host, pid, state, last
    heartbeat, tasks held), the queue depth and task counts. A worker not heard of within
    its lease is "stale" (dead, paused or cut off); one gone for a day leaves the list.
    Without a PostgreSQL store: the home's daemon, as `daemon status`.

    Exit 0 when the store answers, 6 when it cannot be reached.

    \b
    Examples:
      bgtransfer --store postgresql://me@db:5432/transfers status
      bgtransfer --store postgresql://me@db:5432/transfers status --json | jq .queue_depth
    """
    if store_of(ctx) is None:
        return int(ctx.invoke(daemon_status, as_json=as_json))
    info = run("", lambda c: c.call("GET", "/v1/status"))
    if as_json:
        for w in info["workers"]:
            w["started_at"], w["last_seen"] = iso_time(w["started_at"]), iso_time(w["last_seen"])
        click.echo(json.dumps(info, sort_keys=True))
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in sorted(info["tasks"].items())) or "none"
    click.echo(f"store {info['store']} (schema {info['schema_version']})")
    click.echo(f"queue: {info['queue_depth']} waiting for a worker; tasks: {counts}")
    workers = info["workers"]
    click.echo(f"workers: {len(workers)}")
    rows = [
        (
            w["name"],
            w["host"],
            str(w["pid"]),
            w.get("state", "alive"),
            _ago(w),
            str(w["tasks_held"]),
        )
        for w in workers
    ]
    if rows:
        head = ("name", "host", "pid", "state", "last heartbeat", "tasks held")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            click.echo("  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip())
    return 0
