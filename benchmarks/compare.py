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
from bench_proc import Daemon, Nginx, make_pki, run_quiet
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


def summarise(runs: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["workload"], r["tool"]) for r in runs if r["side"] != "control"})
    for w, tool in keys:

        def of(
            side: str, rnd: int | None = None, w: int = w, tool: str = tool
        ) -> list[dict[str, Any]]:
            return [
                r
                for r in runs
                if r["workload"] == w
                and r["tool"] == tool
                and r["side"] == side
                and r["ok"]
                and (rnd is None or r["round"] == rnd)
            ]

        b, a = of("before"), of("after")
        pair_ratios = []
        for rnd in range(rounds):
            rb, ra = of("before", rnd), of("after", rnd)
            if rb and ra:
                pair_ratios.append(ra[0]["rate"] / rb[0]["rate"])
        row: dict[str, Any] = {
            "workload": w,
            "tool": tool,
            "unit": "MB/s" if w == 1 else "files/s",
            "n_before": len(b),
            "n_after": len(a),
            "before": median([r["rate"] for r in b]) if b else None,
            "after": median([r["rate"] for r in a]) if a else None,
            "before_range": [min(r["rate"] for r in b), max(r["rate"] for r in b)] if b else None,
            "after_range": [min(r["rate"] for r in a), max(r["rate"] for r in a)] if a else None,
            "cpu_before": median([r["cpu"] for r in b]) if b else None,
            "cpu_after": median([r["cpu"] for r in a]) if a else None,
            "ratio": median(pair_ratios) if pair_ratios else None,
            "ratio_range": [min(pair_ratios), max(pair_ratios)] if pair_ratios else None,
            "ratio_of_medians": (
                median([r["rate"] for r in a]) / median([r["rate"] for r in b]) if a and b else None
            ),
        }
        rows.append(row)
    for w in sorted({r["workload"] for r in runs}):
        c = [r for r in runs if r["side"] == "control" and r["workload"] == w and r["ok"]]
        if c:
            rates = [r["rate"] for r in c]
            rows.append(
                {
                    "workload": w,
                    "tool": "curl (control, same in both)",
                    "unit": "MB/s" if w == 1 else "files/s",
                    "n_before": len(c),
                    "before": median(rates),
                    "before_range": [min(rates), max(rates)],
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


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bgtcmp-"))
    os.chmod(tmp, 0o755)
    nginx: Nginx | None = None
    sides: list[Side] = []
    try:
        with run.terminate_as_interrupt():
            for label, rev in (("before", a.before), ("after", a.after)):
                tree = tmp / label
                patch = a.patch_after if label == "after" else None
                commit = export(rev, tree, patch)
                py, cli = make_venv(tree, tmp / f"venv-{label}", a.fresh_venv)
                where = run_quiet(
                    [py, "-c", "import bgtransfer; print(bgtransfer.__file__)"], timeout=60
                )
                if not where.strip().startswith((str(tree), str(tmp / f"venv-{label}"))):
                    raise RuntimeError(f"{label} imports bgtransfer from {where.strip()}")
                daemon = Daemon(cli, tmp / f"home-{label}", {})
                sides.append(Side(label, rev, commit, tree, py, cli, daemon))
            pki = make_pki(tmp / "pki") if a.tls else None
            if pki is not None:
                os.environ["SSL_CERT_FILE"] = str(pki.ca)  # before any daemon starts
            for s in sides:
                s.daemon.start()
            cfg = run.parse_args(
                [
                    *("--workloads", ",".join(map(str, a.workloads))),
                    *("--w1-mib", str(a.w1_mib), "--w2-files", str(a.w2_files), "--reps", "1"),
                ]
            )
            data_dir = a.data_dir.resolve() if a.data_dir else tmp / "data"
            manifest = run.prepare_data(cfg, data_dir)
            nginx = Nginx(
                shutil.which("nginx") or "/usr/sbin/nginx", tmp / "nginx", data_dir, pki=pki
            )
            nginx.start()
            dname = run.small_dir_name(cfg.w2_count, cfg.w2_size)
            names = sorted(manifest["small"][dname]["sha256"]) if 2 in a.workloads else []
            ctx: dict[str, Any] = {
                "out": tmp / "out",
                "curl": shutil.which("curl") or "curl",
                "curl_ca": ["--cacert", str(pki.ca)] if pki else [],
                "url": nginx.url(run.big_name(cfg.w1_bytes), tls=a.tls),
                "size": cfg.w1_bytes,
                "names": names,
                "urls": [nginx.url(f"{dname}/{n}", tls=a.tls) for n in names],
                "file_size": cfg.w2_size,
            }
            runs: list[dict[str, Any]] = []
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
                            f"{rec['rate']:8.1f} {'MB/s' if w == 1 else 'files/s'}  "
                            f"cpu {rec['cpu']:5.2f} s"
                            + (f"  FAILED: {rec['error']}" if rec["error"] else "")
                        )
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
