"""Web servers nobody here wrote, on 127.0.0.1, for the interop tests: nginx and Apache httpd
serving static files from Debian's packages, a TCP relay that cuts a connection mid-body,
and a throwaway CA (the tus server of Node.js is in :mod:`bgtransfer.testing._tusnode`).

Each server gets its own temporary directory (config, pid, logs, document root) and a free
port, runs in the foreground as a child process and as an unprivileged user (under root,
``nobody`` through ``setpriv``, as :mod:`bgtransfer.testing._postgres` runs PostgreSQL), and
logs every request as one JSON line (method, path, status, Range, If-Range, the ETag and
Content-Encoding it sent, body bytes) for the tests to assert on what went over the wire.

Four locations serve the same document root: ``/`` (the server's defaults: a strong ETag),
``/noetag/`` (no ETag, so Last-Modified is the only validator), ``/gz/`` (compression on
for every type; Apache also has ``/forcegz/``, compressed whatever the client accepts) and
``/noranges/`` (Range ignored: always 200 whole).
Nothing here is for production.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from bgtransfer.testing._postgres import NOBODY, as_server_user, free_port

__all__ = [
    "Apache",
    "CutProxy",
    "LogLine",
    "Nginx",
    "Pki",
    "StaticServer",
    "apache_missing",
    "make_pki",
    "nginx_missing",
    "server_dir",
]

APACHE_MODULE_DIRS = (
    "/usr/lib/apache2/modules",
    "/usr/lib64/httpd/modules",
    "/usr/lib/httpd/modules",
)


def server_dir(prefix: str) -> Path:
    """A fresh temporary directory the server's user owns (0755: the tests read its logs)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(root, NOBODY, NOBODY)
    return root


@dataclass(frozen=True)
class LogLine:
    """One request as the server logged it ('' for a header that was absent)."""

    method: str
    path: str
    status: int
    range: str
    if_range: str
    accept_encoding: str
    content_encoding: str
    etag: str
    bytes: int


def _parse_log(text: str) -> list[LogLine]:
    out = []
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue  # a line being written as we read
        # Apache writes "-" for an absent header and escapes quotes as \" (valid JSON).
        s = {k: ("" if v == "-" else v) for k, v in d.items() if isinstance(v, str)}
        out.append(
            LogLine(
                s["m"], s["u"], int(d["s"]), s["r"], s["ir"], s["ae"], s["ce"], s["et"], int(d["b"])
            )
        )
    return out


