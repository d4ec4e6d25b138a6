#!/usr/bin/env python3
"""bgtransfer benchmark suite: bgtransfer against curl, wget, aria2c and pypdl on loopback nginx.

    .venv/bin/python benchmarks/run.py              # W1 (2 GiB), W2 (2000 x 16 KiB), W4
    .venv/bin/python benchmarks/run.py --quick      # smoke run: 2 reps, small sizes
    .venv/bin/python benchmarks/run.py --workloads 1,4 --reps 3

Writes benchmarks/results/<name>.md and .json (name: ``latest`` for a full run of every
workload, ``quick`` for --quick, ``partial`` otherwise; ``--name`` overrides) and prints the
Markdown. See benchmarks/README.md for what each workload measures and the caveats.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proc import (
    CLK_TCK,
    Daemon,
    Nginx,
    Pki,
    ProcResult,
    ensure_tools,
    make_pki,
    run_measured,
    run_quiet,
)
from bench_stats import (
    KNOWN_WORKLOADS,
    MiB,
    Summary,
    aria2_input,
    curl_config,
    fmt,
    md_table,
    median,
    parse_log_lines,
    parse_workloads,
    ratio,
    rotate,
    summarise,
    timestamp,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLIENTS = HERE / "clients"
RESULTS = HERE / "results"

BIMODAL_NOTE = (
    "New-file runs are bimodal on this VM: virtio-balloon free-page reporting hands memory "
    "that stayed free for ~2 s back to the host, and faulting it in again costs a 2-5x "
    "slower write (perf.md: the same `dd` new-file copy 0.63 s or 3.0 s). Compare ratios "
    "within this run, not absolute MB/s across runs; look at min-max, not only the median."
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- configuration --------------------------------------------------------------------------


@dataclass
class Config:
    reps: int
    workloads: list[int]
    w1_bytes: int
    w2_count: int
    w2_size: int
    w2_concurrency: int
    w4_bytes: int
    w4_rate_mib: int
    w4_kill_at: float
    quick: bool
    name: str
    keep_temp: bool
    data_dir: Path | None
    install: bool
    sha_every_run: bool
    rerender: Path | None = None
    rev: str | None = None
    w6_bytes: int = 1024 * MiB
    w7_count: int = 1000


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short smoke run: 2 reps, small sizes")
    p.add_argument(
        "--workloads",
        default="1,2,4,6,7",
        help="which workloads, e.g. 1,2,4,6,7 (default); 6 and 7 are W1 and W2 over HTTPS",
    )
    p.add_argument("--reps", type=int, default=None, help="repetitions per tool (default 5)")
    p.add_argument("--w1-mib", type=int, default=None, help="W1 file size (default 2048)")
    p.add_argument("--w2-files", type=int, default=None, help="W2 file count (default 2000)")
    p.add_argument("--w4-mib", type=int, default=None, help="W4 file size (default 1024)")
    p.add_argument("--w6-mib", type=int, default=None, help="W6 (HTTPS) size (default 1024)")
    p.add_argument("--w7-files", type=int, default=None, help="W7 (HTTPS) files (default 1000)")
    p.add_argument("--w4-rate-mib", type=int, default=100, help="W4 limit_rate MiB/s (100)")
    p.add_argument("--name", default=None, help="results/<name>.md and .json")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp dir (debugging)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the generated source files here and reuse them (default: in the temp dir)",
    )
    p.add_argument("--no-install", action="store_true", help="do not apt/pip install anything")
    p.add_argument("--sha-every-run", action="store_true", help="sha256 every output")
    p.add_argument(
        "--rev",
        default=None,
        help="benchmark this git revision of src/ (git archive into the temp dir, put first on\n"
        "PYTHONPATH for every bgtransfer process) instead of the working tree, which other\n"
        "people may be editing while the run goes on",
    )
    p.add_argument(
        "--rerender",
        type=Path,
        default=None,
        metavar="JSON",
        help="run nothing: rebuild results/<name>.md from a results JSON",
    )
    a = p.parse_args(argv)
    try:
        workloads = parse_workloads(a.workloads)
    except ValueError as exc:
        p.error(str(exc))
    reps = a.reps if a.reps is not None else (2 if a.quick else 5)
    if reps < 1:
        p.error("--reps must be at least 1")
    name = a.name or (
        "quick"
        if a.quick
        else "latest"
        if sorted(workloads) == list(KNOWN_WORKLOADS)
        and a.w1_mib in (None, 2048)
        and a.w2_files in (None, 2000)
        and a.w6_mib in (None, 1024)
        and a.w7_files in (None, 1000)
        else "partial"
    )
    return Config(
        reps=reps,
        workloads=workloads,
        w1_bytes=(a.w1_mib or (256 if a.quick else 2048)) * MiB,
        w2_count=a.w2_files or (500 if a.quick else 2000),
        w2_size=16 * 1024,
        w2_concurrency=16,
        w4_bytes=(a.w4_mib or (256 if a.quick else 1024)) * MiB,
        w4_rate_mib=a.w4_rate_mib,
        w4_kill_at=0.4,
        quick=a.quick,
        w6_bytes=(a.w6_mib or (256 if a.quick else 1024)) * MiB,
        w7_count=a.w7_files or (500 if a.quick else 1000),
        name=name,
        keep_temp=a.keep_temp,
        data_dir=a.data_dir,
        install=not a.no_install,
        sha_every_run=a.sha_every_run,
        rerender=a.rerender,
        rev=a.rev,
    )


# -- source data ----------------------------------------------------------------------------


def big_name(size: int) -> str:
    return f"big-{size // MiB}M.bin"


def small_dir_name(count: int, size: int) -> str:
    return f"small-{count}x{size // 1024}K"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = size
        while left:
            block = os.urandom(min(4 * MiB, left))
            h.update(block)
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
            left -= len(block)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return h.hexdigest()


def prepare_data(cfg: Config, data_dir: Path) -> dict[str, Any]:
    """Random source files (reused when the manifest says they are there); their sha256."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o755)
    manifest_path = data_dir / "manifest.json"
    manifest: dict[str, Any] = {"big": {}, "small": {}}
    with contextlib.suppress(FileNotFoundError, ValueError):
        manifest = json.loads(manifest_path.read_text())
    sizes = set()
    if 1 in cfg.workloads:
        sizes.add(cfg.w1_bytes)
    if 4 in cfg.workloads:
        sizes.add(cfg.w4_bytes)
    if 6 in cfg.workloads:
        sizes.add(cfg.w6_bytes)
    for size in sorted(sizes):
        name = big_name(size)
        entry = manifest["big"].get(name)
        path = data_dir / name
        if entry is None or not path.exists() or path.stat().st_size != size:
            log(f"generating {name} ({size // MiB} MiB of random bytes)")
            manifest["big"][name] = {"size": size, "sha256": _write_random(path, size)}
            manifest_path.write_text(json.dumps(manifest))
    counts = {cfg.w2_count} if 2 in cfg.workloads else set()
    if 7 in cfg.workloads:
        counts.add(cfg.w7_count)
    for count in sorted(counts):
        name = small_dir_name(count, cfg.w2_size)
        d = data_dir / name
        entry = manifest["small"].get(name)
        if entry is None or not d.is_dir() or len(os.listdir(d)) != count:
            log(f"generating {name}")
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o755)
            digests = {}
            for i in range(count):
                fname = f"f{i:05d}.bin"
                block = os.urandom(cfg.w2_size)
                (d / fname).write_bytes(block)
                os.chmod(d / fname, 0o644)
                digests[fname] = hashlib.sha256(block).hexdigest()
            manifest["small"][name] = {
                "count": count,
                "size": cfg.w2_size,
                "sha256": digests,
            }
            manifest_path.write_text(json.dumps(manifest))
    return manifest


