"""Which directory is the home: the one place the API, the CLI and the daemon ask."""

from __future__ import annotations

import os

import platformdirs

from bgtransfer._trust import prepare_home

__all__ = ["resolve_home"]


def resolve_home(home: str | os.PathLike[str] | None = None) -> str:
    """The home directory: argument, else $BGTRANSFER_HOME, else the user state dir.

    Created 0700 if missing; raises :class:`UnsafeHome` if another user owns it or it is
    group- or world-writable (see "Security model" in the README).
    """
    chosen = (
        os.fspath(home)
        if home is not None
        else os.environ.get("BGTRANSFER_HOME") or platformdirs.user_state_dir("bgtransfer")
    )
    path = os.path.abspath(os.path.expanduser(chosen))
    prepare_home(path)
    return path