class StaticServer:
    """What nginx and Apache have in common: a directory, a child process, a log."""

    name = "server"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.root = server_dir(f"bgtransfer-{self.name}-")
        self.docroot = self.root / "www"
        self.docroot.mkdir(mode=0o755)
        self.docroot.chmod(0o755)
        self.access_log = self.root / "access.log"
        self.error_log = self.root / "error.log"
        self.port = 0
        self.tls_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.pki: Pki | None = None

    # -- for the tests -----------------------------------------------------------------------

    def url(self, name: str, *, where: str = "", tls: bool = False) -> str:
        """``where``: "" (defaults), "noetag", "gz", "noranges" (or Apache's "forcegz")."""
        base = f"https://127.0.0.1:{self.tls_port}" if tls else f"http://127.0.0.1:{self.port}"
        return f"{base}/{where + '/' if where else ''}{name}"

    def put(self, name: str, data: bytes, *, mtime: float | None = None) -> Path:
        """Publish ``data`` as ``name`` the way a deploy does: a new file renamed over the
        old one (a new inode, so the server sees a new mtime and ETag), ``mtime`` if given."""
        path = self.docroot / name
        fd, tmp = tempfile.mkstemp(dir=self.docroot, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def log(self, path: str | None = None) -> list[LogLine]:
        """The requests logged so far (for ``path`` only, when given)."""
        try:
            text = self.access_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        lines = _parse_log(text)
        return [x for x in lines if path is None or x.path == path]

    def wait_log(
        self, cond: Callable[[list[LogLine]], bool], path: str, timeout: float = 10.0
    ) -> list[LogLine]:
        """The log of ``path`` once ``cond`` holds for it: a server writes a request's line
        when it is done with it, which may be a moment after the client is."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log(path)
            if cond(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def probe(
        self, name: str, *, where: str = "", method: str = "HEAD", **headers: str
    ) -> dict[str, str]:
        """The status and headers the server answers another client (``Accept_Encoding=
        "gzip"`` for ``Accept-Encoding: gzip``): what it sends, whatever bgtransfer asks.
        A GET's body is read and dropped."""
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url(name, where=where), method=method)
        for k, v in headers.items():
            req.add_header(k.replace("_", "-"), v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
                status, got = resp.status, resp.headers
        except urllib.error.HTTPError as exc:
            with exc:  # its response holds the connection's socket
                status, got = exc.code, exc.headers
        return {k.lower(): v for k, v in got.items()} | {":status": str(status)}

    # -- lifecycle ---------------------------------------------------------------------------

    def _config(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _command(self, conf: Path) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self, *, tls: Pki | None = None, attempts: int = 5) -> None:
        """Start on free ports (again on others if one was taken meanwhile)."""
        self.pki = tls
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            self.tls_port = free_port() if tls else 0
            conf = self.root / "server.conf"
            conf.write_text(self._config())
            # A file, not a pipe nobody reads while the server runs (a full pipe blocks it).
            with open(self.root / "stderr.log", "ab") as stderr:
                self.proc = subprocess.Popen(
                    as_server_user(self._command(conf)),
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
            if self._ready(timeout=15):
                return
            last = self._stop_proc()
        raise RuntimeError(f"{self.name} did not start after {attempts} attempts: {last}")

    def _ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                for port in (self.port, self.tls_port):
                    if port:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def _stop_proc(self) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        end_process(proc)
        err = ""
        for log in (self.root / "stderr.log", self.error_log):
            with contextlib.suppress(OSError):
                err += log.read_text(errors="replace")[-2000:]
        return err

    def stop(self) -> None:
        self._stop_proc()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- nginx -----------------------------------------------------------------------------------

# JSON lines; escape=json makes every value a valid JSON string ("" when absent).
_NGINX_LOG = (
    'log_format interop escape=json \'{"m":"$request_method","u":"$uri",'
    '"s":$status,"r":"$http_range","ir":"$http_if_range","ae":"$http_accept_encoding",'
    '"ce":"$sent_http_content_encoding","et":"$sent_http_etag","b":$body_bytes_sent}\';'
)


def nginx_missing() -> str | None:
    if shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK):
        return "nginx is not installed (apt-get install nginx)"
    return None


class Nginx(StaticServer):
    name = "nginx"

    def __init__(self) -> None:
        super().__init__(shutil.which("nginx") or "/usr/sbin/nginx")

    def _command(self, conf: Path) -> list[str]:
        # -e: the error log before the config is read (the default path is not writable).
        return [self.binary, "-p", str(self.root), "-c", str(conf), "-e", str(self.error_log)]

    def _config(self) -> str:
        r, www = self.root, self.docroot
        tls = ""
        if self.pki is not None:
            tls = (
                f"listen 127.0.0.1:{self.tls_port} ssl; "
                f"ssl_certificate {self.pki.cert}; ssl_certificate_key {self.pki.key};"
            )
        return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {r}/nginx.pid;
error_log {self.error_log} warn;
events {{ worker_connections 256; }}
http {{
    {_NGINX_LOG}
    access_log {self.access_log} interop;
    sendfile on;
    default_type application/octet-stream;
    types {{ }}
    client_body_temp_path {r}/client_body;
    proxy_temp_path {r}/proxy;
    fastcgi_temp_path {r}/fastcgi;
    uwsgi_temp_path {r}/uwsgi;
    scgi_temp_path {r}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        {tls}
        server_name localhost;
        root {www};
        location /noetag/ {{ alias {www}/; etag off; }}
        location /gz/ {{ alias {www}/; gzip on; gzip_types *; gzip_min_length 0; }}
        location /noranges/ {{ alias {www}/; max_ranges 0; }}
    }}
}}
"""


# -- Apache httpd ----------------------------------------------------------------------------

_APACHE_MODULES = ("mpm_event", "authz_core", "alias", "env", "filter", "deflate")
_APACHE_LOG = (
    'LogFormat "{\\"m\\":\\"%m\\",\\"u\\":\\"%U\\",\\"s\\":%>s,\\"r\\":\\"%{Range}i\\",'
    '\\"ir\\":\\"%{If-Range}i\\",\\"ae\\":\\"%{Accept-Encoding}i\\",'
    '\\"ce\\":\\"%{Content-Encoding}o\\",\\"et\\":\\"%{ETag}o\\",\\"b\\":%B}" interop'
)


def _apache_binary() -> str | None:
    for name in ("apache2", "httpd"):
        found = shutil.which(name) or (
            f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None
        )
        if found:
            return found
    return None


def _apache_modules() -> str | None:
    return next((d for d in APACHE_MODULE_DIRS if os.path.isfile(f"{d}/mod_mpm_event.so")), None)


def apache_missing() -> str | None:
    if _apache_binary() is None or _apache_modules() is None:
        return "Apache httpd is not installed (apt-get install apache2)"
    return None


class Apache(StaticServer):
    name = "apache"

    def __init__(self) -> None:
        binary, modules = _apache_binary(), _apache_modules()
        if binary is None or modules is None:
            raise RuntimeError(apache_missing())
        self.modules = modules
        super().__init__(binary)

    def _command(self, conf: Path) -> list[str]:
        # -X: one process, in the foreground (its threads serve concurrent connections).
        return [self.binary, "-f", str(conf), "-X"]

    def _config(self) -> str:
        r, www = self.root, self.docroot
        load = "\n".join(
            f"LoadModule {m}_module {self.modules}/mod_{m}.so" for m in _APACHE_MODULES
        )
        return f"""\
