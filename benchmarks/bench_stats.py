"""Pure helpers of the benchmark runner: statistics, formatting, config and log rendering.

Nothing here starts a process or touches the network, so ``test_bench_smoke.py`` can check it
in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LogLine",
    "Summary",
    "aria2_input",
    "curl_config",
    "fmt",
    "md_table",
    "median",
    "parse_log_lines",
    "parse_proc_stat_cpu",
    "parse_proc_stat_times",
    "parse_status_kib",
    "parse_workloads",
    "ratio",
    "render_nginx_conf",
    "rotate",
    "spread_pct",
    "summarise",
    "timestamp",
]

MiB = 1 << 20
KNOWN_WORKLOADS = (1, 2, 4, 6, 7)


def median(xs: Sequence[float]) -> float:
    if not xs:
        raise ValueError("median of no values")
    return float(statistics.median(xs))


def spread_pct(xs: Sequence[float]) -> float:
    """(max - min) / median, in percent: how far apart the repetitions were."""
    m = median(xs)
    return 0.0 if m == 0 else 100.0 * (max(xs) - min(xs)) / m


def timestamp(value: object) -> float:
    """Seconds since the epoch from the CLI's JSON: a number (older revisions) or an ISO 8601
    string with an offset (``2026-11-29T18:51:58.824+00:00``)."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            when = dt.datetime.fromisoformat(value)
            if when.tzinfo is None:
                raise ValueError(f"timestamp without a UTC offset: {value!r}") from None
            return when.timestamp()
    raise ValueError(f"not a timestamp: {value!r}")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def rotate(items: Sequence[str], k: int) -> list[str]:
    """The round-robin order of repetition ``k``: start one tool later each time."""
    if not items:
        return []
    k %= len(items)
    return [*items[k:], *items[:k]]


