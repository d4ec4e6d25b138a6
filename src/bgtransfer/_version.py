"""The version, in one place: the installed package's metadata (pyproject's ``version``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["USER_AGENT", "__version__"]


def _version() -> str:
    try:
        return version("bgtransfer")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _version()
# What the engine sends as User-Agent.
USER_AGENT = f"bgtransfer/{__version__}"
