"""The ``bgtransfer`` command line. ``main(argv) -> int`` is callable from tests."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from bgtransfer import DaemonStopped, UnsafeHome
from bgtransfer.cli import (  # noqa: F401 - registers the commands
    _adopt,
    _control,
    _follow,
    _remove,
    _schedule,
    _show,
    _submit,
    _worker,
)
from bgtransfer.cli._app import cli
from bgtransfer.cli._common import EXIT_DAEMON, EXIT_STOPPED

EXIT_USAGE = 64

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="bgtransfer",  # also under `python -m bgtransfer`
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        return 130
    except UnsafeHome as exc:  # from any command: the home (or its socket) is refused
        print(f"bgtransfer: {exc.message}", file=sys.stderr)
        return EXIT_DAEMON
    except DaemonStopped as exc:
        print(f"bgtransfer: {exc.message}", file=sys.stderr)
        return EXIT_STOPPED
    return int(result or 0)