ServerRoot {r}
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
PidFile {r}/httpd.pid
DefaultRuntimeDir {r}
Mutex file:{r} default
ErrorLog {self.error_log}
LogLevel warn
{load}
ThreadsPerChild 32
{_APACHE_LOG}
CustomLog {self.access_log} interop
DocumentRoot {www}
<Directory {www}>
    Require all granted
</Directory>
Alias /noetag/ {www}/
Alias /gz/ {www}/
Alias /forcegz/ {www}/
Alias /noranges/ {www}/
<Location /noetag/>
    FileETag None
</Location>
<Location /gz/>
    SetOutputFilter DEFLATE
</Location>
<Location /noranges/>
    MaxRanges none
</Location>
<Location /forcegz/>
    SetOutputFilter DEFLATE
    SetEnv force-gzip 1
</Location>
"""


def end_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a server started in a session of its own, then SIGKILL its whole group if it
    has not exited within 10 s (only its children: the group is its own)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# -- a CA of the test's own ------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA made for one test run and a certificate it signed for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path


def make_pki(d: Path) -> Pki:
    """ECDSA P-256 CA and server certificate made with the openssl CLI, readable by the
    server's user (``d`` should be the server's own directory)."""
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    ossl(
        "req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=bgtransfer interop CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    ossl("req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    ossl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
    )  # fmt: skip
    if os.geteuid() == 0:
        for name in ("server.pem", "server.key"):
            os.chown(d / name, NOBODY, NOBODY)
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key")


# -- a relay that cuts -----------------------------------------------------------------------


class CutProxy:
    """A TCP relay on 127.0.0.1 to ``upstream`` that cuts a connection once ``after`` bytes
    went one way on it (``direction``: "response", server to client, or "request"), the
    first ``cuts`` connections to get that far, calling ``on_cut`` first: the test changes
    the world (replaces a file) while the client is cut off. Transparent to TLS. Both
    sockets are closed at the cut, so each side sees the other go away mid-message."""

    def __init__(
        self,
        upstream: int,
        *,
        after: int,
        direction: Literal["response", "request"] = "response",
        cuts: int = 1,
        on_cut: Callable[[], Any] | None = None,
    ) -> None:
        self.upstream = upstream
        self.after = after
        self.direction = direction
        self.cuts = cuts
        self.on_cut = on_cut
        self.connections = 0
        self.cut = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def url(self, path: str, *, tls: bool = False) -> str:
        return f"{'https' if tls else 'http'}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
            except OSError:
                client.close()
                continue
            for src, dst, way in ((client, up, "request"), (up, client, "response")):
                lim = self.after if way == self.direction else None
                t = threading.Thread(target=self._pump, args=(src, dst, lim), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        passed = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and passed + len(data) >= limit and self._take_cut():
                    dst.sendall(data[: limit - passed])
                    if self.on_cut is not None:
                        self.on_cut()
                    break
                dst.sendall(data)
                passed += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cut >= self.cuts:
                return False
            self.cut += 1
            return True

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self._accepting.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> CutProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
