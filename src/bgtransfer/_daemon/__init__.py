"""The per-user daemon: runs background tasks and serves the control API on a Unix socket."""