def fmt(x: float | None, digits: int = 0) -> str:
    """A table cell: fixed digits, thousands unseparated, an en dash for 'no value'."""
    if x is None:
        return "-"
    return f"{x:.{digits}f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table; every row must have as many cells as there are headers."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}: {row!r}")
        cells = [str(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Summary:
    """The repetitions of one tool in one workload, reduced."""

    tool: str
    n: int
    failed: int
    metric: list[float]  # the rate (MB/s or files/s), successful runs only
    wall: list[float]
    cpu: list[float]
    rss_mib: list[float]
    extra: dict[str, list[float]] = field(default_factory=dict)

    @property
    def med(self) -> float | None:
        return median(self.metric) if self.metric else None

    @property
    def lo(self) -> float | None:
        return min(self.metric) if self.metric else None

    @property
    def hi(self) -> float | None:
        return max(self.metric) if self.metric else None

    @property
    def spread(self) -> float | None:
        return spread_pct(self.metric) if self.metric else None

    def med_of(self, key: str) -> float | None:
        vals = {
            "wall": self.wall,
            "cpu": self.cpu,
            "rss_mib": self.rss_mib,
        }.get(key)
        if vals is None:
            vals = self.extra.get(key, [])
        return median(vals) if vals else None

    def max_of(self, key: str) -> float | None:
        vals = {"rss_mib": self.rss_mib}.get(key, self.extra.get(key, []))
        return max(vals) if vals else None

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "n": self.n,
            "failed": self.failed,
            "median": self.med,
            "min": self.lo,
            "max": self.hi,
            "spread_pct": self.spread,
            "wall_median": self.med_of("wall"),
            "cpu_median": self.med_of("cpu"),
            "rss_mib_max": self.max_of("rss_mib"),
            "extra_median": {k: self.med_of(k) for k in sorted(self.extra)},
        }


def summarise(tool: str, runs: Sequence[Mapping[str, Any]], metric: str) -> Summary:
    """Reduce run records (dicts with ok, wall, cpu, rss_mib, <metric>, extra) of one tool."""
    mine = [r for r in runs if r["tool"] == tool]
    good = [r for r in mine if r["ok"]]
    extra: dict[str, list[float]] = {}
    for r in good:
        for k, v in r.get("extra", {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                extra.setdefault(k, []).append(float(v))
    return Summary(
        tool=tool,
        n=len(mine),
        failed=len(mine) - len(good),
        metric=[float(r[metric]) for r in good],
        wall=[float(r["wall"]) for r in good],
        cpu=[float(r["cpu"]) for r in good if r.get("cpu") is not None],
        rss_mib=[float(r["rss_mib"]) for r in good if r.get("rss_mib") is not None],
        extra=extra,
    )


def parse_workloads(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; unknown or repeated numbers are an error."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            n = int(part.lstrip("wW"))
        except ValueError:
            raise ValueError(f"not a workload number: {part!r}") from None
        if n not in KNOWN_WORKLOADS:
            raise ValueError(f"unknown workload {n}; known: {KNOWN_WORKLOADS}")
        if n in out:
            raise ValueError(f"workload {n} given twice")
        out.append(n)
    if not out:
        raise ValueError("no workload given")
    return out


def parse_proc_stat_times(text: str, clk_tck: int) -> tuple[float, float]:
    """(utime, stime) in seconds from the text of /proc/<pid>/stat (comm may hold spaces)."""
    rest = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is field 3, so utime (14) and stime (15) are rest[11], rest[12].
    return int(rest[11]) / clk_tck, int(rest[12]) / clk_tck


def parse_proc_stat_cpu(text: str, clk_tck: int) -> float:
    """utime + stime in seconds from the text of /proc/<pid>/stat."""
    return sum(parse_proc_stat_times(text, clk_tck))


def parse_status_kib(text: str, name: str) -> int | None:
    """A 'Name:  123 kB' line of /proc/<pid>/status, in KiB."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            parts = value.split()
            return int(parts[0]) if parts else None
    return None


def render_nginx_conf(
    *,
    prefix: str,
    data_dir: str,
    port: int,
    limited_rate: str,
    limited_log: str,
    workers: int = 2,
    tls_port: int | None = None,
    tls_cert: str = "",
    tls_key: str = "",
) -> str:
    """nginx serving ``data_dir`` on 127.0.0.1:port; /limited/ is rate-limited and logged.
    With ``tls_port`` the same files also over TLS 1.3 only on 127.0.0.1:tls_port."""
    tls = ""
    if tls_port is not None:
        tls = (
            f"        listen 127.0.0.1:{tls_port} ssl;\n"
            f"        ssl_certificate {tls_cert};\n"
            f"        ssl_certificate_key {tls_key};\n"
            "        ssl_protocols TLSv1.3;\n"
            # Resumption for the many-small-files runs that open several connections.
            "        ssl_session_cache shared:BENCHTLS:10m;\n"
        )
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    types {{ }}
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    log_format sent '$request_uri $status $bytes_sent $body_bytes_sent "$http_range"';
    server {{
        listen 127.0.0.1:{port};
{tls}        server_name localhost;
        root {data_dir};
        # pypdl 1.5.7 asks again with GET Range: bytes=0-0 when a HEAD lacks this header, and
        # nginx's 206 has no Accept-Ranges, so it would silently drop to one segment.
        add_header Content-Disposition "attachment";
        location /limited/ {{
            alias {data_dir}/;
            limit_rate {limited_rate};
            access_log {limited_log} sent;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class LogLine:
    uri: str
    status: int
    bytes_sent: int
    body_bytes_sent: int
    range: str


def parse_log_lines(lines: Iterable[str]) -> list[LogLine]:
    """Lines of the 'sent' log format of :func:`render_nginx_conf`; others are skipped."""
    out: list[LogLine] = []
    for line in lines:
        parts = line.split(" ", 4)
        if len(parts) != 5:
            continue
        uri, status, sent, body, rng = parts
        try:
            out.append(LogLine(uri, int(status), int(sent), int(body), rng.strip().strip('"')))
        except ValueError:
            continue
    return out


def aria2_input(pairs: Iterable[tuple[str, str, str]]) -> str:
    """aria2c ``-i`` file: (url, dir, name) per download."""
    return "".join(f"{url}\n  dir={d}\n  out={name}\n" for url, d, name in pairs)


def _curl_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def curl_config(pairs: Iterable[tuple[str, str]]) -> str:
    """curl ``-K`` file: (url, output path) per download."""
    return "".join(
        f"url = {_curl_quote(url)}\noutput = {_curl_quote(path)}\n" for url, path in pairs
    )
