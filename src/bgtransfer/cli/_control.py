"""Control commands: suspend, resume and cancel a transfer; serve-test runs the test server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from bgtransfer._clients import Client
from bgtransfer.cli._app import cli, home_of
from bgtransfer.cli._common import handled, resolve, run

__all__ = ["serve_test"]


# The states a task may be in once the verb took effect.
_DONE_IN = {
    "suspend": ("suspended", "canceling", "completed"),
    "resume": ("running", "canceling", "completed"),
    "cancel": ("canceling", "completed"),
}


def _control(verb: str, past: str) -> Callable[..., int]:
    @click.argument("task_id")
    @click.pass_context
    @handled
    def command(ctx: click.Context, task_id: str) -> int:
        async def go(c: Client) -> dict[str, Any]:
            task = await resolve(c, task_id)
            return dict(await c.call("POST", f"/v1/tasks/{task['id']}/{verb}"))

        task = run(home_of(ctx), go)
        short = task["id"][:12]
        if task["state"] not in _DONE_IN[verb]:
            # Fleet mode: a worker holds the task and has not applied it yet; it will.
            click.echo(
                f"asked the worker running {short} to {verb} it ({task['detail']})", err=True
            )
            return 0
        click.echo(f"{past} {short} ({task['state']}: {task['detail']})", err=True)
        return 0

    command.__doc__ = {
        "suspend": "Suspend a transfer: the connection closes, the bytes are kept.",
        "resume": "Resume a suspended transfer from where it stopped (or afresh if it must).",
        "cancel": "Cancel a transfer and remove its partial file.",
    }[verb] + f"\n\n    \b\n    Example:\n      bgtransfer {verb} 3f2a   # an id or a unique prefix"
    return command


for _verb, _past in (("suspend", "suspended"), ("resume", "resumed"), ("cancel", "cancelled")):
    cli.command(_verb)(_control(_verb, _past))


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
