"""One send() of an HttpRequest: its task, files and what the response said.

``open()`` after ``send()`` starts a new exchange; the old one's watcher sees that it is no
longer current and stops without touching the request.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import bgtransfer
from bgtransfer.voltmx import _integrity
from bgtransfer.voltmx._formdata import spool_body
from bgtransfer.voltmx._integrity import IntegrityParams

__all__ = ["Exchange", "files_of", "start"]


@dataclass
class Exchange:
    task: bgtransfer.Task
    home: str
    body_file: str | None = None  # the spooled request body (uploads)
    answer_file: str | None = None  # where the whole response body goes (uploads)
    has_body: bool = False  # request.upload events fire
    total: int | None = None
    sent: int = 0
    check: IntegrityParams | None = None  # integrity checking applied to this exchange
    done: threading.Event = field(default_factory=threading.Event)
    # What a followed redirect needs to send the request again (see _redirects).
    method: str = "GET"
    headers: list[tuple[str, str]] = field(default_factory=list)  # as the app set them
    options: dict[str, Any] = field(default_factory=dict)  # timeouts, attempts
    hops: int = 0

    def response_path(self) -> str | None:
        """The file holding the response body, once the exchange completed with one."""
        t = self.task
        path = t.path if t.kind == "download" else self.answer_file
        if path is None or not os.path.isfile(path):
            return None
        if t.kind == "download" and t.error is not None:
            return None
        return path

    def drop_body(self) -> None:
        # The spooled request body is only needed until the upload ends.
        if self.body_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.body_file)


def files_of(task: bgtransfer.Task) -> tuple[str | None, str | None]:
    """(request body, response body) files of an upload made by this port (see net.send)."""
    if task.kind != "upload" or not task.path.endswith(".req"):
        return None, None
    return task.path, task.path[: -len(".req")] + ".body"


def start(
    session: bgtransfer.Session,
    method: str,
    url: str,
    headers: list[tuple[str, str]],
    data: object,
    base: str,
    check: IntegrityParams | None,
    options: dict[str, Any],
    download_path: str | None = None,
) -> Exchange:
    """Submit one send(): a GET is a download into ``download_path`` (or ``base.body``), any
    other method an upload of ``data`` spooled to ``base.req``, its answer into ``base.body``.
    ``headers`` are the ones to send (cookies and integrity included here)."""
    if method == "GET":
        if check is not None:
            headers.append(_integrity.request_header(check, None))
        task = session.download(url, download_path or base + ".body", headers=headers, **options)
        return Exchange(task, session.home)
    body_file = base + ".req"
    try:
        ctype = spool_body(data, body_file)
        if ctype and not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", ctype))
        if check is not None:
            headers.append(_integrity.request_header(check, body_file))
        task = session.upload(
            body_file, url, method=method, headers=headers,
            response_path=base + ".body", **options,
        )  # fmt: skip
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(body_file)  # nothing was sent: no spooled body stays behind
        raise
    size = os.path.getsize(body_file)
    return Exchange(task, session.home, body_file, base + ".body", data is not None, size)
