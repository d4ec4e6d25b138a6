"""Forgetting finished transfers: ``rm`` and ``prune`` (the store and ``ls`` must not grow
forever). Files stay where they are; only the records go."""

from __future__ import annotations

import json
from typing import Any

import click

from bgtransfer import InvalidTransition
from bgtransfer._clients import Client
from bgtransfer.cli._app import cli, home_of
from bgtransfer.cli._common import EXIT_STATE, CliError, handled, resolve, run
from bgtransfer.cli._narrate import duration


@cli.command("rm")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="The removed ids as a JSON array.")
@click.pass_context
@handled
def rm(ctx: click.Context, task_ids: tuple[str, ...], as_json: bool) -> int:
    """Forget finished transfers (ids or unique prefixes); their files stay.

    All are checked first: an unknown id (exit 4) or an unfinished transfer (exit 8:
    cancel it first, or wait for it) removes none.

    \b
    Examples:
      bgtransfer rm 3f2a 9c1e
      bgtransfer ls --json | jq -r '.[] | select(.error != null) | .id' | xargs bgtransfer rm
    """

    async def go(c: Client) -> list[str]:
        tasks = [await resolve(c, prefix) for prefix in task_ids]
        busy = [t for t in tasks if t["state"] != "completed"]
        if busy:
            t = busy[0]
            raise CliError(
                f"cannot remove {t['id'][:12]} while it is {t['state']}: cancel it first "
                f"(bgtransfer cancel {t['id'][:12]}) or wait until it completes",
                EXIT_STATE,
            )
        removed = []
        for t in tasks:
            if t["id"] not in removed:
                await c.call("DELETE", f"/v1/tasks/{t['id']}")
                removed.append(t["id"])
        return removed

    try:
        removed = run(home_of(ctx), go)
    except InvalidTransition as exc:  # pragma: no cover - raced with a resume
        raise CliError(exc.message, EXIT_STATE) from None
    _report(removed, as_json)
    return 0


@cli.command()
@click.option(
    "--completed",
    is_flag=True,
    required=True,
    help="Forget completed transfers (succeeded, failed or cancelled). Required.",
)
@click.option(
    "--older-than",
    callback=duration,
    metavar="DURATION",
    default=None,
    help="Only those that finished at least this long ago, e.g. 7d, 12h, 30m.",
)
@click.option("--session", default=None, help="Only this session's transfers.")
@click.option("--json", "as_json", is_flag=True, help="The removed ids as a JSON array.")
@click.pass_context
@handled
def prune(
    ctx: click.Context, completed: bool, older_than: float | None, session: str | None,
    as_json: bool,
) -> int:  # fmt: skip
    """Forget every completed transfer (or those older than --older-than); files stay.

    Running and suspended transfers are never touched.

    \b
    Examples:
      bgtransfer prune --completed
      bgtransfer prune --completed --older-than 7d
    """
    body: dict[str, Any] = {"older_than": older_than, "session": session}
    answer = run(home_of(ctx), lambda c: c.call("POST", "/v1/prune", body=body))
    _report(list(answer["removed"]), as_json)
    return 0


def _report(removed: list[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(removed))
        return
    for task_id in removed:
        click.echo(task_id)
    click.echo(f"removed {len(removed)} finished transfer(s); their files stay", err=True)
