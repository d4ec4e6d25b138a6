"""Fleet mode's worker runtime: many workers on many hosts share one queue on PostgreSQL.

``python -m bgtransfer._fleet --store postgresql://... [--name N] [--lease S]
[--max-active N]`` runs one in the foreground (``bgtransfer --store URL worker`` execs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bgtransfer._fleet._worker import Worker

__all__ = ["Worker"]


def __getattr__(name: str) -> Any:
    # Lazy: `python -m bgtransfer._fleet` imports this package first, and a SIGTERM that
    # comes while the engine is being imported must already find the worker's handler.
    if name == "Worker":
        from bgtransfer._fleet._worker import Worker

        return Worker
    raise AttributeError(name)
