#!/usr/bin/env python3
"""Before/after: W1 and W2 of two git revisions of bgtransfer, alternated in one run.

    .venv/bin/python benchmarks/compare.py --before main --after HEAD
    .venv/bin/python benchmarks/compare.py --before main --after bench --rounds 7 --json
    .venv/bin/python benchmarks/compare.py --before HEAD --after HEAD --patch-after x.diff --tls

Each revision is exported with ``git archive`` into a temp dir and gets its own temp venv:
by default a venv whose only path entries are that revision's ``src`` and the site-packages
of the venv running this script (its dependencies, *not* its editable bgtransfer), with its
own ``bgtransfer`` command; ``--fresh-venv`` instead ``pip install``s the revision with its
own dependencies (slower, needs the package index). Each revision runs its own daemon.

One nginx serves both. Every round runs every tool once for A and once for B, A first in
even rounds and B first in odd ones (ABBA...), plus curl as a control, each to a new file
with the previous output deleted and ``sync`` run before. The ratio is after/before of the
rate (> 1: after is faster), as the median of the per-round ratios, with their min-max: two
runs taken seconds apart share the machine's state (see README "Caveats"), so the per-round
ratio is less noisy than the ratio of the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # the sibling runner: its measured children, data and checks
from bench_proc import Daemon, Nginx, Pki, make_pki, run_quiet
from bench_stats import curl_config, md_table, median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLIENTS = HERE / "clients"

W1_TOOLS = ("bgtransfer get (daemon)", "bgtransfer Session(background=False)")
W2_TOOLS = ("download_many + wait_all", "plain loop: download() each, then wait() each")


@dataclass
class Side:
    label: str  # "before" / "after"
    rev: str
    commit: str
    root: Path  # the exported tree
    python: str
    cli: str
    daemon: Daemon


def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def export(rev: str, dest: Path, patch: Path | None) -> str:
    full = run_quiet(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"], timeout=30
    )
    full = full.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", full], capture_output=True, timeout=300, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, timeout=300, check=True)
    if patch is not None:
        subprocess.run(["git", "apply", str(patch.resolve())], cwd=dest, check=True, timeout=60)
    return full


def make_venv(tree: Path, venv: Path, fresh: bool) -> tuple[str, str]:
    """A venv that imports bgtransfer from ``tree``; (its python, its bgtransfer command)."""
    py = venv / "bin" / "python"
    if fresh:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(py), "-m", "pip", "install", "-q", str(tree)], check=True, timeout=1800)
        return str(py), str(venv / "bin" / "bgtransfer")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300
    )
    site = Path(
        run_quiet(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], timeout=30
        ).strip()
    )
    ours = sysconfig.get_paths()["purelib"]
    # A path entry, not a site dir: the running venv's .pth files (its editable install of
    # the working tree) are not processed, so only the revision's src provides bgtransfer.
    (site / "bench_compare.pth").write_text(f"{tree / 'src'}\n{ours}\n")
    cli = venv / "bin" / "bgtransfer"
    cli.write_text(f"#!{py}\nimport sys\nfrom bgtransfer.cli import main\nsys.exit(main())\n")
    cli.chmod(0o755)
    return str(py), str(cli)


def argv_for(side: Side, tool: str, url: str, out: Path, tsv: Path) -> list[str]:
    if tool == "bgtransfer get (daemon)":
        return [side.cli, "--home", str(side.daemon.home), "get", url, "-o", str(out), "--json"]
    if tool == "bgtransfer Session(background=False)":
        home = side.daemon.home.parent / f"fg-{side.label}"
        home.mkdir(mode=0o700, exist_ok=True)
        return [side.python, str(CLIENTS / "bgt_fg.py"), url, str(out), str(home)]
    script = "bgt_batch.py" if tool == "download_many + wait_all" else "bgt_many.py"
    return [side.python, str(CLIENTS / script), str(tsv), str(side.daemon.home)]


def one_run(
    side: Side | None,
    tool: str,
    w: int,
    ctx: dict[str, Any],
    tag: str,
) -> dict[str, Any]:
    """One timed run; ``side`` None is the curl control."""
    out_root: Path = ctx["out"]
    if out_root.exists():
        shutil.rmtree(out_root)
    d = run.fresh_dir(out_root / tag)
    target = d / "big.bin"
    if w == 1:
        if side is None:
            argv = [ctx["curl"], *ctx["curl_ca"], "-s", "-f", "-o", str(target), ctx["url"]]
        else:
            argv = argv_for(side, tool, ctx["url"], target, Path())
    else:
        names, urls = ctx["names"], ctx["urls"]
        if side is None:
            cfg = d.parent / f"{tag}.curl"
            cfg.write_text(curl_config((u, str(d / n)) for u, n in zip(urls, names, strict=True)))
            argv = [ctx["curl"], *ctx["curl_ca"], "-s", "-f", "--parallel"]
            argv += ["--parallel-max", "16", "-K", str(cfg)]
        else:
            tsv = d.parent / f"{tag}.tsv"
            tsv.write_text("".join(f"{u}\t{d / n}\n" for u, n in zip(urls, names, strict=True)))
            argv = argv_for(side, tool, "", d, tsv)
    # The daemon's CPU counts for the tools it does the work of: `get` and the W2 sessions.
    uses_daemon = side is not None and (w == 2 or tool == "bgtransfer get (daemon)")
    daemon = side.daemon if side is not None and uses_daemon else None
    m = run.measure(argv, timeout=900, daemon=daemon, cwd=d.parent)
    t_sync = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - t_sync
    if w == 1:
        error = m.error or run.check_file(target, ctx["size"])
        units = ctx["size"] / 1e6  # MB
    else:
        error = m.error or run.check_many(d, ctx["names"], ctx["file_size"])
        units = len(ctx["names"])  # files
    return {
        "side": side.label if side else "control",
        "tool": tool,
        "workload": w,
        "ok": error is None,
        "error": error,
        "wall": m.proc.wall,
        "rate": units / m.proc.wall,
        "cpu": m.cpu,
        "sync_after_s": sync_s,
        "loadavg1": os.getloadavg()[0],
    }


def _med(xs: list[float]) -> float | None:
    return median(xs) if xs else None


def _span(xs: list[float]) -> list[float] | None:
    return [min(xs), max(xs)] if xs else None


def _unit(w: int) -> str:
    return "MB/s" if w == 1 else "files/s"


def _pair_ratios(mine: list[dict[str, Any]], rounds: int) -> list[float]:
    """after/before of the rate, for each round where both sides succeeded."""
    by = {(r["side"], r["round"]): r["rate"] for r in mine}
    return [
        by[("after", n)] / by[("before", n)]
        for n in range(rounds)
        if ("after", n) in by and ("before", n) in by
    ]


def _tool_row(w: int, tool: str, mine: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    b = [r for r in mine if r["side"] == "before"]
    a = [r for r in mine if r["side"] == "after"]
    ratios = _pair_ratios(mine, rounds)
    rb, ra = [r["rate"] for r in b], [r["rate"] for r in a]
    mb, ma = _med(rb), _med(ra)
    return {
        "workload": w,
        "tool": tool,
        "unit": _unit(w),
        "n_before": len(b),
        "n_after": len(a),
        "before": mb,
        "after": ma,
        "before_range": _span(rb),
        "after_range": _span(ra),
        "cpu_before": _med([r["cpu"] for r in b]),
        "cpu_after": _med([r["cpu"] for r in a]),
        "ratio": _med(ratios),
        "ratio_range": _span(ratios),
        "ratio_of_medians": ma / mb if ma is not None and mb else None,
    }


def summarise(runs: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """One row per (workload, tool) of A and B, then one per workload for the curl control;
    failed runs count nowhere."""
    ok = [r for r in runs if r["ok"]]
    rows = []
    for w, tool in sorted({(r["workload"], r["tool"]) for r in runs if r["side"] != "control"}):
        mine = [r for r in ok if r["workload"] == w and r["tool"] == tool]
        rows.append(_tool_row(w, tool, [r for r in mine if r["side"] != "control"], rounds))
    for w in sorted({r["workload"] for r in runs}):
        c = [r for r in ok if r["side"] == "control" and r["workload"] == w]
        if c:
            rates = [r["rate"] for r in c]
            rows.append(
                {
                    "workload": w,
                    "tool": "curl (control, same in both)",
                    "unit": _unit(w),
                    "n_before": len(c),
                    "before": median(rates),
                    "before_range": _span(rates),
                    "cpu_before": median([r["cpu"] for r in c]),
                }
            )
    return rows


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    def f(x: float | None, d: int = 0) -> str:
        return "-" if x is None else f"{x:.{d}f}"

    def rng(r: list[float] | None, d: int = 0) -> str:
        return "-" if not r else f"{r[0]:.{d}f}-{r[1]:.{d}f}"

    table = md_table(
        [
            "W",
            "tool",
            "unit",
            "before median (min-max)",
            "after median (min-max)",
            "after/before, per-round median (min-max)",
            "CPU s before → after",
            "n",
        ],
        [
            [
                f"W{r['workload']}",
                r["tool"],
                r["unit"],
                f"{f(r['before'])} ({rng(r.get('before_range'))})",
                f"{f(r.get('after'))} ({rng(r.get('after_range'))})",
                f"{f(r.get('ratio'), 3)} ({rng(r.get('ratio_range'), 3)})",
                f"{f(r.get('cpu_before'), 2)} → {f(r.get('cpu_after'), 2)}",
                f"{r['n_before']}/{r.get('n_after', '-')}",
            ]
            for r in rows
        ],
    )
    return (
        f"# compare: before {meta['before']} ({meta['before_commit'][:10]}) vs after "
        f"{meta['after']} ({meta['after_commit'][:10]})"
        f"{' + ' + meta['patch'] if meta['patch'] else ''}"
        f"\n\n{meta['rounds']} rounds, alternated (ABBA...), "
        f"{'HTTPS (TLS 1.3)' if meta['tls'] else 'plain HTTP'}, W1 {meta['w1_mib']} MiB, "
        f"W2 {meta['w2_files']} x 16 KiB; loadavg start {meta['loadavg_start']:.2f}, end "
        f"{meta['loadavg_end']:.2f}; {meta['date']}\n\n{table}\n\n"
        "A ratio whose min-max spans 1.0 is within noise.\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", required=True, help="git revision measured as A")
    p.add_argument("--after", required=True, help="git revision measured as B")
    p.add_argument("--patch-after", type=Path, default=None, help="git apply this to B's tree")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    p.add_argument("--workloads", default="1,2", help="1, 2 or 1,2 (default)")
    p.add_argument("--w1-mib", type=int, default=1024, help="W1 size (default 1024)")
    p.add_argument("--w2-files", type=int, default=1000, help="W2 files (default 1000)")
    p.add_argument("--tls", action="store_true", help="over HTTPS (nginx TLS 1.3, a run CA)")
    p.add_argument("--fresh-venv", action="store_true", help="pip install each revision")
    p.add_argument("--data-dir", type=Path, default=None, help="keep/reuse the source files")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--keep-temp", action="store_true")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    try:
        a.workloads = [int(x) for x in a.workloads.split(",") if x.strip()]
    except ValueError:
        p.error("--workloads: numbers, e.g. 1,2")
    if not a.workloads or set(a.workloads) - {1, 2}:
        p.error("--workloads: 1, 2 or 1,2")
    return a


def make_side(a: argparse.Namespace, label: str, rev: str, tmp: Path) -> Side:
    """Export ``rev``, give it a venv, check what it imports; its daemon is not started."""
    tree = tmp / label
    venv = tmp / f"venv-{label}"
    commit = export(rev, tree, a.patch_after if label == "after" else None)
    py, cli = make_venv(tree, venv, a.fresh_venv)
    where = run_quiet([py, "-c", "import bgtransfer; print(bgtransfer.__file__)"], timeout=60)
    if not where.strip().startswith((str(tree), str(venv))):
        raise RuntimeError(f"{label} imports bgtransfer from {where.strip()}")
    return Side(label, rev, commit, tree, py, cli, Daemon(cli, tmp / f"home-{label}", {}))


def make_ctx(a: argparse.Namespace, tmp: Path, nginx: Nginx, pki: Pki | None) -> dict[str, Any]:
    """The source files (made or reused) and what every run needs to know about them."""
    cfg = run.parse_args(
        [
            *("--workloads", ",".join(map(str, a.workloads))),
            *("--w1-mib", str(a.w1_mib), "--w2-files", str(a.w2_files), "--reps", "1"),
        ]
    )
    manifest = run.prepare_data(cfg, nginx.data_dir)
    dname = run.small_dir_name(cfg.w2_count, cfg.w2_size)
    names = sorted(manifest["small"][dname]["sha256"]) if 2 in a.workloads else []
    return {
        "out": tmp / "out",
        "curl": shutil.which("curl") or "curl",
        "curl_ca": ["--cacert", str(pki.ca)] if pki else [],
        "url": nginx.url(run.big_name(cfg.w1_bytes), tls=a.tls),
        "size": cfg.w1_bytes,
        "names": names,
        "urls": [nginx.url(f"{dname}/{n}", tls=a.tls) for n in names],
        "file_size": cfg.w2_size,
    }


def run_rounds(a: argparse.Namespace, sides: list[Side], ctx: dict[str, Any]) -> list[Any]:
    runs: list[dict[str, Any]] = []
    for rnd in range(a.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        for w in a.workloads:
            tools = W1_TOOLS if w == 1 else W2_TOOLS
            plan = [(None, "curl")] + [(s, t) for t in tools for s in order]
            for i, (side, tool) in enumerate(plan):
                rec = one_run(side, tool, w, ctx, f"r{rnd}-w{w}-{i}")
                rec["round"] = rnd
                runs.append(rec)
                log(
                    f"round {rnd} W{w} {rec['side']:<7} {tool:<48} "
                    f"{rec['rate']:8.1f} {_unit(w)}  cpu {rec['cpu']:5.2f} s"
                    + (f"  FAILED: {rec['error']}" if rec["error"] else "")
                )
    return runs


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bgtcmp-"))
    os.chmod(tmp, 0o755)
    nginx: Nginx | None = None
    sides: list[Side] = []
    try:
        with run.terminate_as_interrupt():
            sides = [make_side(a, "before", a.before, tmp), make_side(a, "after", a.after, tmp)]
            pki = make_pki(tmp / "pki") if a.tls else None
            if pki is not None:
                os.environ["SSL_CERT_FILE"] = str(pki.ca)  # before any daemon starts
            for s in sides:
                s.daemon.start()
            data_dir = a.data_dir.resolve() if a.data_dir else tmp / "data"
            nginx = Nginx(
                shutil.which("nginx") or "/usr/sbin/nginx", tmp / "nginx", data_dir, pki=pki
            )
            data_dir.mkdir(parents=True, exist_ok=True)
            nginx.start()  # first: the URLs carry its ports
            ctx = make_ctx(a, tmp, nginx, pki)
            meta: dict[str, Any] = {
                "before": a.before,
                "after": a.after,
                "before_commit": sides[0].commit,
                "after_commit": sides[1].commit,
                "patch": str(a.patch_after) if a.patch_after else "",
                "rounds": a.rounds,
                "tls": a.tls,
                "w1_mib": a.w1_mib,
                "w2_files": a.w2_files,
                "loadavg_start": os.getloadavg()[0],
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
            runs = run_rounds(a, sides, ctx)
            meta["loadavg_end"] = os.getloadavg()[0]
            rows = summarise(runs, a.rounds)
            if a.json:
                print(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=1))
            else:
                print(render(meta, rows))
            return 0 if all(r["ok"] for r in runs) else 1
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        for s in sides:
            with contextlib.suppress(Exception):
                s.daemon.stop()
        if nginx is not None:
            nginx.stop()
        if a.keep_temp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
