"""tus-node-server (npm ``@tus/server`` with ``@tus/file-store``), the tus project's own
server, on 127.0.0.1 for the interop tests.

The packages are installed once per machine with ``npm install`` into a cache directory keyed
by their versions (``$BGTRANSFER_TUS_NODE_DIR``, else ``/var/cache/bgtransfer-tests`` under
root, else ``~/.cache/bgtransfer-tests``), under a lock file so that concurrent test runs
install it once. Each server is a small Node.js script in a temporary directory, run as an
unprivileged user (``nobody`` under root), listening on a port the kernel picks; it logs
every request as one JSON line (method, URL, the tus headers, the status and Upload-Offset
it answered) and stores uploads as files (``FileStore``), which the tests read back.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from bgtransfer.testing._postgres import NOBODY, as_server_user
from bgtransfer.testing._thirdparty import end_process, server_dir

__all__ = ["TUS_PACKAGES", "TusNode", "install_tus_node", "tus_node_dir", "tus_node_missing"]

# Pinned: the tests assert what this version does (no checksum extension, termination on).
TUS_PACKAGES = ("@tus/server@2.4.5", "@tus/file-store@2.1.1")
MIN_NODE = (20, 19)  # @tus/server 2.x's engines field

# Loads the packages from the cache by absolute path (the script lives elsewhere), serves
# /files/, and logs each request when its response is done. srvx writes the response head
# with writeHead(status, reason, rawHeaders): wrapped to see what was answered.
SCRIPT = r"""
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [modules, storeDir, logPath] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(path.join(modules, p)).href);
const { Server } = await load('@tus/server/dist/index.js');
const { FileStore } = await load('@tus/file-store/dist/index.js');
const tus = new Server({ path: '/files', datastore: new FileStore({ directory: storeDir }) });
const log = fs.openSync(logPath, 'a');
const WANT = ['upload-offset', 'upload-length', 'upload-checksum', 'content-length',
              'tus-resumable', 'upload-metadata'];
const KEEP = new Set(['upload-offset', 'upload-length', 'location', 'tus-extension',
                      'tus-checksum-algorithm', 'tus-version']);

function answered(args) {
  const out = {};
  const raw = args.find((a) => typeof a === 'object' && a !== null);
  if (!raw) return out;
  let pairs = Array.isArray(raw) ? raw : Object.entries(raw);
  if (Array.isArray(raw) && raw.length && !Array.isArray(raw[0])) {
    pairs = [];
    for (let i = 0; i + 1 < raw.length; i += 2) pairs.push([raw[i], raw[i + 1]]);
  }
  for (const [k, v] of pairs) {
    const name = String(k).toLowerCase();
    if (KEEP.has(name)) out[name] = String(v);
  }
  return out;
}

