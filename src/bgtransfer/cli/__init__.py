"""The ``bgtransfer`` command line. ``main(argv) -> int`` is callable from tests."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from bgtransfer.cli import _remove, _transfer  # noqa: F401 - registers the commands
from bgtransfer.cli._app import cli

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
    return int(result or 0)