# -- machine --------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        out = run_quiet(argv, timeout=30, check=False).strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.splitlines()[0] if out else "?"


def steal_ticks() -> int:
    with open("/proc/stat") as f:
        parts = f.readline().split()
    return int(parts[8]) if len(parts) > 8 else 0


def busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (
            int(x) for x in f.readline().split()[1:8]
        )
    return (user + nice + system + irq + softirq) / CLK_TCK


def export_rev(rev: str, dest: Path) -> tuple[Path, str]:
    """``git archive REV src`` into dest; (the src dir, the full commit id)."""
    full = _first_line(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"])
    if len(full) != 40:
        raise RuntimeError(f"not a git revision: {rev!r}")
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", full, "src"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, timeout=120, check=True)
    return dest / "src", full


def machine_info(tools: dict[str, str], python: str) -> dict[str, Any]:
    py = run_quiet(
        [
            python,
            "-c",
            "import platform, importlib.metadata as m; print(platform.python_version(), "
            "m.version('pypdl'), m.version('aiohttp'), m.version('bgtransfer'))",
        ],
        timeout=60,
    ).split()
    rev = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = run_quiet(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], timeout=30, check=False
    )
    return {
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "curl": _first_line([tools["curl"], "--version"]).split()[1],
        "aria2c": _first_line([tools["aria2c"], "--version"]).split()[-1],
        "wget": _first_line([tools["wget"], "--version"]).split()[2],
        "nginx": _first_line([tools["nginx"], "-v"]).rsplit("/", 1)[-1],
        "python": py[0],
        "pypdl": py[1],
        "aiohttp": py[2],
        "bgtransfer": py[3],
        "git": rev,
        "src_uncommitted_files": len([ln for ln in dirty.splitlines() if ln.strip()]),
    }


# -- the run context ------------------------------------------------------------------------


@dataclass
class Ctx:
    cfg: Config
    tools: dict[str, str]
    python: str
    cli: str
    tmp: Path
    data_dir: Path
    manifest: dict[str, Any]
    nginx: Nginx
    pki: Pki | None = None
    daemons: dict[str, Daemon] = field(default_factory=dict)

    def ca_args(self, tool: str) -> list[str]:
        """How curl / aria2c are told to trust the run's CA (bgtransfer: SSL_CERT_FILE)."""
        if self.pki is None:
            return []
        return {
            "curl": ["--cacert", str(self.pki.ca)],
            "aria2c": [f"--ca-certificate={self.pki.ca}"],
        }[tool]

    def daemon(self, key: str, limits: tuple[int, int] | None = None) -> Daemon:
        """The daemon of home ``key``, started if needed; ``limits`` = (max_active,
        max_per_host) through BGTRANSFER_MAX_ACTIVE/_PER_HOST, None for the defaults."""
        d = self.daemons.get(key)
        if d is None:
            env: dict[str, str | None] = {
                "BGTRANSFER_MAX_ACTIVE": None if limits is None else str(limits[0]),
                "BGTRANSFER_MAX_PER_HOST": None if limits is None else str(limits[1]),
            }
            d = Daemon(self.cli, self.tmp / f"home-{key}", env)
            self.daemons[key] = d
        if d.pid() is None:
            pid = d.start()
            log(f"daemon {key} running, pid {pid}, home {d.home}")
        return d


def fresh_dir(path: Path) -> Path:
    """Delete the previous output right before a run (so its pages can be reused) and sync."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.sync()
    return path


@dataclass
class Measured:
    proc: ProcResult
    cpu: float  # the child tree plus, for daemon tools, the daemon's delta
    rss_mib: float | None  # None: the process ended before the first sample
    extra: dict[str, Any]
    error: str | None


def measure(
    argv: list[str], *, timeout: float, daemon: Daemon | None, cwd: Path | None = None
) -> Measured:
    """Run one timed command; for daemon tools add the daemon's CPU and take its peak RSS."""
    extra: dict[str, Any] = {}
    pid = cpu0 = None
    if daemon is not None:
        pid = daemon.pid()
        if pid is None:
            raise RuntimeError(f"daemon of {daemon.home} is not running")
        cpu0 = daemon.cpu(pid)
        daemon.reset_hwm(pid)
    busy0 = busy_seconds()
    proc = run_measured(argv, timeout=timeout, cwd=cwd)
    busy = busy_seconds() - busy0
    cpu = proc.cpu
    rss_mib = proc.maxrss_kib / 1024 if proc.maxrss_kib else None
    error = None if proc.rc == 0 and not proc.timed_out else proc.describe()
    extra["client_cpu_s"] = proc.cpu
    extra["user_s"] = proc.cpu_user
    extra["sys_s"] = proc.cpu_sys
    extra["client_rss_mib"] = rss_mib
    if daemon is not None and pid is not None and cpu0 is not None:
        cpu1 = daemon.cpu(pid)
        hwm, rss_now = daemon.memory_kib(pid)
        if cpu1 is None or daemon.pid() != pid:
            error = error or f"daemon {pid} died during the run"
        else:
            du, ds = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
            extra["daemon_cpu_s"] = du + ds
            extra["daemon_user_s"], extra["daemon_sys_s"] = du, ds
            extra["user_s"] += du
            extra["sys_s"] += ds
            cpu += du + ds
        if hwm is not None:
            extra["daemon_hwm_mib"] = hwm / 1024
            rss_mib = hwm / 1024
        if rss_now is not None:
            extra["daemon_rss_after_mib"] = rss_now / 1024
    # Everything else that ran meanwhile: nginx, this runner, and other tenants of the VM.
    extra["other_cpu_s"] = max(0.0, busy - cpu)
    extra["loadavg1"] = os.getloadavg()[0]
    return Measured(proc, cpu, rss_mib, extra, error)


