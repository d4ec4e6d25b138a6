"""The sans-I/O core: pure decisions about one transfer.

Nothing in this package touches a socket, a file, a clock or a random source; callers pass
those facts in (``now``, ``wall_time``, a jitter draw). That keeps every rule here testable by
plain function calls and property tests.
"""
