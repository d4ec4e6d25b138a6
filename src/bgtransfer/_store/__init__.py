"""Durable task storage. The engine, the daemon and the session see only the
:class:`~bgtransfer._store._base.Store` protocol; ``_sqlite`` is the embedded backend."""
