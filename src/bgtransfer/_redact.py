"""Passwords in URLs (``http://user:pass@host/``) and the signatures of signed URLs never reach
a screen, a log or JSON output."""

from __future__ import annotations

import re

__all__ = ["redact"]

# The userinfo of every URL in a text: greedy up to the last "@" before the path, as
# urlsplit reads a netloc (a password may contain a raw "@").
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/?#\s]*)@")


def _mask(match: re.Match[str]) -> str:
    user, sep, _password = match.group(2).partition(":")
    return f"{match.group(1)}{user}{':***' if sep else ''}@"


# The signature, credential and token of a signed URL's query (S3, GCS, CloudFront, Azure
# SAS...) are bearer secrets until the URL expires (issue 17; the list of
# _protocol/_signed.redact_signature).
_SIGNED = re.compile(
    r"(?i)([?&](?:x-amz-signature|x-amz-security-token|x-amz-credential|x-goog-signature|"
    r"x-goog-credential|signature|sig|policy|key-pair-id|googleaccessid|awsaccesskeyid|"
    r"token)=)[^&#\s\"'<>]+"
)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it, and the signature of a signed URL's
    query, replaced by ``***``."""
    if "@" in text:
        text = _USERINFO.sub(_mask, text)
    return _SIGNED.sub(r"\1***", text) if "=" in text else text
