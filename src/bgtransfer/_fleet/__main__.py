"""``python -m bgtransfer._fleet``: one fleet worker in the foreground (``bgtransfer --store
URL worker`` runs this).

Logs go to stderr (journald under systemd). SIGTERM or SIGINT stops it cleanly: every task
stops at a checkpoint and goes back to the queue, then the worker leaves the list. Under
systemd ``Type=notify`` it says READY once it claims. Exit codes: 0 stopped on request,
2 bad arguments, 75 (EX_TEMPFAIL: systemd's ``Restart=on-failure`` retries) the store could
not be reached or refused, 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from bgtransfer._exceptions import StoreError

EX_TEMPFAIL = 75

# A stop asked for before the event loop runs (while the engine is imported, or the store
# is reached): honoured as soon as the worker can stop cleanly, not by dying on the spot.
_stop_early: list[int] = []


def _early(signum: int, frame: object) -> None:
    _stop_early.append(signum)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bgtransfer worker", description="Run a fleet worker in the foreground."
    )
    p.add_argument("--store", default=os.environ.get("BGTRANSFER_STORE"))
    p.add_argument("--name", default=None, help="unique per worker (default: host-pid)")
    p.add_argument("--lease", type=float, default=30.0, help="lease seconds (default 30)")
    p.add_argument("--max-active", type=int, default=16, help="tasks at once (default 16)")
    p.add_argument("--max-per-host", type=int, default=6, help="per origin, fleet-wide")
    p.add_argument("--log-level", default=os.environ.get("BGTRANSFER_LOG_LEVEL", "INFO"))
    return p


def _sd_notify(message: str) -> None:
    """Tell systemd (``Type=notify``) how the worker is; nothing without NOTIFY_SOCKET."""
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return
    if where.startswith("@"):
        where = "\0" + where[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), where)


async def _main(args: argparse.Namespace) -> None:
    from bgtransfer._fleet._worker import Worker

    worker = Worker(
        args.store,
        args.name,
        lease_s=args.lease,
        max_active=args.max_active,
        max_per_host=args.max_per_host,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if _stop_early:
        stop.set()
    loop.call_soon(_sd_notify, "READY=1")
    try:
        await worker.run(stop)
    finally:
        _sd_notify("STOPPING=1")


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _early)
    args = _parser().parse_args(argv)
    url: str | None = args.store
    if not url or not url.startswith(("postgresql://", "postgres://")):
        print(
            "bgtransfer worker: needs a PostgreSQL store: --store postgresql://user@host/db "
            "or BGTRANSFER_STORE",
            file=sys.stderr,
        )
        return 2
    if args.lease < 1.5 or args.max_active < 1 or args.max_per_host < 1:
        print("bgtransfer worker: --lease >= 1.5, --max-active and --max-per-host >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(_main(args))
    except StoreError as exc:
        logging.getLogger("bgtransfer.fleet").error("%s", exc.message)
        return EX_TEMPFAIL
    return 0


if __name__ == "__main__":
    sys.exit(main())
