"""The defaults of a transfer, in one place: every layer that offers them imports them here.

The values a caller does not give (the public API, the CLI, the daemon's task body) must be
the ones the machine assumes, or a task resubmitted by another face would behave differently.
"""

from __future__ import annotations

__all__ = [
    "CHECKPOINT_BYTES",
    "CHECKPOINT_SECONDS",
    "CHUNK_SIZE",
    "DEFAULT_LOW_SPEED_LIMIT",
    "DEFAULT_LOW_SPEED_TIME",
    "MAX_REDIRECTS",
    "MAX_RESTARTS",
    "MAX_RETRY_WAIT",
    "MAX_SLOW_ATTEMPTS",
    "REQUEST_TIMEOUT",
    "RESOURCE_TIMEOUT",
    "RETRY_WAIT",
    "STREAM_CHECKPOINT_BYTES",
]

# NSURLSession's timeoutIntervalForRequest / timeoutIntervalForResource defaults.
REQUEST_TIMEOUT = 60.0  # seconds without a byte before an attempt is abandoned
RESOURCE_TIMEOUT = 7 * 86400.0  # active seconds a task may take in all
RETRY_WAIT = 1.0  # the first backoff step, seconds
MAX_RETRY_WAIT = 120.0  # the backoff's cap, seconds
MAX_REDIRECTS = 10
MAX_RESTARTS = 5
CHUNK_SIZE = 8 << 20  # uploads: bytes per tus/IETF append request
# The default low-speed rule (curl's --speed-limit / --speed-time, which curl leaves off): an
# attempt slower than this for that long is aborted and retried. A server that trickles a
# byte every few seconds keeps the idle timer (request_timeout) alive forever; this does not.
DEFAULT_LOW_SPEED_LIMIT = 100  # bytes per second
DEFAULT_LOW_SPEED_TIME = 120.0  # seconds
# Attempts in a row ended by the low-speed rule before the task fails and frees its slot for
# good (bytes trickled during a slow attempt do not reset the backoff either).
MAX_SLOW_ATTEMPTS = 5

# A segmented download's crash loses at most CHECKPOINT_BYTES plus one read per connection
# plus what was in the sockets (its file has holes, so no bytes past a checkpoint are kept).
CHECKPOINT_BYTES = 2 << 20
CHECKPOINT_SECONDS = 1.0
# A download on one connection checkpoints less often: after a crash of the process (not of
# the machine: see Snapshot.boot_id) the engine keeps the bytes already in the partial file,
# so this bounds only what a power loss costs, and each checkpoint is an fdatasync that
# stalls the stream (~1 s per 2 GiB at 2 MiB).
STREAM_CHECKPOINT_BYTES = 32 << 20
