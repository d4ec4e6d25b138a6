"""Drivers: run the sans-I/O machine against aiohttp, the filesystem and the store."""
