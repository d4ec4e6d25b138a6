"""``bgtransfer adopt PARTIAL``: resume a partial file from the record written beside it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import click

from bgtransfer._redact import redact
from bgtransfer._tasks import adoption, body_of, build_row
from bgtransfer.cli._app import cli, home_of
from bgtransfer.cli._common import DEFAULT_SESSION, daemon_errors, fancy, handled, public, run
from bgtransfer.cli._follow import detached, finish, follow
from bgtransfer.cli._submit import absolute, header_pairs, refresh_argv

__all__ = ["adopt"]


@cli.command()
@click.argument("partial", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    default=None,
    help="The finished file, in the partial's directory (default: the name its record gives).",
)
@click.option(
    "--url",
    default=None,
    help="Fetch the rest from this URL instead of the recorded one (e.g. a fresh signed URL "
    "of the same file; the recorded validator still decides whether the bytes are kept).",
)
@click.option("-H", "--header", "headers", multiple=True, help="'Name: value' (repeat).")
@click.option(
    "--refresh-cmd",
    default=None,
    help="Command that prints a new URL when this one expires (as for get; a record never "
    "names a command, so it is given here again).",
)
@click.option(
    "--sha256", default=None, help="Expected SHA-256 (default: the one the record carries)."
)
@click.option(
    "--segments",
    type=click.IntRange(1, 16),
    default=None,
    help="Connections (default: the record's unfinished segments, else 1).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing target.")
@click.option(
    "--session", default=DEFAULT_SESSION, show_default=True, help="Session of the new task."
)
@click.option("--no-wait", is_flag=True, help="Print the task id and return at once.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_context
@handled
def adopt(ctx: click.Context, partial: str, output: str | None, url: str | None,
          headers: tuple[str, ...], refresh_cmd: str | None, sha256: str | None,
          segments: int | None, overwrite: bool, session: str, no_wait: bool,
          as_json: bool) -> int:  # fmt: skip
    """Resume PARTIAL, a download's partial file, from the record beside it.

    The record (an extended attribute of the file, or PARTIAL.bgtransfer.json) says where
    the file comes from and how far its bytes are durable, so the file can be resumed from
    a new home or on another machine that mounts the same volume. Only the missing bytes
    are fetched (Range + If-Range); a resource that changed since starts over cleanly.

    \b
    Examples:
      bgtransfer adopt /data/.big.iso.8f03c2d1aa01.bgtransfer-part
      bgtransfer adopt /mnt/shared/big.iso.part -o /mnt/shared/big.iso --url 'https://...'
    """
    home = home_of(ctx)
    with daemon_errors():
        found = adoption(
            absolute(partial),
            None if output is None else absolute(output),
            url=url,
            sha256=sha256,
            segments=segments,
        )
        given: dict[str, Any] = {**found["options"], "overwrite": overwrite}
        if refresh_cmd is not None:
            given["refresh"] = refresh_argv(refresh_cmd)
        row = build_row(
            session,
            found["url"],
            found["path"],
            background=True,
            headers=header_pairs(headers),
            idempotency_key=uuid.uuid4().hex,
            **given,
        )
    if found["clipped"] is not None:
        click.echo(f"bgtransfer: {found['clipped']}", err=True)
    click.echo(
        f"adopting {found['partial']}: {found['offset']} bytes vouched for by its record; "
        f"resuming {redact(row.spec.url)}",
        err=True,
    )
    body = body_of(row).to_json()
    task: dict[str, Any] = run(home, lambda c: c.call("POST", "/v1/tasks", body=body))
    if no_wait:
        click.echo(json.dumps(public(task), sort_keys=True) if as_json else task["id"])
        return 0
    try:
        final = follow(home, task, show_bar=fancy() and not as_json)
    except KeyboardInterrupt:
        return detached(task)
    return finish(final, as_json)
