"""``python -m bgtransfer.testing``: run the fault server in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from bgtransfer.testing._server import FaultServer

USAGE = """\
endpoints:
  /gen/<size>[?seed=S]        deterministic content, size with K/M/G suffix (e.g. /gen/64M)
  /r/<name>                   registered resources (none from the command line)
  /redirect?to=<url>&code=302 redirect, Location copied verbatim
  /loop/<n>                   302 to /loop/<n+1> forever
  /echo                       JSON description of the request; status= reason= type= body=
                              gen=SIZE digest=1|wrong set_cookie= set_cookie2= shape the answer
  /r/<name>.sha256 /r/<dir>/SHA256SUMS /gen/<size>.sha256   checksum files
  /s/r/<name>?... /s/gen/<size>?...   expiring signed URLs (403 when expired or spent)
  /sign?path=/r/<name>&expires_in=S&max_bytes=N&style=amz|token&change=1
                              mint a signed URL: JSON {{"url", "expires"}}
  /metalink/r/<name> /metalink/gen/<size>?mirrors=N&piece=SIZE&liar=I&liar_etag=1
                              Metalink 4 document: mirrors, size, sha-256, piece hashes
fault knobs (query parameters on /gen and /r, combinable):
  times=K                     apply failure knobs only to the first K requests per URL
  cut=N rst=N                 N body bytes then FIN / TCP RST
  stall_headers=S             wait S seconds before the response
  stall_body=N&stall=S        pause S seconds after N body bytes
  status=CODE                 error page; retry_after=V or retry_after_in=S adds Retry-After
  chunked_cut=N               chunked body closed after N bytes without the last chunk
  trickle=B&interval=S rate=R slow bodies (B bytes every S s / R bytes per second)
  ignore_range=1 ignore_if_range=1 wrong_range=K full_as_206=1 range_as_200=1 bad_total=1
  long_length=K
  etag_change=1 no_etag=1 weak_etag=1 no_last_modified=1 no_accept_ranges=1
  chunked=1 gzip=1 huge_headers=N disposition=V changes_every=S
integrity knobs (on /r and /gen; Want-Repr-Digest / Want-Content-Digest also work):
  digest=1 goog_hash=1 amz_checksum=1
  bad_digest=repr|content|goog|amz|all   wrong header, right bytes (limited by times)
  lie=1|etag lie_range=A-B    lying mirror: same length, other bytes (lie=etag: same ETag)
example: curl -r 100-199 -o /dev/null -v '{base}/gen/1M?seed=3&times=1&rst=50'
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bgtransfer.testing",
        description="Fault-injecting HTTP/1.1 test server.",
        epilog=USAGE.format(base="http://127.0.0.1:PORT"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    parser.add_argument(
        "--other-host", action="store_true", help="also listen on 127.0.0.2 (another origin)"
    )
    args = parser.parse_args(argv)
    server = FaultServer(host=args.host, port=args.port, other_host=args.other_host)

    def ready() -> None:
        print(f"serving on {server.base_url}", flush=True)
        if server.other_base_url is not None:
            print(f"other origin on {server.other_base_url}", flush=True)
        print(USAGE.format(base=server.base_url), end="", flush=True)

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await server.serve_forever_async(on_ready=ready)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        # Only reached where signal handlers could not be installed (e.g. Windows).
        pass
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