def json_line(text: str) -> dict[str, Any]:
    """The last line of a client's stdout that parses as a JSON object ({} if none)."""
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                return obj
    return {}


# -- W1: one large file ---------------------------------------------------------------------


@dataclass
class W1Tool:
    name: str
    argv: Callable[[str, Path], list[str]]
    daemon: bool = False
    parse: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    note: str = ""


# Over HTTPS (W6): the tools the performance issue compares, no wget/pypdl.
W6_TOOLS = ("bgtransfer get (daemon)", "bgtransfer Session(background=False)", "curl", "aria2c -x1")


def w1_tools(ctx: Ctx, fg_home: Path, home: Path, *, tls: bool = False) -> list[W1Tool]:
    t, py, cli = ctx.tools, ctx.python, ctx.cli
    curl_ca = ctx.ca_args("curl") if tls else []
    aria = [
        t["aria2c"],
        *(ctx.ca_args("aria2c") if tls else []),
        "--file-allocation=none",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--quiet=true",
        "--summary-interval=0",
    ]

    def bgt_get_parse(d: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if d.get("created_at") and d.get("finished_at"):
            out["task_s"] = timestamp(d["finished_at"]) - timestamp(d["created_at"])
        out["attempts"] = d.get("attempts")
        return out

    def inproc(d: dict[str, Any]) -> dict[str, Any]:
        return {"inproc_s": d["inproc_s"]} if "inproc_s" in d else {}

    tools = [
        W1Tool(
            "bgtransfer get (daemon)",
            lambda u, p: [cli, "--home", str(home), "get", u, "-o", str(p), "--json"],
            daemon=True,
            parse=bgt_get_parse,
            note="CPU = CLI + daemon delta; RSS = daemon VmHWM",
        ),
        W1Tool(
            "bgtransfer Session(background=False)",
            lambda u, p: [py, str(CLIENTS / "bgt_fg.py"), u, str(p), str(fg_home)],
            parse=inproc,
        ),
        W1Tool("curl", lambda u, p: [t["curl"], *curl_ca, "-s", "-f", "-o", str(p), u]),
        W1Tool("wget", lambda u, p: [t["wget"], "-q", "-O", str(p), u]),
        W1Tool(
            "aria2c -x1",
            lambda u, p: [*aria, "-x1", "-s1", "-d", str(p.parent), "-o", p.name, u],
        ),
        W1Tool(
            "aria2c -x8 -s8",
            lambda u, p: [*aria, "-x8", "-s8", "-d", str(p.parent), "-o", p.name, u],
        ),
        W1Tool(
            "pypdl 1 segment",
            lambda u, p: [py, str(CLIENTS / "pypdl_one.py"), u, str(p), "1"],
            parse=inproc,
        ),
        W1Tool(
            "pypdl 8 segments",
            lambda u, p: [py, str(CLIENTS / "pypdl_one.py"), u, str(p), "8"],
            parse=inproc,
        ),
    ]
    return [x for x in tools if x.name in W6_TOOLS] if tls else tools


def run_w6(ctx: Ctx) -> dict[str, Any]:
    return run_w1(ctx, tls=True)


def run_w1(ctx: Ctx, *, tls: bool = False) -> dict[str, Any]:
    cfg = ctx.cfg
    size = cfg.w6_bytes if tls else cfg.w1_bytes
    w = "W6" if tls else "W1"
    name = big_name(size)
    src = ctx.manifest["big"][name]
    url = ctx.nginx.url(name, tls=tls)
    fg_home = ctx.tmp / "home-fg"
    fg_home.mkdir(mode=0o700, exist_ok=True)
    daemon = ctx.daemon("main")
    tools = w1_tools(ctx, fg_home, daemon.home, tls=tls)
    out_dir = ctx.tmp / "out-w1"
    warm_up(ctx, url)
    startup = startup_costs(ctx) if not tls else {}
    runs: list[dict[str, Any]] = []
    hashed: set[str] = set()
    order = [t.name for t in tools]
    by_name = {t.name: t for t in tools}
    log(f"{w}: {len(tools)} tools x {cfg.reps} reps, {size // MiB} MiB each, {url}")
    for rep in range(cfg.reps):
        for tname in rotate(order, rep):
            tool = by_name[tname]
            fresh_dir(out_dir)
            target = out_dir / f"r{rep}-{len(runs):03d}.bin"
            m = measure(
                tool.argv(url, target),
                timeout=max(120.0, size / (50 * MiB)),
                daemon=daemon if tool.daemon else None,
                cwd=out_dir,
            )
            t_sync = time.perf_counter()
            os.sync()
            sync_s = time.perf_counter() - t_sync
            extra = dict(m.extra)
            extra["sync_after_s"] = sync_s
            # Durable on disk: the tools that leave dirty pages pay the flush here.
            extra["durable_s"] = m.proc.wall + sync_s
            if tool.parse is not None:
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    extra.update(tool.parse(json_line(m.proc.stdout)))
            error = m.error or check_file(target, size)
            if error is None and (cfg.sha_every_run or tname not in hashed):
                digest = sha256_file(target)
                extra["sha256_ok"] = digest == src["sha256"]
                if digest != src["sha256"]:
                    error = f"sha256 mismatch: {digest}"
                hashed.add(tname)
            rec = {
                "tool": tname,
                "rep": rep,
                "ok": error is None,
                "error": error,
                "wall": m.proc.wall,
                "bytes": size,
                "mbps": size / m.proc.wall / 1e6,
                "cpu": m.cpu,
                "rss_mib": m.rss_mib,
                "extra": extra,
            }
            runs.append(rec)
            log(
                f"{w} rep {rep} {tname:<38} {rec['mbps']:7.0f} MB/s  wall {m.proc.wall:6.2f} s"
                f"  cpu {m.cpu:5.2f} s  rss {fmt(m.rss_mib):>5} MiB  sync {sync_s:4.2f} s"
                + (f"  FAILED: {error}" if error else "")
            )
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "workload": 6 if tls else 1,
        "tls": tls,
        "size_bytes": size,
        "url": url,
        "tools": order,
        "notes": {t.name: t.note for t in tools if t.note},
        "startup": startup,
        "runs": runs,
        "daemon_log_problems": daemon.log_problems()[-20:],
    }


def startup_costs(ctx: Ctx, reps: int = 3) -> dict[str, dict[str, float]]:
    """What starting each kind of client costs before it moves a byte (median of reps)."""
    cmds = {
        "bgtransfer --help": [ctx.cli, "--help"],
        "python -c 'import bgtransfer'": [ctx.python, "-c", "import bgtransfer"],
        "python -c 'import pypdl'": [ctx.python, "-c", "import pypdl"],
        "curl --version": [ctx.tools["curl"], "--version"],
    }
    out = {}
    for label, argv in cmds.items():
        runs = [run_measured(argv, timeout=60) for _ in range(reps)]
        out[label] = {
            "wall_s": median([r.wall for r in runs]),
            "cpu_s": median([r.cpu for r in runs]),
            "rss_mib": median([r.maxrss_kib / 1024 for r in runs]),  # 0: too short to sample
        }
    return out


