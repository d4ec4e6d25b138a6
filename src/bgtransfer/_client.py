"""The client side of the control protocol: talks to (and starts) a home's daemon."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from bgtransfer._daemon._paths import daemon_log, socket_path
from bgtransfer._exceptions import TransferError, error_from_dict

__all__ = ["DaemonClient", "DaemonUnavailable", "spawn_daemon"]

START_TIMEOUT = 20.0


class DaemonUnavailable(TransferError):
    code = "daemon_unavailable"


def spawn_daemon(home: str) -> None:
    """Start ``bgtransfer daemon run`` fully detached: own session, stdio to the log."""
    fd = os.open(daemon_log(home), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgtransfer", "--home", home, "daemon", "run"],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    finally:
        os.close(fd)
    # Reap it if it exits while we live; after we exit, init adopts it.
    threading.Thread(target=proc.wait, daemon=True, name="bgtransfer-reaper").start()


class DaemonClient:
    def __init__(self, home: str) -> None:
        self.home = home
        self.socket = socket_path(home)
        self._http: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _once(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Any:
        async with self._client().request(
            method,
            f"http://bgtransfer{path}",
            json=body,
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                err = data.get("error", {}) if isinstance(data, dict) else {}
                raise error_from_dict(
                    {"code": err.get("code"), "message": err.get("message", f"HTTP {resp.status}")}
                )
            return data

    async def ping(self) -> dict[str, Any] | None:
        try:
            data = await self._once("GET", "/v1/status", timeout=5)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        return data if isinstance(data, dict) else None

    async def ensure_running(self) -> dict[str, Any]:
        status = await self.ping()
        if status is not None:
            return status
        spawn_daemon(self.home)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            status = await self.ping()
            if status is not None:
                return status
        raise DaemonUnavailable(
            f"the bgtransfer daemon for {self.home} did not start within {START_TIMEOUT:.0f} s; "
            f"see {daemon_log(self.home)}"
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float = 60.0,
        start: bool = True,
    ) -> Any:
        """One control call; if the daemon is gone it is started again and the call retried.

        Every call is safe to repeat: submits carry an idempotency key.
        """
        for attempt in range(3):
            try:
                return await self._once(method, path, body=body, params=params, timeout=timeout)
            except (aiohttp.ClientConnectionError, OSError) as exc:
                if not start:
                    raise DaemonUnavailable(
                        f"the bgtransfer daemon is not running ({exc})"
                    ) from exc
                if attempt == 2:
                    raise DaemonUnavailable(f"the bgtransfer daemon keeps failing: {exc}") from exc
                await self.ensure_running()
        raise AssertionError("unreachable")  # pragma: no cover

    async def events(self, session: str, since: int | None) -> AsyncIterator[dict[str, Any]]:
        """Replay then follow the session's events, reconnecting (and restarting the daemon)."""
        cursor = since
        while True:
            params = {"session": session}
            if cursor is not None:
                params["since"] = str(cursor)
            try:
                async with self._client().get(
                    "http://bgtransfer/v1/events",
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
                ) as resp:
                    if resp.status >= 400:
                        data = await resp.json(content_type=None)
                        raise error_from_dict(data.get("error", {}))
                    async for raw in resp.content:
                        line = raw.strip()
                        if not line:
                            continue
                        ev = json.loads(line)
                        if ev.get("cursor") is not None:
                            cursor = int(ev["cursor"])
                        yield ev
            except (aiohttp.ClientError, OSError, TimeoutError):
                await asyncio.sleep(0.2)
                await self.ensure_running()
