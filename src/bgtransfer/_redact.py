"""Passwords in URLs (``http://user:pass@host/``) never reach a screen, a log or JSON output."""

from __future__ import annotations

import re

__all__ = ["redact"]

# The userinfo of every URL in a text: greedy up to the last "@" before the path, as
# urlsplit reads a netloc (a password may contain a raw "@").
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/?#\s]*)@")


def _mask(match: re.Match[str]) -> str:
    user, sep, _password = match.group(2).partition(":")
    return f"{match.group(1)}{user}{':***' if sep else ''}@"


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _USERINFO.sub(_mask, text) if "@" in text else text
