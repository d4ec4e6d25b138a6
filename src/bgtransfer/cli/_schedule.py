"""Scheduling commands: schedule, jobs, unschedule, limit."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click

from bgtransfer._protocol._schedule import PRIORITIES, parse_duration
from bgtransfer._scheduling import local_time
from bgtransfer.cli._app import cli, home_of
from bgtransfer.cli._common import DEFAULT_SESSION, handled, run
from bgtransfer.cli._options import RATE, WHEN, rate_or_off
from bgtransfer.cli._submit import absolute, header_pairs

__all__ = ["jobs", "limit", "schedule", "unschedule"]

# -- jobs --------------------------------------------------------------------------------------


def _every(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every") from None


@cli.command()
@click.argument("url")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False),
    required=True,
    help="The file each run keeps up to date.",
)
@click.option("--every", required=True, help="Period: 90s, 15m, 1h, 1d (at least 1 s).")
@click.option("--start-at", "start_at", type=WHEN, default=None, help="First run (default now).")
@click.option("-H", "--header", "headers", multiple=True, help="'Name: value' (repeat).")
@click.option("--limit-rate", "limit_rate", type=RATE, default=None, help="Cap each run.")
@click.option(
    "--priority",
    type=click.Choice(list(PRIORITIES)),
    default=None,
    help="Queue order of each run: high, normal (default) or low.",
)
@click.option(
    "--session",
    default=DEFAULT_SESSION,
    show_default=True,
    help="Session identifier the job and its runs belong to.",
)
@click.option("--json", "as_json", is_flag=True, help="The job as JSON on stdout.")
@click.pass_context
@handled
def schedule(
    ctx: click.Context,
    url: str,
    output: str,
    every: str,
    start_at: float | None,
    headers: tuple[str, ...],
    limit_rate: int | None,
    priority: str | None,
    session: str,
    as_json: bool,
) -> int:
    """Fetch URL into a file every period, in the daemon (a background fetch job); with
    --store postgresql://... the fleet's workers run it (each run once across them).

    Each run is a conditional GET: 304 leaves the file alone, 200 replaces it atomically.
    After downtime the job runs once to catch up. Prints the job id.

    \b
    Examples:
      bgtransfer schedule http://127.0.0.1:8080/gen/1K -o feed.bin --every 1h
      bgtransfer jobs
      bgtransfer unschedule 3f2a
    """
    period = _every(every)
    body: dict[str, Any] = {
        "session": session,
        "url": url,
        "path": absolute(output),
        "headers": [list(p) for p in header_pairs(headers)],
        "every": period,
    }
    if start_at is not None:
        body["start_at"] = start_at
    if limit_rate is not None:
        body["max_rate"] = limit_rate
    if priority is not None:
        body["priority"] = priority
    job = run(home_of(ctx), lambda c: c.call("POST", "/v1/jobs", body=body))
    if as_json:
        click.echo(json.dumps(job, sort_keys=True))
    else:
        click.echo(job["id"])
        click.echo(f"next run {local_time(job['next_run'])}", err=True)
    return 0


@cli.command()
@click.option("--session", default=None, help="Only this session's jobs.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array on stdout (with runs).")
@click.pass_context
@handled
def jobs(ctx: click.Context, session: str | None, as_json: bool) -> int:
    """List background fetch jobs with their next run and last outcome."""
    params = {"session": session} if session else None
    found = run(home_of(ctx), lambda c: c.call("GET", "/v1/jobs", params=params))
    if as_json:
        click.echo(json.dumps(found, sort_keys=True))
        return 0
    if not found:
        click.echo("no jobs", err=True)
        return 0
    click.echo(f"{'ID':12}  {'EVERY':>8}  {'NEXT RUN':25}  {'LAST':24}  URL -> PATH")
    for j in found:
        last = j["runs"][-1]["outcome"] if j["runs"] else "-"
        click.echo(
            f"{j['id'][:12]}  {j['every']:>7g}s  {local_time(j['next_run']):25}  "
            f"{last[:24]:24}  {j['url']} -> {j['path']}"
        )
    return 0


@cli.command()
@click.argument("job_id")
@click.pass_context
@handled
def unschedule(ctx: click.Context, job_id: str) -> int:
    """Remove a background fetch job (a run in progress finishes; the file stays)."""
    done = run(home_of(ctx), lambda c: c.call("DELETE", f"/v1/jobs/{quote(job_id)}"))
    click.echo(f"unscheduled {done['id']}", err=True)
    return 0


# -- limits ------------------------------------------------------------------------------------


def _human_rate(rate: int | None) -> str:
    if rate is None:
        return "unlimited"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if rate >= size and rate % (size // 1024 or 1) == 0:
            return f"{rate / size:g}{unit}/s"
    return f"{rate}B/s"


@cli.command()
@click.option("--global", "global_rate", default=None, help="Cap all transfers together (4M; off).")
@click.option(
    "--origin",
    "origin",
    nargs=2,
    default=None,
    metavar="URL RATE",
    help="Cap one origin (scheme://host:port), e.g. --origin https://host:443 2M; RATE off.",
)
@click.option("--json", "as_json", is_flag=True, help="The limits as JSON on stdout.")
@click.pass_context
@handled
def limit(
    ctx: click.Context, global_rate: str | None, origin: tuple[str, str] | None, as_json: bool
) -> int:
    """Show or change the daemon's bandwidth caps (kept across restarts; effective at once).

    \b
    Examples:
      bgtransfer limit --global 10M
      bgtransfer limit --origin http://127.0.0.1:8080 2M
      bgtransfer limit --global off
      bgtransfer limit
    """
    home = home_of(ctx)
    out: dict[str, Any] | None = None
    if global_rate is not None:
        body: dict[str, Any] = {"global": rate_or_off(global_rate)}
        out = run(home, lambda c: c.call("POST", "/v1/limits", body=body))
    if origin is not None:
        url, rate = origin
        body2 = {"origin": url, "rate": rate_or_off(rate)}
        out = run(home, lambda c: c.call("POST", "/v1/limits", body=body2))
    if out is None:
        out = run(home, lambda c: c.call("GET", "/v1/limits"))
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
        return 0
    click.echo(f"global: {_human_rate(out['global'])}")
    for o, r in out["origins"].items():
        click.echo(f"{o}: {_human_rate(r)}")
    for o, until in out["cooling"].items():
        click.echo(f"{o}: cooling down until {local_time(until)}")
    return 0