const server = http.createServer((req, res) => {
  const entry = { m: req.method, u: req.url, h: {}, s: 0, a: {} };
  for (const k of WANT) if (req.headers[k] !== undefined) entry.h[k] = req.headers[k];
  const writeHead = res.writeHead;
  res.writeHead = function (status, ...rest) {
    entry.s = status;
    entry.a = answered(rest);
    return writeHead.call(this, status, ...rest);
  };
  res.on('close', () => {
    if (!entry.s) entry.s = res.statusCode;
    fs.writeSync(log, JSON.stringify(entry) + '\n');
  });
  tus.handle(req, res);
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
"""


def _node_version() -> tuple[int, int] | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"v(\d+)\.(\d+)", out.stdout.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def tus_node_missing() -> str | None:
    """Why the tus server cannot run here (None: it can, once installed)."""
    version = _node_version()
    if version is None:
        return "Node.js is not installed (node)"
    if version < MIN_NODE:
        return f"@tus/server needs Node.js >= {MIN_NODE[0]}.{MIN_NODE[1]}, not {version}"
    if shutil.which("npm") is None:
        return "npm is not installed"
    return None


def tus_node_dir() -> Path:
    """Where the pinned packages are (or will be) installed."""
    env = os.environ.get("BGTRANSFER_TUS_NODE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        # Not under /root: the server runs as nobody and must read the packages.
        base = Path("/var/cache/bgtransfer-tests")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bgtransfer-tests"
    key = "-".join(p.lstrip("@").replace("/", "-").replace("@", "-") for p in TUS_PACKAGES)
    return base / key


def _installed(target: Path) -> bool:
    return (target / ".installed").is_file()


def install_tus_node(timeout: float = 100.0) -> Path:
    """Install the pinned packages once (a lock serialises concurrent runs); returns the
    directory holding ``node_modules``. Raises RuntimeError when npm fails."""
    target = tus_node_dir()
    if _installed(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with open(target.parent / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed(target):  # another run did it while we waited
            return target
        shutil.rmtree(target, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tus-node-", dir=target.parent))
        try:
            (tmp / "package.json").write_text('{"private": true}\n')
            r = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts",
                 "--loglevel=error", *TUS_PACKAGES],
                cwd=tmp, capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(f"npm install {' '.join(TUS_PACKAGES)} failed: {r.stderr}")
            (tmp / ".installed").write_text(" ".join(TUS_PACKAGES) + "\n")
            tmp.chmod(0o755)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class TusNode:
    """One tus server: ``url`` is its creation endpoint (``/files/``)."""

    def __init__(self, modules: Path) -> None:
        self.modules = modules / "node_modules"
        self.root = server_dir("bgtransfer-tusnode-")
        self.files = self.root / "files"
        self.log_path = self.root / "requests.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def start(self, timeout: float = 30.0) -> None:
        script = self.root / "server.mjs"
        script.write_text(SCRIPT)
        self.files.mkdir(mode=0o755)
        if os.geteuid() == 0:
            os.chown(self.files, NOBODY, NOBODY)
        # stderr to a file: a pipe nobody reads while the server runs would block it.
        with open(self.root / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(
                as_server_user(
                    ["node", str(script), str(self.modules), str(self.files), str(self.log_path)]
                ),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        line = self._first_line(timeout)
        m = re.match(rb"listening (\d+)", line)
        if m is None:
            err = self._stop_proc()
            raise RuntimeError(f"the tus server did not start: {line!r} {err}")
        self.port = int(m.group(1))

    def _first_line(self, timeout: float) -> bytes:
        assert self.proc is not None
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + timeout
        with sel:
            while b"\n" not in buf and time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    buf += chunk
        return buf

    def log(self) -> list[dict[str, Any]]:
        """Each request so far: ``m`` method, ``u`` URL, ``h`` the tus request headers,
        ``s`` status, ``a`` the response headers (lower-case names)."""
        try:
            text = self.log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def uploads(self) -> dict[str, str]:
        """Upload id -> the filename its creation named (Upload-Metadata)."""
        out = {}
        for info in self.files.glob("*.json"):
            with contextlib.suppress(ValueError, OSError):
                meta = json.loads(info.read_text()).get("metadata") or {}
                out[info.stem] = meta.get("filename") or ""
        return out

    def upload_id(self, filename: str) -> str:
        ids = [i for i, name in self.uploads().items() if name == filename]
        assert len(ids) == 1, f"uploads named {filename!r}: {ids}"
        return ids[0]

    def stored(self, filename: str) -> bytes:
        """What the server holds for the upload whose metadata names ``filename``."""
        return (self.files / self.upload_id(filename)).read_bytes()

    @staticmethod
    def metadata_filename(value: str) -> str:
        """The filename in an ``Upload-Metadata`` header value."""
        for pair in value.split(","):
            k, _, v = pair.strip().partition(" ")
            if k == "filename":
                return base64.b64decode(v).decode()
        return ""

    def _stop_proc(self) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        end_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        try:
            return (self.root / "stderr.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        self._stop_proc()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
