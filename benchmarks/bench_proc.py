"""Processes of the benchmark runner: measured children, nginx, the bgtransfer daemon."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_stats import parse_proc_stat_times, parse_status_kib, render_nginx_conf

# The CA and server certificate of W6/W7 are the interop tests' own.
from bgtransfer.testing._thirdparty import Pki, make_pki

__all__ = [
    "Daemon",
    "Nginx",
    "Pki",
    "ProcResult",
    "ensure_tools",
    "free_port",
    "make_pki",
    "run_measured",
    "run_quiet",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
HWM_SAMPLE_S = 0.01


def _hwm_kib(pid: int) -> int:
    """VmHWM of a live process in KiB (0 once it is a zombie or gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return parse_status_kib(f.read(), "VmHWM") or 0
    except (FileNotFoundError, ProcessLookupError):
        return 0


@dataclass
class ProcResult:
    argv: list[str]
    rc: int
    wall: float
    cpu_user: float
    cpu_sys: float
    maxrss_kib: int  # the child's own peak (VmHWM sampled), see run_measured
    ru_maxrss_kib: int  # wait4's ru_maxrss: never below the runner's RSS at fork
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys

    def describe(self) -> str:
        tail = (self.stderr.strip() or self.stdout.strip())[-400:]
        what = "timed out" if self.timed_out else f"exit {self.rc}"
        return f"{Path(self.argv[0]).name}: {what}: {tail}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_measured(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> ProcResult:
    """Run argv to completion; wall time, and CPU and peak RSS of its whole reaped tree.

    The child gets its own process group (killed as a whole on timeout or Ctrl-C). Its CPU
    comes from wait4(), so it counts the child and every descendant it waited for; a process
    that escapes the tree (the bgtransfer daemon) is not in it.

    Peak RSS is the child's VmHWM, sampled every 10 ms until it exits (so a rise in its last
    10 ms can be missed). wait4's ru_maxrss is kept too but is useless for small tools: at
    exec() Linux folds the hiwater RSS of the pre-exec address space (the forked copy of
    this ~30 MiB Python runner) into the child's maxrss, so curl would show 30 MiB, not 11.
    """
    args = [os.fspath(a) for a in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        timed_out = False
        hwm_kib = 0
        try:
            pidfd = os.pidfd_open(proc.pid)
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                deadline = t0 + timeout
                while True:
                    hwm_kib = max(hwm_kib, _hwm_kib(proc.pid))
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        timed_out = True
                        _kill_group(proc.pid)
                        break
                    if poller.poll(min(left, HWM_SAMPLE_S) * 1000):
                        break
            finally:
                os.close(pidfd)
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
        except BaseException:
            _kill_group(proc.pid)
            with contextlib.suppress(ChildProcessError):
                os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        if timed_out:
            # Descendants that outlived the killed child (same group) go too.
            _kill_group(proc.pid)
        out.seek(0)
        err.seek(0)
        return ProcResult(
            argv=args,
            rc=proc.returncode,
            wall=wall,
            cpu_user=ru.ru_utime,
            cpu_sys=ru.ru_stime,
            maxrss_kib=hwm_kib,
            ru_maxrss_kib=ru.ru_maxrss,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=timed_out,
        )


def run_quiet(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> str:
    """A helper command (not measured): its stdout+stderr, raising on failure if check."""
    cp = subprocess.run(
        [os.fspath(a) for a in argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({cp.returncode}): {cp.stderr}")
    return cp.stdout + cp.stderr


# -- installation ---------------------------------------------------------------------------

APT_TOOLS = {"nginx": "nginx", "aria2c": "aria2", "curl": "curl", "wget": "wget"}


def _find(cmd: str) -> str | None:
    return shutil.which(cmd) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{cmd}", os.X_OK)), None
    )


def ensure_tools(python: str, say: Callable[[str], None] = print) -> dict[str, str]:
    """Install missing apt tools (as root) and pypdl into the venv; paths of the tools."""
    missing = [pkg for cmd, pkg in APT_TOOLS.items() if _find(cmd) is None]
    if missing:
        if os.geteuid() != 0:
            raise RuntimeError(f"missing {missing}; install them: apt-get install -y {missing}")
        say(f"installing with apt: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            timeout=900,
            env=env,
        )
    probe = subprocess.run(
        [python, "-c", "import pypdl"], capture_output=True, timeout=120, check=False
    )
    if probe.returncode != 0:
        say("installing pypdl into the venv")
        subprocess.run([python, "-m", "pip", "install", "-q", "pypdl"], check=True, timeout=900)
    paths = {}
    for cmd in APT_TOOLS:
        found = _find(cmd)
        if found is None:
            raise RuntimeError(f"{cmd} is still missing after installing")
        paths[cmd] = found
    return paths


# -- nginx ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """Our own nginx on 127.0.0.1 (a child process, ``daemon off``), config in ``prefix``;
    with ``pki`` also TLS 1.3 on a second port."""

    def __init__(
        self,
        binary: str,
        prefix: Path,
        data_dir: Path,
        *,
        limited_rate: str = "100m",
        pki: Pki | None = None,
    ) -> None:
        self.binary = binary
        self.prefix = prefix
        self.data_dir = data_dir
        self.limited_rate = limited_rate
        self.limited_log = prefix / "limited.log"
        self.pki = pki
        self.port = 0
        self.tls_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str, *, limited: bool = False, tls: bool = False) -> str:
        base = f"https://127.0.0.1:{self.tls_port}" if tls else f"http://127.0.0.1:{self.port}"
        return f"{base}/{'limited/' if limited else ''}{name}"

    def start(self, attempts: int = 5) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            self.tls_port = free_port() if self.pki else 0
            conf = self.prefix / "nginx.conf"
            conf.write_text(
                render_nginx_conf(
                    prefix=str(self.prefix),
                    data_dir=str(self.data_dir),
                    port=self.port,
                    limited_rate=self.limited_rate,
                    limited_log=str(self.limited_log),
                    tls_port=self.tls_port or None,
                    tls_cert=str(self.pki.cert) if self.pki else "",
                    tls_key=str(self.pki.key) if self.pki else "",
                )
            )
            errlog = self.prefix / "error.log"
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(errlog)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(OSError):
                    for port in (self.port, self.tls_port):
                        if port:
                            socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return
                time.sleep(0.05)
            last = self._stop_proc()
        raise RuntimeError(f"nginx did not start after {attempts} attempts: {last}")

    def _stop_proc(self) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait(5)
        else:
            # Workers of a master that died: its group.
            _kill_group(proc.pid)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        return err.strip()

    def stop(self) -> None:
        self._stop_proc()

    def limited_log_size(self) -> int:
        try:
            return self.limited_log.stat().st_size
        except FileNotFoundError:
            return 0

    def limited_log_since(self, offset: int) -> list[str]:
        try:
            with open(self.limited_log, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return []


# -- the bgtransfer daemon ------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


class Daemon:
    """A bgtransfer daemon of one home: started and stopped with the CLI, watched via /proc."""

    def __init__(self, cli: str, home: Path, env: dict[str, str | None] | None = None) -> None:
        self.cli = cli
        self.home = home
        self.env = env or {}  # variables for the daemon: a value sets, None removes
        self.hwm_resettable = True

    def start(self) -> int:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if self.env.get(k, v) is not None}
        env.update({k: v for k, v in self.env.items() if v is not None})
        run_quiet([self.cli, "--home", str(self.home), "daemon", "start"], timeout=60, env=env)
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"daemon of {self.home} did not start: see {self.log_path()}")
        return pid

    def status(self) -> dict[str, object]:
        """`daemon status --json` (limits, version, task counts); {} if it cannot be read."""
        try:
            out = run_quiet(
                [self.cli, "--home", str(self.home), "daemon", "status", "--json"],
                timeout=30,
                check=False,
            )
            data = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError, OSError, subprocess.SubprocessError):
            return {}
        return data if isinstance(data, dict) else {}

    def log_path(self) -> Path:
        return self.home / "daemon.log"

    def pid(self) -> int | None:
        """The pid in <home>/daemon.lock if that process is alive and is our daemon."""
        text = _read(str(self.home / "daemon.lock"))
        if not text or not text.strip().isdigit():
            return None
        pid = int(text.strip())
        cmdline = _read(f"/proc/{pid}/cmdline")
        if cmdline is None or str(self.home) not in cmdline or "daemon" not in cmdline:
            return None
        stat = _read(f"/proc/{pid}/stat")
        if stat is None or stat[stat.rindex(")") + 2] in "ZX":
            return None
        return pid

    def cpu(self, pid: int) -> tuple[float, float] | None:
        """(user, system) CPU seconds the daemon has used so far."""
        text = _read(f"/proc/{pid}/stat")
        return None if text is None else parse_proc_stat_times(text, CLK_TCK)

    def reset_hwm(self, pid: int) -> None:
        """Reset VmHWM (peak RSS) to the current RSS: `echo 5 > /proc/pid/clear_refs`."""
        if not self.hwm_resettable:
            return
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.hwm_resettable = False

    def memory_kib(self, pid: int) -> tuple[int | None, int | None]:
        """(VmHWM, VmRSS) in KiB."""
        text = _read(f"/proc/{pid}/status") or ""
        return parse_status_kib(text, "VmHWM"), parse_status_kib(text, "VmRSS")

    def stop(self, timeout: float = 20) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
            run_quiet(
                [self.cli, "--home", str(self.home), "daemon", "stop"],
                timeout=timeout,
                check=False,
            )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.pid() == pid:
            time.sleep(0.05)
        if self.pid() == pid:
            print(f"bench: daemon {pid} did not stop; SIGKILL", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def kill(self) -> int | None:
        """SIGKILL the daemon (the crash of workload 4); its pid."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        return pid

    def wait_dead(self, pid: int, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stat = _read(f"/proc/{pid}/stat")
            if stat is None or stat[stat.rindex(")") + 2] in "ZX":
                return True
            time.sleep(0.01)
        return False

    def log_problems(self) -> list[str]:
        text = _read(str(self.log_path())) or ""
        return [ln for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln]
