"""``bgtransfer --store URL worker``: run a fleet worker in the foreground.

The CLI never imports the engine or the store (the import-linter contract), so this command
replaces itself (``exec``, same pid: what systemd supervises) with ``python -m
bgtransfer._fleet``. The store URL goes to it in ``BGTRANSFER_STORE``, not on its command
line, where ``ps`` would show a password.
"""

from __future__ import annotations

import os
import shlex
import sys

import click

from bgtransfer.cli._app import cli

EXIT_USAGE = 64  # as the other commands (cli.main)

UNIT = """\
[Unit]
Description=bgtransfer fleet worker {name}
Documentation=https://pypi.org/project/bgtransfer/
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
Environment={store}
ExecStart={argv}
Restart=on-failure
RestartSec=2
# Stops at a checkpoint and gives its tasks back: give it the time of one commit or so.
TimeoutStopSec=30
KillSignal=SIGTERM
NoNewPrivileges=yes
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def _store_url(ctx: click.Context, given: str | None) -> str | None:
    """This command's ``--store``, else the global one (or ``$BGTRANSFER_STORE``, which the
    CLI puts there too), else the environment."""
    root = ctx.find_root().obj or {}
    return given or root.get("store") or os.environ.get("BGTRANSFER_STORE")


@cli.command("worker")
@click.option(
    "--store",
    "store",
    metavar="URL",
    default=None,
    help="postgresql://user@host:port/db (default: $BGTRANSFER_STORE).",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=1.5),
    default=30.0,
    show_default=True,
    help="Seconds a claim lasts unless renewed (renewed every third of it).",
)
@click.option("--name", default=None, help="Unique per worker. Default: HOST-PID.")
@click.option(
    "--max-active",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Tasks this worker runs at once.",
)
@click.option(
    "--max-per-host",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Connections per origin, across the whole fleet.",
)
@click.option(
    "--systemd-unit",
    is_flag=True,
    help="Print a systemd unit that runs this worker, instead of running it.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    store: str | None,
    lease: float,
    name: str | None,
    max_active: int,
    max_per_host: int,
    systemd_unit: bool,
) -> int:  # fmt: skip
    """Run a fleet worker in the foreground: claim tasks from a PostgreSQL queue shared
    with other workers, run them, and give them back on SIGTERM or Ctrl-C.

    Logs go to stderr. Exit codes: 0 stopped on request, 64 no PostgreSQL store given,
    75 the store could not be reached (systemd's Restart=on-failure tries again).

    \b
    Examples:
      bgtransfer --store postgresql://bgt@db/bgt worker --name "$(hostname)"
      bgtransfer worker --store postgresql://bgt@db/bgt --systemd-unit > bgtransfer-worker.service
    """
    url = _store_url(ctx, store)
    if not url or not url.startswith(("postgresql://", "postgres://")):
        click.echo(
            "bgtransfer worker: needs a PostgreSQL store: --store postgresql://user@host/db "
            "or BGTRANSFER_STORE",
            err=True,
        )
        return EXIT_USAGE
    argv = [sys.executable, "-m", "bgtransfer._fleet", "--lease", f"{lease:g}",
            "--max-active", str(max_active), "--max-per-host", str(max_per_host)]  # fmt: skip
    if name:
        argv += ["--name", name]
    if systemd_unit:
        unit_argv = argv if name else [*argv, "--name", "%H"]  # %H: the host's name
        # systemd expands % in a unit: a URL's %-escapes must be doubled.
        store_line = f'"BGTRANSFER_STORE={url}"'.replace("%", "%%")
        click.echo(
            UNIT.format(name=name or "%H", store=store_line, argv=shlex.join(unit_argv)),
            nl=False,
        )
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, {**os.environ, "BGTRANSFER_STORE": url})
