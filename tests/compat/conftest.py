"""The daemon tests' check that no test leaves a daemon running applies here too."""

from tests.daemon.conftest import no_daemon_left

__all__ = ["no_daemon_left"]
