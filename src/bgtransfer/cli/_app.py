"""Commands. Output for machines (``--json``) goes to stdout; messages go to stderr."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import click

from bgtransfer import DaemonStopped, InvalidRequest, resolve_home
from bgtransfer._client import DaemonClient, DaemonUnavailable
from bgtransfer._daemon._lock import lock_holder
from bgtransfer._daemon._paths import socket_path
from bgtransfer._home import STORE_ENV, StoreChoice, resolve_store

EXIT_OK = 0
EXIT_NOT_RUNNING = 3
EXIT_DAEMON = 6
EXIT_HOME = 6


class HomeError(click.ClickException):
    """The home cannot be used (a file, not writable): one line and exit 6, no traceback."""

    exit_code = EXIT_HOME

    def show(self, file: Any = None) -> None:
        click.echo(f"bgtransfer: {self.message}", err=True)


def home_of(ctx: click.Context) -> str:
    wanted = ctx.find_root().obj.get("home")
    try:
        home = resolve_home(wanted)
    except OSError as exc:
        where = exc.filename or wanted or os.environ.get("BGTRANSFER_HOME") or "the home"
        raise HomeError(
            f"cannot use {where} as the bgtransfer home: {exc.strerror or exc}"
        ) from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise HomeError(f"cannot use {home} as the bgtransfer home: it is not writable")
    return home


_home = home_of


def _lock_free(home: str) -> bool:
    return lock_holder(home) is None


async def _with_client(home: str, fn: Any) -> Any:
    client = DaemonClient(home)
    try:
        return await fn(client)
    finally:
        await client.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    package_name="bgtransfer", prog_name="bgtransfer", message="%(prog)s %(version)s"
)
@click.option(
    "--home",
    metavar="DIR",
    default=None,
    help="Home directory (store, daemon socket and log). Default: $BGTRANSFER_HOME, "
    "else the user state directory.",
)
@click.option(
    "--store",
    metavar="URL",
    default=None,
    help="Where the tasks are kept: postgresql://user@host:port/db (fleet mode: no local "
    "daemon, a fleet of workers runs them) or sqlite:///HOME (a home's own store). "
    f"Default: ${STORE_ENV}, else the home's store.",
)
@click.pass_context
def cli(ctx: click.Context, home: str | None, store: str | None) -> None:
    """Durable background HTTP transfers that survive exits, crashes and restarts.

    Transfers run in a per-home daemon (started on demand) and resume from their last
    checkpoint after any interruption. Exit codes: 0 ok, 1 transfer failed, 2 timed out,
    3 daemon not running, 4 unknown or ambiguous id, 5 invalid request, 6 daemon or task
    store unavailable, or home unusable or refused, 8 not possible in the task's state
    (e.g. resume a completed task), 9 suspended by the daemon (e.g. disk full), 64 usage
    error, 75 the daemon was stopped while the command waited, 130 detached with Ctrl-C.

    \b
    Examples:
      bgtransfer get http://127.0.0.1:8080/big.iso
      bgtransfer add http://127.0.0.1:8080/big.iso -o big.iso
      bgtransfer ls
      bgtransfer wait 3f2a
      bgtransfer daemon status --json
      bgtransfer --store postgresql://me@db:5432/transfers status
    """
    ctx.ensure_object(dict)
    ctx.obj["home"] = home
    choose_store(ctx, store)


def choose_store(ctx: click.Context, store: str | None) -> None:
    """Put the chosen store on the context: ``obj["store"]`` its URL (None: the home's own
    store), ``obj["store_choice"]`` what it names. A bad URL is a usage error (exit 64)."""
    try:
        choice = resolve_store(store)
    except InvalidRequest as exc:
        where = "--store" if store is not None else f"${STORE_ENV}"
        raise click.UsageError(f"{where}: {exc.message}") from None
    home = ctx.obj.get("home")
    if choice is not None and choice.home is not None:
        if home is None:
            ctx.obj["home"] = choice.home
        elif store is not None and os.path.abspath(home) != choice.home:
            raise click.UsageError(f"--home {home} and --store {choice.shown} name two homes")
    ctx.obj["store"] = None if choice is None else choice.url
    ctx.obj["store_choice"] = choice


def store_of(ctx: click.Context) -> StoreChoice | None:
    """The PostgreSQL store the command works on (fleet mode), or None (the home's)."""
    choice = (ctx.find_root().obj or {}).get("store_choice")
    return choice if isinstance(choice, StoreChoice) and choice.fleet else None


@cli.group()
def daemon() -> None:
    """Run and manage the per-home daemon that carries background transfers.

    \b
    Examples:
      bgtransfer daemon start
      bgtransfer daemon status --json
      bgtransfer daemon stop
      bgtransfer daemon install && systemctl --user enable --now bgtransfer.service
    """


@daemon.command("run")
@click.pass_context
def daemon_run(ctx: click.Context) -> int:
    """Run the daemon in the foreground (for systemd and debugging) until SIGTERM."""
    from bgtransfer._daemon._server import main as run_daemon

    return run_daemon(_home(ctx))


@daemon.command("start")
@click.pass_context
def daemon_start(ctx: click.Context) -> int:
    """Start the daemon in the background unless it already runs."""
    home = _home(ctx)
    was_running = not _lock_free(home)
    try:
        status = asyncio.run(_with_client(home, lambda c: c.ensure_running()))
    except DaemonUnavailable as exc:
        click.echo(f"bgtransfer: {exc.message}", err=True)
        return EXIT_DAEMON
    word = "already running" if was_running else "started"
    click.echo(f"daemon {word} (pid {status['pid']}, socket {status['socket']})", err=True)
    return EXIT_OK


@daemon.command("stop")
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for it to exit.",
)
@click.pass_context
def daemon_stop(ctx: click.Context, timeout: float) -> int:
    """Stop the daemon gracefully: every transfer is checkpointed and resumes on next start.

    Commands waiting on it (wait, get, watch) end with exit status 75 and do not start it
    again; the next command that needs the daemon does.
    """
    home = _home(ctx)
    if _lock_free(home):
        click.echo("daemon is not running", err=True)
        return EXIT_OK
    try:
        asyncio.run(
            _with_client(home, lambda c: c.call("POST", "/v1/shutdown", start=False, timeout=5))
        )
    except (DaemonUnavailable, DaemonStopped):
        pass  # not answering, or already stopping: the lock says when it is gone
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _lock_free(home):
            click.echo("daemon stopped", err=True)
            return EXIT_OK
        time.sleep(0.05)
    click.echo(f"bgtransfer: the daemon did not stop within {timeout:g} s", err=True)
    return 1


