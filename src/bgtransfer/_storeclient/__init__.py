"""Fleet mode's client: the daemon's control protocol answered in this process, straight on
a PostgreSQL store (no local daemon). See ``_client.StoreClient``."""

from __future__ import annotations

from bgtransfer._storeclient._client import CONNECT_TIMEOUT, StoreClient

__all__ = ["CONNECT_TIMEOUT", "StoreClient"]
