"""``/redirect``, ``/loop/<n>`` and ``/echo``: small endpoints for client-behaviour tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from bgtransfer.testing._data import gen_bytes, parse_size
from bgtransfer.testing._http import DIGITS, HttpError, Request, send_simple

TEXT_SAFE = re.compile(r"^[\t\x20-\x7e]*$")


def echo_answer(
    q: Mapping[str, str], payload: dict[str, object]
) -> tuple[int, str | None, bytes, list[tuple[str, str]]]:
    """What ``/echo`` answers: the request as JSON, or what its knobs ask for."""
    status_text = q.get("status", "200")
    if not DIGITS.match(status_text) or not 200 <= int(status_text) <= 599:
        raise HttpError(400, "status must be 200..599")
    headers = [("Content-Type", q.get("type", "application/json"))]
    for knob, name in (("set_cookie", "Set-Cookie"), ("set_cookie2", "Set-Cookie2")):
        if knob in q:
            headers.append((name, q[knob]))
    for value in (q.get("reason"), *(v for _, v in headers)):
        if value is not None and not TEXT_SAFE.match(value):
            raise HttpError(400, "echo knobs must be printable ASCII")
    if "gen" in q:
        try:
            size = parse_size(q["gen"])
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        if size > 64 << 20:
            raise HttpError(400, "gen is at most 64M")
        body = gen_bytes(size, 0)
    else:
        body = q["body"].encode() if "body" in q else json.dumps(payload, indent=1).encode()
    if "digest" in q:
        of = body if q["digest"] == "1" else body + b"tampered"
        digest = base64.b64encode(hashlib.sha256(of).digest()).decode()
        headers.append(("Repr-Digest", f"sha-256=:{digest}:"))
    return int(status_text), q.get("reason"), body, headers


async def serve_redirect(writer: asyncio.StreamWriter, req: Request, keep: bool) -> bool:
    to = req.query.get("to")
    if to is None:
        raise HttpError(400, "redirect needs ?to=<url>")
    if "\r" in to or "\n" in to:
        raise HttpError(400, "redirect target must not contain line breaks")
    code_text = req.query.get("code", "302")
    if not DIGITS.match(code_text) or not 300 <= int(code_text) <= 399:
        raise HttpError(400, "redirect code must be 300..399")
    await send_simple(
        writer,
        int(code_text),
        b"",
        [("Location", to)],
        keep=keep,
        head_only=req.method == "HEAD",
    )
    return keep


async def serve_loop(writer: asyncio.StreamWriter, req: Request, keep: bool) -> bool:
    n_text = req.path[len("/loop/") :]
    if not DIGITS.match(n_text):
        raise HttpError(404, "loop index must be a number")
    split = urlsplit(req.target)
    location = f"/loop/{int(n_text) + 1}" + (f"?{split.query}" if split.query else "")
    await send_simple(
        writer, 302, b"", [("Location", location)], keep=keep, head_only=req.method == "HEAD"
    )
    return keep


async def serve_echo(
    writer: asyncio.StreamWriter, req: Request, keep: bool, body_length: int
) -> bool:
    payload = {
        "method": req.method,
        "target": req.target,
        "path": req.path,
        "query": req.query,
        "headers": req.headers,
        "host": req.host,
        "body_length": body_length,
    }
    status, reason, body, hdrs = echo_answer(req.query, payload)
    await send_simple(
        writer, status, body, hdrs, keep=keep, head_only=req.method == "HEAD", reason=reason
    )
    return keep
