"""The origin of a URL as one key: what per-origin limits and cool-downs are counted on."""

from __future__ import annotations

from bgtransfer._protocol._redirects import origin

__all__ = ["origin_key"]


def origin_key(url: str) -> str:
    """``scheme://host:port`` with the default port spelled out and names lower-cased, so
    ``http://A`` and ``http://a:80/x`` are one origin (RFC 6454), ``https://a`` another."""
    scheme, host, port = origin(url)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
