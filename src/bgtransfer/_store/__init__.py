"""Durable task storage. The engine sees only the :class:`Store` protocol."""
