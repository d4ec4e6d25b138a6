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
from bgtransfer.voltmx._integrity import IntegrityParams

__all__ = ["Exchange", "files_of"]


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
