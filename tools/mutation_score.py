"""Print the mutation score of the pure core from mutmut's result files (``make mutate``).

The score is killed / checked, per module and in all. A mutant that no core test reaches
("no tests") counts as checked and not killed: a rule that nothing specifies is not tested.
A timeout counts as killed (the mutant made a test hang, as mutmut's own badge counts it).
Mutants mutmut never ran ("not checked", an interrupted run) are left out and reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut 3's exit codes (mutmut/stats.py); anything else is "suspicious".
_STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    37: "caught by type check",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
}
_KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def status(code: int | None) -> str:
    if code is None:
        return "not checked"
    return _STATUS.get(code, "suspicious")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("mutants/src/bgtransfer/_protocol"))
    parser.add_argument("--fail-under", type=float, default=0.0, help="exit 1 below this %%")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    args = parser.parse_args(argv)

    metas = sorted(args.dir.glob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {args.dir}: run `make mutate`", file=sys.stderr)
        return 2
    total: Counter[str] = Counter()
    survivors: list[str] = []
    print(f"{'module':<14} {'killed':>7} {'checked':>8} {'score':>7}  other")
    for meta in metas:
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        counts = Counter(status(c) for c in codes.values())
        survivors += [k for k, c in codes.items() if status(c) in ("survived", "no tests")]
        total.update(counts)
        print(_line(meta.name.removesuffix(".py.meta"), counts))
    print(_line("all", total))
    if args.survivors:
        print("\n".join(sorted(survivors)))
    return 0 if _score(total) >= args.fail_under else 1


def _score(counts: Counter[str]) -> float:
    checked = sum(n for s, n in counts.items() if s not in ("not checked", "skipped"))
    killed = sum(counts[s] for s in _KILLED)
    return 100.0 * killed / checked if checked else 0.0


def _line(name: str, counts: Counter[str]) -> str:
    checked = sum(n for s, n in counts.items() if s not in ("not checked", "skipped"))
    killed = sum(counts[s] for s in _KILLED)
    other = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()) if s != "killed" and n)
    return f"{name:<14} {killed:>7} {checked:>8} {_score(counts):>6.1f}%  {other}"


if __name__ == "__main__":
    sys.exit(main())
