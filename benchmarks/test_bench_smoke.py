"""Checks of the benchmark scripts themselves: no process is started, no benchmark is run.

.venv/bin/pytest -q benchmarks/test_bench_smoke.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_stats as bs
import run


def test_median_spread_ratio() -> None:
    assert bs.median([3.0, 1.0, 2.0]) == 2.0
    assert bs.median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert bs.spread_pct([90.0, 100.0, 110.0]) == pytest.approx(20.0)
    assert bs.ratio(50.0, 100.0) == 0.5
    assert bs.ratio(None, 1.0) is None
    assert bs.ratio(1.0, 0.0) is None
    with pytest.raises(ValueError, match="no values"):
        bs.median([])


def test_rotate_is_round_robin() -> None:
    tools = ["a", "b", "c"]
    assert bs.rotate(tools, 0) == ["a", "b", "c"]
    assert bs.rotate(tools, 1) == ["b", "c", "a"]
    assert bs.rotate(tools, 4) == ["b", "c", "a"]
    assert bs.rotate([], 3) == []
    # Over len(tools) repetitions every tool takes every position once.
    positions = {t: {bs.rotate(tools, k).index(t) for k in range(3)} for t in tools}
    assert all(p == {0, 1, 2} for p in positions.values())


def test_fmt_and_table() -> None:
    assert bs.fmt(None) == "-"
    assert bs.fmt(1234.56) == "1235"
    assert bs.fmt(1.234, 2) == "1.23"
    table = bs.md_table(["a", "b"], [["1", "x|y"], ["2", "z"]])
    lines = table.splitlines()
    assert lines[0] == "| a | b |"
    assert lines[1] == "|---|---|"
    assert lines[2] == "| 1 | x\\|y |"
    with pytest.raises(ValueError, match="cells"):
        bs.md_table(["a", "b"], [["only one"]])


def _rec(tool: str, ok: bool, mbps: float, **extra: Any) -> dict[str, Any]:
    return {
        "tool": tool,
        "ok": ok,
        "mbps": mbps,
        "wall": 1.0,
        "cpu": 0.5,
        "rss_mib": 10.0 + mbps / 100,
        "extra": extra,
    }


def test_summarise_skips_failed_runs_and_keeps_numeric_extras() -> None:
    runs = [
        _rec("t", True, 100.0, daemon_cpu_s=1.0, sha256_ok=True, note="x"),
        _rec("t", True, 300.0, daemon_cpu_s=3.0),
        _rec("t", False, 9999.0),
        _rec("other", True, 1.0),
    ]
    s = bs.summarise("t", runs, "mbps")
    assert (s.n, s.failed) == (3, 1)
    assert (s.med, s.lo, s.hi) == (200.0, 100.0, 300.0)
    assert s.med_of("daemon_cpu_s") == 2.0
    assert "sha256_ok" not in s.extra  # booleans are not numbers to take a median of
    assert s.max_of("rss_mib") == 13.0
    assert s.to_json()["failed"] == 1
    empty = bs.summarise("missing", runs, "mbps")
    assert empty.n == 0
    assert empty.med is None
    assert empty.med_of("wall") is None


def test_parse_workloads() -> None:
    assert bs.parse_workloads("1,2,4") == [1, 2, 4]
    assert bs.parse_workloads("w4, 1") == [4, 1]
    for bad, why in (("3", "unknown"), ("1,1", "twice"), ("", "no workload"), ("x", "not a")):
        with pytest.raises(ValueError, match=why):
            bs.parse_workloads(bad)


def test_proc_parsers() -> None:
    stat = "1234 (python3 (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 0"
    assert bs.parse_proc_stat_cpu(stat, 100) == pytest.approx(3.0)
    status = "Name:\tpython3\nVmHWM:\t   41234 kB\nVmRSS:\t   40000 kB\n"
    assert bs.parse_status_kib(status, "VmHWM") == 41234
    assert bs.parse_status_kib(status, "VmSwap") is None


def test_nginx_conf_binds_loopback_only() -> None:
    conf = bs.render_nginx_conf(
        prefix="/tmp/p", data_dir="/tmp/d", port=8123, limited_rate="100m", limited_log="/l"
    )
    assert "listen 127.0.0.1:8123;" in conf
    assert conf.count("listen") == 1
    assert "sendfile on;" in conf
    assert "access_log off;" in conf
    assert "limit_rate 100m;" in conf
    assert "access_log /l sent;" in conf
    assert conf.count("{") == conf.count("}")


def test_nginx_conf_tls_listener_is_loopback_tls13_only() -> None:
    conf = bs.render_nginx_conf(
        prefix="/tmp/p",
        data_dir="/tmp/d",
        port=8123,
        limited_rate="100m",
        limited_log="/l",
        tls_port=8124,
        tls_cert="/c.pem",
        tls_key="/k.pem",
    )
    assert "listen 127.0.0.1:8123;" in conf
    assert "listen 127.0.0.1:8124 ssl;" in conf
    assert conf.count("listen") == 2
    assert "ssl_protocols TLSv1.3;" in conf
    assert "ssl_certificate /c.pem;" in conf
    assert "ssl_certificate_key /k.pem;" in conf
    assert conf.count("{") == conf.count("}")


def test_log_lines() -> None:
    lines = [
        '/limited/f?rep=0 200 419430700 419430400 "-"',
        '/limited/f?rep=0 206 700000300 700000000 "bytes=419430400-"',
        "garbage",
    ]
    parsed = bs.parse_log_lines(lines)
    assert [p.status for p in parsed] == [200, 206]
    assert parsed[1].range == "bytes=419430400-"
    assert sum(p.bytes_sent for p in parsed) == 1119431000


def test_tool_input_files() -> None:
    assert bs.aria2_input([("http://h/a", "/d", "a")]) == "http://h/a\n  dir=/d\n  out=a\n"
    cfg = bs.curl_config([("http://h/a", '/d/we"ird\\')])
    assert cfg == 'url = "http://h/a"\noutput = "/d/we\\"ird\\\\"\n'


def test_args_quick_and_names() -> None:
    quick = run.parse_args(["--quick"])
    assert quick.reps == 2
    assert quick.name == "quick"
    assert quick.w1_bytes == 256 * bs.MiB
    assert quick.w2_count < 2000
    full = run.parse_args([])
    assert full.reps == 5
    assert full.name == "latest"
    assert full.w1_bytes == 2048 * bs.MiB
    assert run.parse_args(["--workloads", "2"]).name == "partial"


def test_render_from_synthetic_results() -> None:
    cfg = run.parse_args(["--quick"])
    size = 256 * bs.MiB
    w1 = {
        "size_bytes": size,
        "tools": ["curl", "bgtransfer get (daemon)"],
        "notes": {},
        "runs": [
            {**_rec("curl", True, 800.0), "wall": size / 800e6},
            {
                **_rec("bgtransfer get (daemon)", True, 400.0, daemon_cpu_s=0.4, client_cpu_s=0.2),
                "wall": size / 400e6,
            },
        ],
    }
    w2 = {
        "count": 10,
        "size_bytes": 16384,
        "concurrency": 16,
        "tools": ["curl --parallel"],
        "runs": [{**_rec("curl --parallel", True, 0.0), "files_per_s": 100.0}],
    }
    w4 = {
        "size_bytes": size,
        "rate_mib_s": 100,
        "kill_at": 0.4,
        "runs": [
            {
                "rep": 0,
                "ok": True,
                "killed_at_bytes": 100 * bs.MiB,
                "resumed_from": 98 * bs.MiB,
                "lost_after_checkpoint_bytes": 2 * bs.MiB,
                "nginx_bytes_sent": size + 3 * bs.MiB,
                "redownloaded_mib": 3.0,
                "requests": [{}, {}],
                "get_rc": 0,
            }
        ],
    }
    meta = {
        "nproc": 2,
        "mem_gib": 24,
        "kernel": "6",
        "loadavg_start": (0.1, 0.2, 0.3),
        "date": "today",
        **dict.fromkeys(["curl", "aria2c", "wget", "nginx", "pypdl", "python"], "1"),
        "aiohttp": "3",
        "bgtransfer": "0.1.0",
        "git": "abc",
        "src_uncommitted_files": 0,
    }
    md, js = run.render(meta, cfg, {1: w1, 2: w2, 4: w4, 9: {"exception": "boom"}})
    assert "| bgtransfer get (daemon) | 1 | 400 | 400-400 |" in md
    assert "| 0.50 |" in md  # the ratio to curl
    assert "goal ≤ 4 MiB: met" in md
    assert "did not complete" in md
    assert js["workloads"]["1"]["summary"][0]["tool"] == "curl"


def test_render_https_rows_and_the_durable_comparison() -> None:
    cfg = run.parse_args(["--quick"])
    size = 256 * bs.MiB
    # curl: 1.0 s + 0.5 s sync; bgtransfer: 1.25 s + 0 s. Alone 0.80x, durable 1.20x.
    w6 = {
        "workload": 6,
        "tls": True,
        "size_bytes": size,
        "tools": ["curl", "bgtransfer get (daemon)"],
        "notes": {},
        "runs": [
            {**_rec("curl", True, size / 1.0 / 1e6, durable_s=1.5), "wall": 1.0},
            {
                **_rec("bgtransfer get (daemon)", True, size / 1.25 / 1e6, durable_s=1.25),
                "wall": 1.25,
            },
        ],
    }
    w7 = {
        "workload": 7,
        "tls": True,
        "count": 1000,
        "size_bytes": 16384,
        "concurrency": 16,
        "tools": ["curl --parallel"],
        "runs": [{**_rec("curl --parallel", True, 0.0), "files_per_s": 100.0}],
    }
    meta = {
        "nproc": 2,
        "mem_gib": 24,
        "kernel": "6",
        "loadavg_start": (0.1, 0.2, 0.3),
        "date": "today",
        **dict.fromkeys(["curl", "aria2c", "wget", "nginx", "pypdl", "python"], "1"),
        "aiohttp": "3",
        "bgtransfer": "0.1.0",
        "git": "abc",
        "src_uncommitted_files": 0,
    }
    md, _ = run.render(meta, cfg, {6: w6, 7: w7})
    assert "## W6: one 256 MiB file over HTTPS" in md
    assert "## W7: 1000 files of 16 KiB over HTTPS" in md
    assert "x (curl + sync)" in md
    assert "| 0.80 | 1.20 |" in md


def test_limits_text_reads_daemon_status() -> None:
    res = {
        "concurrency": 16,
        "daemon_status": {
            "default": {"limits": {"max_active": 16, "max_per_host": 6}},
            "wide": {"limits": {"max_active": 16, "max_per_host": 16}},
        },
    }
    text = run.limits_text(res)
    assert "max_active=16, max_per_host=6" in text
    assert "max_active=16, max_per_host=16" in text
    assert "?" in run.limits_text({"concurrency": 16})


def test_compare_ratios_are_per_round_after_over_before() -> None:
    import compare

    def rec(side: str, rnd: int, rate: float, ok: bool = True) -> dict[str, Any]:
        tool = "curl" if side == "control" else "bgtransfer get (daemon)"
        return {"side": side, "tool": tool, "workload": 1, "round": rnd, "ok": ok,
                "rate": rate, "cpu": 1.0, "wall": 1.0}  # fmt: skip

    runs = [
        rec("control", 0, 900.0),
        rec("before", 0, 100.0),
        rec("after", 0, 150.0),
        rec("control", 1, 300.0),
        rec("after", 1, 60.0),
        rec("before", 1, 50.0),
        rec("before", 2, 10.0),
        rec("after", 2, 999.0, ok=False),  # a failed run pairs with nothing
    ]
    rows = compare.summarise(runs, rounds=3)
    (main, control) = rows
    assert main["ratio"] == pytest.approx(1.35)  # median of 1.5 and 1.2
    assert main["ratio_range"] == pytest.approx([1.2, 1.5])
    assert main["n_before"] == 3
    assert main["n_after"] == 2
    assert main["before"] == 50.0
    assert main["after"] == 105.0
    assert control["tool"].startswith("curl")
    assert control["before"] == 600.0
    meta = {
        "before": "main", "after": "HEAD", "before_commit": "a" * 40, "after_commit": "b" * 40,
        "patch": "", "rounds": 3, "tls": True, "w1_mib": 1024, "w2_files": 1000,
        "loadavg_start": 1.0, "loadavg_end": 2.0, "date": "today",
    }  # fmt: skip
    md = compare.render(meta, rows)
    assert "| 1.350 (1.200-1.500) |" in md
    assert "HTTPS (TLS 1.3)" in md


def test_compare_refuses_bad_arguments() -> None:
    import compare

    for argv in (["--before", "a"], ["--before", "a", "--after", "b", "--workloads", "3"]):
        with pytest.raises(SystemExit):
            compare.parse_args(argv)
    a = compare.parse_args(["--before", "a", "--after", "b"])
    assert a.workloads == [1, 2]
    assert a.rounds == 5


def test_timestamps_from_either_cli_json_shape() -> None:
    assert bs.timestamp(1764442318.824) == pytest.approx(1764442318.824)
    assert bs.timestamp("1764442318.5") == pytest.approx(1764442318.5)
    assert bs.timestamp("2026-11-29T18:51:58.824+00:00") == pytest.approx(1795978318.824)
    for bad, why in (("2026-11-29T18:51:58", "offset"), ("soon", "Invalid iso"), (None, "not a")):
        with pytest.raises(ValueError, match=why):
            bs.timestamp(bad)