@daemon.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_context
def daemon_status(ctx: click.Context, as_json: bool) -> int:
    """Show whether the daemon runs, its pid and socket, and task counts by state.

    Exit status 0 when it runs, 3 when it does not, 6 when it holds its lock but does not
    answer (stopped?).
    """
    home = _home(ctx)
    status = None
    if not _lock_free(home):
        try:
            status = asyncio.run(_with_client(home, lambda c: c.ping()))
        except DaemonUnavailable as exc:  # it holds the lock but is stopped (SIGSTOP)
            click.echo(f"bgtransfer: {exc.message}", err=True)
            return EXIT_DAEMON
    if status is None:
        status = {"running": False, "pid": None, "socket": socket_path(home), "home": home}
    if as_json:
        click.echo(json.dumps(status, sort_keys=True))
    elif status["running"]:
        counts = ", ".join(f"{k} {v}" for k, v in status["tasks"].items())
        click.echo(f"running, pid {status['pid']}, socket {status['socket']}\ntasks: {counts}")
    else:
        click.echo(f"not running (home {home})")
    return EXIT_OK if status["running"] else EXIT_NOT_RUNNING


UNIT = """\
[Unit]
Description=bgtransfer daemon: durable background HTTP transfers for {home}
Documentation=https://pypi.org/project/bgtransfer/

[Service]
Type=simple
ExecStart={python} -m bgtransfer --home {home} daemon run
ExecStop={python} -m bgtransfer --home {home} daemon stop
Restart=on-failure
RestartSec=2
NoNewPrivileges=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
UMask=0077

[Install]
WantedBy=default.target
"""


@daemon.command("install")
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write the unit. Default: ~/.config/systemd/user.",
)
@click.option(
    "--name", default="bgtransfer.service", show_default=True, help="The unit's file name."
)
@click.pass_context
def daemon_install(ctx: click.Context, unit_dir: str | None, name: str) -> int:
    """Write a systemd user unit that runs this home's daemon at login.

    \b
    Then: systemctl --user daemon-reload
          systemctl --user enable --now bgtransfer.service
    """
    import sys

    home = _home(ctx)
    directory = unit_dir or os.path.expanduser("~/.config/systemd/user")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(UNIT.format(home=home, python=sys.executable))
    click.echo(path)
    click.echo(
        f"enable with: systemctl --user daemon-reload && systemctl --user enable --now {name}",
        err=True,
    )
    return EXIT_OK
