"""Fleet mode's worker runtime: many workers on many hosts share one queue on PostgreSQL.

``python -m bgtransfer._fleet --store postgresql://... [--name N] [--lease S]
[--max-active N]`` runs one in the foreground (``bgtransfer --store URL worker`` execs it).
"""

from __future__ import annotations

from bgtransfer._fleet._worker import Worker

__all__ = ["Worker"]