def check_file(path: Path, size: int) -> str | None:
    try:
        got = path.stat().st_size
    except FileNotFoundError:
        return f"no output file {path.name}"
    return None if got == size else f"size {got} != {size}"


def warm_up(ctx: Ctx, url: str) -> None:
    """Page the source and every tool's binary and imports in (DAMON evicts idle pages)."""
    t = ctx.tools
    for argv in (
        [t["curl"], *ctx.ca_args("curl"), "-s", "-o", "/dev/null", url],
        [t["wget"], "--version"],
        [t["aria2c"], "--version"],
        [ctx.cli, "--help"],
        [ctx.python, "-c", "import bgtransfer, pypdl, aiohttp"],
    ):
        run_quiet(argv, timeout=300, check=False)


# -- W2: many small files -------------------------------------------------------------------


def run_w7(ctx: Ctx) -> dict[str, Any]:
    return run_w2(ctx, tls=True)


def run_w2(ctx: Ctx, *, tls: bool = False) -> dict[str, Any]:
    cfg = ctx.cfg
    count = cfg.w7_count if tls else cfg.w2_count
    w = "W7" if tls else "W2"
    dname = small_dir_name(count, cfg.w2_size)
    src = ctx.manifest["small"][dname]
    names = sorted(src["sha256"])
    urls = [ctx.nginx.url(f"{dname}/{n}", tls=tls) for n in names]
    daemon = ctx.daemon("main")
    wide = ctx.daemon("w2-wide", limits=(cfg.w2_concurrency, cfg.w2_concurrency))
    lists = ctx.tmp / "lists"
    lists.mkdir(exist_ok=True)
    out_root = ctx.tmp / "out-w2"
    conc = cfg.w2_concurrency
    t, py = ctx.tools, ctx.python

    def tsv(d: Path, tag: str) -> Path:
        f = lists / f"{tag}.tsv"
        f.write_text("".join(f"{u}\t{d / n}\n" for u, n in zip(urls, names, strict=True)))
        return f

    def daemon_for(tool: str) -> Daemon | None:
        if not tool.startswith("bgtransfer"):
            return None
        return wide if "BGTRANSFER_MAX_PER_HOST" in tool else daemon

    def argv_for(tool: str, d: Path) -> list[str]:
        if tool.startswith("bgtransfer Session.download_many"):
            return [py, str(CLIENTS / "bgt_batch.py"), str(tsv(d, "bgt-batch")), str(daemon.home)]
        if tool.startswith("bgtransfer AsyncSession"):
            return [
                py,
                str(CLIENTS / "bgt_many_async.py"),
                str(tsv(d, "bgt-async")),
                str(wide.home if "BGTRANSFER_MAX_PER_HOST" in tool else daemon.home),
                str(conc),
            ]
        if tool.startswith("bgtransfer"):
            return [py, str(CLIENTS / "bgt_many.py"), str(tsv(d, "bgt")), str(daemon.home)]
        if tool.startswith("aria2c"):
            f = lists / "aria2.txt"
            f.write_text(aria2_input((u, str(d), n) for u, n in zip(urls, names, strict=True)))
            return [
                t["aria2c"],
                *(ctx.ca_args("aria2c") if tls else []),
                "-i",
                str(f),
                f"-j{conc}",
                "--file-allocation=none",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "--quiet=true",
                "--summary-interval=0",
            ]
        if tool.startswith("curl"):
            f = lists / "curl.cfg"
            f.write_text(curl_config((u, str(d / n)) for u, n in zip(urls, names, strict=True)))
            return [
                t["curl"],
                *(ctx.ca_args("curl") if tls else []),
                "-s",
                "-f",
                "--parallel",
                "--parallel-max",
                str(conc),
                "-K",
                str(f),
            ]
        if tool.startswith("pypdl"):
            return [py, str(CLIENTS / "pypdl_many.py"), str(tsv(d, "pypdl")), str(conc)]
        raise ValueError(tool)

    order = [
        "bgtransfer Session(background=True), daemon",
        f"bgtransfer AsyncSession, {conc} submits in flight, daemon",
        "bgtransfer Session.download_many + wait_all (one batch), daemon",
        f"bgtransfer AsyncSession, {conc} in flight, daemon BGTRANSFER_MAX_PER_HOST={conc}",
        f"aria2c -j{conc} -i",
        f"curl --parallel --parallel-max {conc}",
        f"pypdl max_concurrent={conc}",
    ]
    if tls:
        # The rows the performance issue asks for: the plain loop and one batch, beside the
        # two durable/fast references.
        order = [order[0], order[2], order[4], order[5]]
    warm_up(ctx, urls[0])
    runs: list[dict[str, Any]] = []
    hashed: set[str] = set()
    log(f"{w}: {len(order)} tools x {cfg.reps} reps, {count} x {cfg.w2_size // 1024} KiB")
    for rep in range(cfg.reps):
        for tool in rotate(order, rep):
            if out_root.exists():
                shutil.rmtree(out_root)
            d = fresh_dir(out_root / f"r{rep}-{len(runs):03d}")
            argv = argv_for(tool, d)
            m = measure(
                argv,
                timeout=600,
                daemon=daemon_for(tool),
                cwd=d.parent,
            )
            t_sync = time.perf_counter()
            os.sync()
            sync_s = time.perf_counter() - t_sync
            extra = dict(m.extra)
            extra["sync_after_s"] = sync_s
            info = json_line(m.proc.stdout)
            for key in ("window_s", "submit_s", "open_s"):
                if isinstance(info.get(key), int | float):
                    extra[key] = float(info[key])
            if "window_s" in extra and extra["window_s"] > 0:
                extra["inproc_files_per_s"] = count / extra["window_s"]
            error = m.error or check_many(d, names, cfg.w2_size)
            if error is None and (cfg.sha_every_run or tool not in hashed):
                bad = [n for n in names if sha256_file(d / n) != src["sha256"][n]]
                extra["sha256_ok"] = not bad
                if bad:
                    error = f"sha256 mismatch in {len(bad)} files, e.g. {bad[0]}"
                hashed.add(tool)
            rec = {
                "tool": tool,
                "rep": rep,
                "ok": error is None,
                "error": error,
                "wall": m.proc.wall,
                "files": count,
                "files_per_s": count / m.proc.wall,
                "cpu": m.cpu,
                "rss_mib": m.rss_mib,
                "extra": extra,
            }
            runs.append(rec)
            log(
                f"{w} rep {rep} {tool:<46} {rec['files_per_s']:6.0f} files/s"
                f"  wall {m.proc.wall:6.2f} s  cpu {m.cpu:5.2f} s  rss {fmt(m.rss_mib):>4} MiB"
                + (
                    f"  in-window {extra['inproc_files_per_s']:.0f}/s"
                    if "inproc_files_per_s" in extra
                    else ""
                )
                + (f"  FAILED: {error}" if error else "")
            )
    shutil.rmtree(out_root, ignore_errors=True)
    return {
        "workload": 7 if tls else 2,
        "tls": tls,
        "count": count,
        "size_bytes": cfg.w2_size,
        "concurrency": conc,
        "daemon_status": {"default": daemon.status(), "wide": wide.status()},
        "tools": order,
        "runs": runs,
        "daemon_log_problems": (daemon.log_problems() + wide.log_problems())[-20:],
    }


