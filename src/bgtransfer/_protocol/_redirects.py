"""Redirect policy: which Location to follow and which credentials may go with it."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from bgtransfer._redact import redact

__all__ = ["REDIRECT_STATUS", "SENSITIVE_HEADERS", "origin", "resolve_redirect"]

REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def resolve_redirect(current: str, location: str | None) -> tuple[str | None, str]:
    """Return (absolute target, "") to follow, or (None, reason) to refuse."""
    if not location or not location.strip():
        return None, "redirect without a Location header"
    try:
        target = urljoin(current, location.strip())
        parts = urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None, f"redirect to an unparsable Location {redact(location)!r}"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return None, f"redirect to a non-http(s) URL refused: {redact(target)!r}"
    if not parts.hostname:
        return None, f"redirect to a URL without a host refused: {redact(target)!r}"
    if urlsplit(current).scheme.lower() == "https" and scheme == "http":
        return None, f"redirect from https to http refused (downgrade): {redact(target)!r}"
    return target, ""