def check_many(d: Path, names: list[str], size: int) -> str | None:
    wrong = []
    for n in names:
        try:
            if (d / n).stat().st_size != size:
                wrong.append(n)
        except FileNotFoundError:
            wrong.append(n)
    return None if not wrong else f"{len(wrong)} of {len(names)} files missing or wrong size"


# -- W4: resume cost after SIGKILL of the daemon --------------------------------------------


def run_w4(ctx: Ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    size = cfg.w4_bytes
    name = big_name(size)
    src = ctx.manifest["big"][name]
    daemon = ctx.daemon("w4")
    out_dir = ctx.tmp / "out-w4"
    runs: list[dict[str, Any]] = []
    log(
        f"W4: {cfg.reps} reps, {size // MiB} MiB at {cfg.w4_rate_mib} MiB/s, "
        f"SIGKILL at {cfg.w4_kill_at:.0%}"
    )
    for rep in range(cfg.reps):
        fresh_dir(out_dir)
        daemon = ctx.daemon("w4")
        rec = w4_once(ctx, daemon, out_dir, rep, size, name, src["sha256"], check_sha=rep == 0)
        runs.append(rec)
        if rec["ok"]:
            log(
                f"W4 rep {rep}: killed at {rec['killed_at_bytes'] / MiB:.1f} MiB, resumed from "
                f"{rec['resumed_from'] / MiB if rec['resumed_from'] is not None else -1:.1f} MiB,"
                f" re-downloaded {rec['redownloaded_mib']:.2f} MiB, finished "
                f"{rec.get('kill_to_done_s', float('nan')):.1f} s after the kill"
            )
        else:
            log(f"W4 rep {rep}: FAILED: {rec['error']}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "workload": 4,
        "size_bytes": size,
        "rate_mib_s": cfg.w4_rate_mib,
        "kill_at": cfg.w4_kill_at,
        "runs": runs,
        "daemon_log_problems": daemon.log_problems()[-20:],
    }


def w4_once(
    ctx: Ctx,
    daemon: Daemon,
    out_dir: Path,
    rep: int,
    size: int,
    name: str,
    digest: str,
    *,
    check_sha: bool,
) -> dict[str, Any]:
    """One `bgtransfer get` from the rate-limited location, the daemon SIGKILLed mid-way."""
    cfg = ctx.cfg
    rate = cfg.w4_rate_mib * MiB
    url = ctx.nginx.url(name, limited=True) + f"?rep={rep}&t={time.time_ns()}"
    uri = url.split(f":{ctx.nginx.port}", 1)[1]
    target = out_dir / f"w4-r{rep}.bin"
    log_offset = ctx.nginx.limited_log_size()
    rec: dict[str, Any] = {
        "tool": "bgtransfer get + SIGKILL of the daemon",
        "rep": rep,
        "ok": False,
        "error": None,
        "size": size,
        "killed_at_bytes": None,
        "resumed_from": None,
    }
    budget = 60.0 + 3 * size / rate
    argv = [ctx.cli, "--home", str(daemon.home), "get", url, "-o", str(target), "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        get = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        try:
            partial: Path | None = None
            killed_pid = None
            deadline = time.monotonic() + budget
            while time.monotonic() < deadline and get.poll() is None:
                if partial is None:
                    found = list(out_dir.glob(f".{target.name}.*.bgtransfer-part"))
                    partial = found[0] if found else None
                if partial is not None:
                    try:
                        cur = partial.stat().st_size
                    except FileNotFoundError:
                        cur = 0
                    if cur >= cfg.w4_kill_at * size:
                        rec["kill_wall"] = time.time()
                        killed_pid = daemon.kill()
                        rec["killed_at_bytes"] = cur
                        break
                time.sleep(0.005)
            if killed_pid is None or partial is None:
                rec["error"] = "the transfer ended or stalled before it could be killed"
                return rec
            if not daemon.wait_dead(killed_pid):
                rec["error"] = f"daemon {killed_pid} did not die after SIGKILL"
                return rec
            task_prefix = partial.name.split(".")[-2]
            rec["task"] = task_prefix
            waited = run_measured(
                [
                    ctx.cli,
                    "--home",
                    str(daemon.home),
                    "wait",
                    task_prefix,
                    "--timeout",
                    f"{budget:.0f}",
                    "--json",
                ],
                timeout=budget + 30,
            )
            rec["wait_rc"] = waited.rc
            try:
                rec["get_rc"] = get.wait(timeout=60)
            except subprocess.TimeoutExpired:
                rec["get_rc"] = None
            task = json_line(waited.stdout)
        finally:
            if get.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(get.pid, signal.SIGKILL)
                get.wait(10)
        err.seek(0)
        rec["get_stderr"] = err.read().decode(errors="replace").strip()[-600:]
    if waited.rc != 0 or task.get("state") != "completed" or task.get("error"):
        rec["error"] = f"wait: {waited.describe()}"
        return rec
    if task.get("finished_at"):
        rec["kill_to_done_s"] = timestamp(task["finished_at"]) - rec["kill_wall"]
    shown = run_measured(
        [ctx.cli, "--home", str(daemon.home), "show", task_prefix, "--json"], timeout=60
    )
    history = json_line(shown.stdout).get("history", [])
    rec["history"] = [
        {k: a.get(k) for k in ("n", "status", "range_start", "bytes", "outcome", "started_at")}
        for a in history
    ]
    starts = [a["range_start"] for a in history if a.get("range_start") is not None]
    rec["resumed_from"] = starts[-1] if starts else None
    resumed = rec["resumed_from"] or 0
    rec["lost_after_checkpoint_bytes"] = rec["killed_at_bytes"] - resumed
    later = [a for a in history if a.get("range_start") is not None]
    if later and later[0].get("started_at"):
        rec["kill_to_resume_request_s"] = timestamp(later[0]["started_at"]) - rec["kill_wall"]
    # nginx logs a request when it ends; give the last line a moment.
    mine: list[Any] = []
    for _ in range(50):
        mine = [
            ln for ln in parse_log_lines(ctx.nginx.limited_log_since(log_offset)) if ln.uri == uri
        ]
        if sum(ln.body_bytes_sent for ln in mine) >= size:
            break
        time.sleep(0.1)
    rec["requests"] = [
        {"status": ln.status, "bytes_sent": ln.bytes_sent, "range": ln.range} for ln in mine
    ]
    sent = sum(ln.bytes_sent for ln in mine)
    body = sum(ln.body_bytes_sent for ln in mine)
    rec["nginx_bytes_sent"] = sent
    rec["nginx_body_bytes_sent"] = body
    rec["redownloaded_mib"] = (sent - size) / MiB
    rec["in_flight_lost_bytes"] = body - size - rec["lost_after_checkpoint_bytes"]
    ideal = (size - resumed) / rate
    if "kill_to_done_s" in rec:
        rec["overhead_s"] = rec["kill_to_done_s"] - ideal
    problem = check_file(target, size)
    if problem is None and check_sha:
        got = sha256_file(target)
        rec["sha256_ok"] = got == digest
        if got != digest:
            problem = f"sha256 mismatch: {got}"
    rec["error"] = problem
    rec["ok"] = problem is None
    return rec


# -- the report -----------------------------------------------------------------------------


def limits_text(res: dict[str, Any]) -> str:
    """The daemons' concurrency limits, as their `daemon status --json` reported them."""
    conc = res["concurrency"]
    status = res.get("daemon_status", {})

    def lim(key: str) -> str:
        got = status.get(key, {}).get("limits", {})
        if not got:
            return "?"
        return f"max_active={got.get('max_active')}, max_per_host={got.get('max_per_host')}"

    return (
        f"The default daemon runs with {lim('default')} (`daemon status`), so bgtransfer opens "
        f"fewer connections to the one host than the others' {conc}; the row marked "
        f"`BGTRANSFER_MAX_PER_HOST={conc}` runs a second daemon with {lim('wide')}."
    )


def startup_line(startup: dict[str, dict[str, float]]) -> str:
    if not startup:
        return ""
    parts = [
        f"`{k}` {v['wall_s']:.2f} s wall, {v['cpu_s']:.2f} s CPU"
        + (f", {v['rss_mib']:.0f} MiB" if v["rss_mib"] >= 1 else "")
        for k, v in startup.items()
    ]
    return "Starting a client, before any byte moves (median of 3): " + "; ".join(parts) + ".\n\n"


def noise_line(runs: list[dict[str, Any]]) -> str:
    """How busy the machine was besides the measured tool, over the runs of a workload."""
    other = [r["extra"]["other_cpu_s"] for r in runs if "other_cpu_s" in r.get("extra", {})]
    loads = [r["extra"]["loadavg1"] for r in runs if "loadavg1" in r.get("extra", {})]
    if not other:
        return ""
    return (
        f"Noise check: CPU used by everything except the measured tool (nginx, the runner, "
        f"other processes on the VM) during a run: median {median(other):.2f} s, max "
        f"{max(other):.2f} s; 1-min loadavg after the runs: median {median(loads):.2f}, max "
        f"{max(loads):.2f}.\n"
    )


def _cpu_cell(s: Summary) -> str:
    cpu, user, sys_ = s.med_of("cpu"), s.med_of("user_s"), s.med_of("sys_s")
    if cpu is None:
        return "-"
    if user is None or sys_ is None:
        return fmt(cpu, 2)
    return f"{cpu:.2f} ({user:.2f} u + {sys_:.2f} s)"


def _range(s: Summary, digits: int = 0) -> str:
    return f"{fmt(s.lo, digits)}-{fmt(s.hi, digits)}" if s.metric else "-"


def _failed(s: Summary) -> str:
    return f"**{s.failed} of {s.n} runs failed**; " if s.failed else ""


def render_w1(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    size = res["size_bytes"]
    runs = res["runs"]
    sums = [summarise(t, runs, "mbps") for t in res["tools"]]
    curl = next((s for s in sums if s.tool == "curl"), None)
    rows = []
    for s in sums:
        notes = _failed(s)
        inproc = s.med_of("inproc_s")
        if inproc:
            notes += f"in-process {size / inproc / 1e6:.0f} MB/s; "
        task_s = s.med_of("task_s")
        if task_s:
            notes += f"daemon task window {size / task_s / 1e6:.0f} MB/s; "
        dcpu, ccpu = s.med_of("daemon_cpu_s"), s.med_of("client_cpu_s")
        if dcpu is not None:
            notes += f"CPU daemon {dcpu:.2f} s + CLI {ccpu or 0:.2f} s; "
            crss = s.med_of("client_rss_mib")
            notes += f"CLI RSS {crss or 0:.0f} MiB; "
        notes += res["notes"].get(s.tool, "")
        cpu = s.med_of("cpu")
        rows.append(
            [
                s.tool,
                str(s.n),
                fmt(s.med),
                _range(s),
                fmt(s.spread),
                fmt(ratio(s.med, curl.med if curl else None), 2),
                fmt(ratio(curl.med_of("durable_s") if curl else None, s.med_of("durable_s")), 2),
                fmt(s.med_of("wall"), 2),
                _cpu_cell(s),
                fmt(None if cpu is None else cpu / (size / 1e9), 2),
                fmt(s.max_of("rss_mib")),
                fmt(s.med_of("sync_after_s"), 2),
                notes.strip().rstrip(";"),
            ]
        )
    table = md_table(
        [
            "tool",
            "n",
            "MB/s median",
            "min-max",
            "spread %",
            "x curl",
            "x (curl + sync)",
            "wall s",
            "CPU s (user + sys)",
            "CPU s per GB",
            "peak RSS MiB",
            "sync after s",
            "notes",
        ],
        rows,
    )
    title = (
        f"## W6: one {size // MiB} MiB file over HTTPS (TLS 1.3, nginx, a CA made for the run "
        "and trusted through SSL_CERT_FILE / --cacert / --ca-certificate) to a new file on disk"
        if res.get("tls")
        else f"## W1: one {size // MiB} MiB file to a new file on disk"
    )
    text = (
        f"{title}\n\n"
        f"> {BIMODAL_NOTE}\n\n{table}\n\n"
        "MB/s = file bytes / wall seconds of the whole command (process start to exit). "
        "CPU = user+sys of the process tree (wait4), plus for the daemon path the daemon's "
        "/proc/<pid>/stat delta. Peak RSS = the child's VmHWM sampled every 10 ms (wait4's "
        "ru_maxrss would include this Python runner's RSS, inherited at fork/exec); for "
        "`bgtransfer get` the daemon's VmHWM, reset before each run "
        "(`echo 5 > /proc/<pid>/clear_refs`). "
        "'sync after' = an untimed `sync` right after the run: the tools that leave dirty "
        "pages (curl, wget, aria2c, pypdl) pay here what bgtransfer pays inside its timing "
        "(an fdatasync at every 32 MiB checkpoint and before the rename). "
        "'x curl' compares wall times alone (curl's flush not counted); 'x (curl + sync)' "
        "compares wall + sync after of both, per run, medians: the durable-file comparison.\n\n"
        + startup_line(res.get("startup", {}))
        + noise_line(runs)
    )
    return text, [s.to_json() for s in sums]


def render_w2(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    runs = res["runs"]
    n = res["count"]
    sums = [summarise(t, runs, "files_per_s") for t in res["tools"]]
    curl = next((s for s in sums if s.tool.startswith("curl")), None)
    rows = []
    for s in sums:
        notes = _failed(s)
        sub = s.med_of("submit_s")
        if sub:
            notes += f"submit phase {sub:.2f} s ({n / sub:.0f} submits/s); "
        dcpu, ccpu = s.med_of("daemon_cpu_s"), s.med_of("client_cpu_s")
        if dcpu is not None:
            notes += f"CPU daemon {dcpu:.2f} s + client {ccpu or 0:.2f} s; "
            notes += f"client RSS {s.med_of('client_rss_mib') or 0:.0f} MiB, RSS = daemon VmHWM; "
        rows.append(
            [
                s.tool,
                str(s.n),
                fmt(s.med),
                _range(s),
                fmt(s.spread),
                fmt(ratio(s.med, curl.med if curl else None), 2),
                fmt(s.med_of("wall"), 2),
                _cpu_cell(s),
                fmt(s.max_of("rss_mib")),
                fmt(s.med_of("inproc_files_per_s")),
                fmt(s.med_of("sync_after_s"), 2),
                notes.strip().rstrip(";"),
            ]
        )
    table = md_table(
        [
            "tool",
            "n",
            "files/s median",
            "min-max",
            "spread %",
            "x curl --parallel",
            "wall s",
            "CPU s (user + sys)",
            "peak RSS MiB",
            "in-process files/s",
            "sync after s",
            "notes",
        ],
        rows,
    )
    over = " over HTTPS (TLS 1.3)" if res.get("tls") else ""
    text = (
        f"## W{res.get('workload', 2)}: {n} files of {res['size_bytes'] // 1024} KiB{over}, "
        f"concurrency {res['concurrency']}\n\n"
        + (
            "'Session(background=True)' is the plain loop: `download()` for each file, then "
            "`wait()` for each.\n\n"
            if res.get("tls")
            else ""
        )
        + "> File creation cost on this VM swung ~13x during the perf.md measurements (ext4 "
        "with `discard`, shared disk); it dominates this workload. Compare within one run.\n\n"
        f"{table}\n\n"
        "files/s = files / wall seconds of the whole command, interpreter start included. "
        "'in-process files/s' for bgtransfer = files / (first `Session.download()` submit to "
        "the last task's completion), the window the benchmark brief asks for; for pypdl = "
        "from `Pypdl()` to `start()` returning. " + limits_text(res) + "\n\n" + noise_line(runs)
    )
    return text, [s.to_json() for s in sums]


def render_w4(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    runs = res["runs"]
    rows = []
    for r in runs:
        ok = r["ok"]
        rows.append(
            [
                str(r["rep"]),
                fmt(r["killed_at_bytes"] / MiB if r.get("killed_at_bytes") else None, 1),
                fmt(r["resumed_from"] / MiB if r.get("resumed_from") is not None else None, 1),
                fmt(r.get("lost_after_checkpoint_bytes", 0) / MiB if ok else None, 2),
                fmt(r.get("nginx_bytes_sent", 0) / MiB if ok else None, 1),
                fmt(r.get("redownloaded_mib") if ok else None, 2),
                str(len(r.get("requests", []))) if ok else "-",
                fmt(r.get("kill_to_resume_request_s"), 2),
                fmt(r.get("kill_to_done_s"), 2),
                fmt(r.get("overhead_s"), 2),
                str(r.get("get_rc", "-")),
                "ok" if ok else f"FAILED: {r.get('error')}",
            ]
        )
    table = md_table(
        [
            "rep",
            "killed at MiB",
            "resumed from MiB",
            "lost after checkpoint MiB",
            "nginx sent MiB",
            "re-downloaded MiB",
            "requests",
            "kill → resume request s",
            "kill → done s",
            "overhead s",
            "`get` exit",
            "result",
        ],
        rows,
    )
    good = [r["redownloaded_mib"] for r in runs if r["ok"]]
    summary: dict[str, Any] = {"n": len(runs), "ok": len(good)}
    verdict = "no successful run"
    if good:
        summary.update(
            median_mib=median(good),
            max_mib=max(good),
            goal_mib=4.0,
            goal_met=max(good) <= 4.0,
        )
        verdict = (
            f"re-downloaded median {median(good):.2f} MiB, max {max(good):.2f} MiB "
            f"(goal ≤ 4 MiB: {'met' if max(good) <= 4.0 else '**NOT met**'})"
        )
    text = (
        f"## W4: resume cost after SIGKILL of the daemon\n\n"
        f"`bgtransfer get` of a {res['size_bytes'] // MiB} MiB file from an nginx location "
        f"with `limit_rate {res['rate_mib_s']}m`; the daemon is SIGKILLed once the partial "
        f"file holds {res['kill_at']:.0%} of the bytes; `bgtransfer wait ID` then waits "
        "for it (the `get` client restarts the daemon on its own). Re-downloaded = "
        "sum of nginx `$bytes_sent` for that URL (every request) - file size.\n\n"
        f"{table}\n\n**{verdict}.** 'lost after checkpoint' = bytes in the partial file at "
        "the kill beyond the offset the resume started from; the rest of the re-download "
        "was in flight (sent by nginx, not yet written). 'overhead' = kill → done minus the "
        "time the remaining bytes need at the rate limit.\n"
    )
    return text, [summary]


def render(
    meta: dict[str, Any], cfg: Config, results: dict[int, dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    m = meta
    source = (
        f"{m['bgtransfer']}: {m['source']}"
        if m.get("source")
        else f"{m['bgtransfer']}: the working tree at {m['git']} "
        f"({m['src_uncommitted_files']} uncommitted files under src/)"
    )
    head = (
        "# bgtransfer benchmarks\n\n"
        f"machine: nproc {m['nproc']}, {m['mem_gib']} GiB, Linux {m['kernel']}, loadavg at "
        f"start {' '.join(f'{x:.2f}' for x in m['loadavg_start'])}, {m['date']}; "
        f"curl {m['curl']}, aria2c {m['aria2c']}, wget {m['wget']}, nginx {m['nginx']}, "
        f"pypdl {m['pypdl']}, Python {m['python']}, aiohttp {m['aiohttp']}; bgtransfer "
        f"{source}\n\n"
        f"run: {cfg.reps} repetitions per tool, interleaved (round-robin over the tools, "
        "the order rotated by one each repetition), the previous output deleted and `sync` "
        f"run before each run; total {m.get('total_s', 0):.0f} s, CPU steal "
        f"{m.get('steal_ticks', 0)} ticks, loadavg at end "
        f"{' '.join(f'{x:.2f}' for x in m.get('loadavg_end', (0, 0, 0)))}"
        f"{' (--quick)' if cfg.quick else ''}\n"
    )
    parts = [head]
    out: dict[str, Any] = {"meta": meta, "config": cfg_json(cfg), "workloads": {}}
    renderers = {1: render_w1, 2: render_w2, 4: render_w4, 6: render_w1, 7: render_w2}
    for w, res in results.items():
        if "exception" in res:
            parts.append(f"## W{w}\n\n**did not complete**: {res['exception']}\n")
            out["workloads"][str(w)] = res
            continue
        text, summary = renderers[w](res)
        problems = res.get("daemon_log_problems") or []
        if problems:
            text += (
                "\nWarnings and errors in the daemon log:\n\n```\n"
                + "\n".join(p[-300:] for p in problems[-8:])
                + "\n```\n"
            )
        parts.append(text)
        out["workloads"][str(w)] = {**res, "summary": summary}
    return "\n".join(parts), out


def cfg_json(cfg: Config) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()}


# -- main -----------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every finally block runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def check_served(nginx: Nginx, manifest: dict[str, Any]) -> None:
    """One file through nginx, so a permissions problem shows here and not as 403s later."""
    import urllib.request

    for name, entry in manifest["big"].items():
        for tls in (False, True) if nginx.pki else (False,):
            req = urllib.request.Request(nginx.url(name, tls=tls), method="HEAD")
            with urllib.request.urlopen(req, timeout=10) as resp:  # verifies via SSL_CERT_FILE
                length = int(resp.headers["Content-Length"])
            if length != entry["size"]:
                raise RuntimeError(f"nginx serves {name} with {length} bytes, not {entry['size']}")


def rerender(path: Path) -> int:
    """Rebuild the Markdown (and the JSON summaries) of an earlier run from its JSON."""
    old = json.loads(path.read_text())
    fields = dict(old["config"])
    fields["data_dir"] = Path(fields["data_dir"]) if fields.get("data_dir") else None
    fields["rerender"] = None
    cfg = Config(**fields)
    results = {
        int(k): {key: v for key, v in res.items() if key != "summary"}
        for k, res in old["workloads"].items()
    }
    md, js = render(old["meta"], cfg, results)
    (RESULTS / f"{cfg.name}.md").write_text(md)
    (RESULTS / f"{cfg.name}.json").write_text(json.dumps(js, indent=1, default=str) + "\n")
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.rerender is not None:
        return rerender(cfg.rerender)
    t_start = time.monotonic()
    python = sys.executable
    cli = str(Path(python).parent / "bgtransfer")
    if not os.access(cli, os.X_OK):
        found = shutil.which("bgtransfer")
        if found is None:
            print("bench: the bgtransfer CLI is not installed next to this Python", file=sys.stderr)
            return 2
        cli = found
    with terminate_as_interrupt():
        if cfg.install:
            tools = ensure_tools(python, log)
        else:
            tools = {
                c: shutil.which(c) or f"/usr/sbin/{c}" for c in ("nginx", "aria2c", "curl", "wget")
            }
        meta = machine_info(tools, python)
        steal0 = steal_ticks()
        tmp = Path(tempfile.mkdtemp(prefix="bgtb-"))
        os.chmod(tmp, 0o755)
        if cfg.rev is not None:
            src, full = export_rev(cfg.rev, tmp / "rev")
            # Every bgtransfer process (CLI, daemon, clients) inherits this environment.
            os.environ["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p
            )
            meta["source"] = f"git archive {full[:10]} ({cfg.rev}), not the working tree"
            meta["bgtransfer_file"] = _first_line(
                [python, "-c", "import bgtransfer; print(bgtransfer.__file__)"]
            )
            log(f"benchmarking {cfg.rev} = {full[:10]} from {src}")
        nginx: Nginx | None = None
        ctx: Ctx | None = None
        try:
            data_dir = cfg.data_dir.resolve() if cfg.data_dir else tmp / "data"
            manifest = prepare_data(cfg, data_dir)
            pki = make_pki(tmp / "pki") if {6, 7} & set(cfg.workloads) else None
            if pki is not None:
                # Before any daemon or client starts: every bgtransfer process trusts the
                # run's CA the way a user would point it at a private CA.
                os.environ["SSL_CERT_FILE"] = str(pki.ca)
            nginx = Nginx(
                tools["nginx"],
                tmp / "nginx",
                data_dir,
                limited_rate=f"{cfg.w4_rate_mib}m",
                pki=pki,
            )
            nginx.start()
            log(f"nginx on 127.0.0.1:{nginx.port}, serving {data_dir}")
            check_served(nginx, manifest)
            ctx = Ctx(cfg, tools, python, cli, tmp, data_dir, manifest, nginx, pki)
            results: dict[int, dict[str, Any]] = {}
            runners = {1: run_w1, 2: run_w2, 4: run_w4, 6: run_w6, 7: run_w7}
            for w in cfg.workloads:
                try:
                    results[w] = runners[w](ctx)
                except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
                    log(f"W{w} did not complete: {exc!r}")
                    results[w] = {"workload": w, "exception": repr(exc)}
            meta["total_s"] = time.monotonic() - t_start
            meta["steal_ticks"] = steal_ticks() - steal0
            meta["loadavg_end"] = os.getloadavg()
            md, js = render(meta, cfg, results)
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"{cfg.name}.md").write_text(md)
            (RESULTS / f"{cfg.name}.json").write_text(json.dumps(js, indent=1, default=str) + "\n")
            print(md)
            log(f"wrote {RESULTS / cfg.name}.md and .json in {meta['total_s']:.0f} s")
            return 0 if all("exception" not in r for r in results.values()) else 1
        except KeyboardInterrupt:
            log("interrupted; cleaning up")
            return 130
        finally:
            if ctx is not None:
                for d in ctx.daemons.values():
                    d.stop()
            if nginx is not None:
                nginx.stop()
            if cfg.keep_temp:
                log(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
