"""Print the task machine's state diagram (Mermaid) from its transition table.

The diagram is drawn from the very table ``TransferMachine.handle()`` consults
(``bgtransfer._protocol._transitions``), so it cannot drift from the code. Arrows are
labelled with the events that take a task from one phase to another; events that may leave
the task where it is are listed in a note beside the phase. Paste the output into
ARCHITECTURE.md (a ```mermaid block). ``--uploads`` draws the upload machine's table;
``--table`` prints the same rules as a Markdown table (event, phases that accept it and where
it leads, phases that ignore it).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from bgtransfer._models import PHASE_STATE, Phase
from bgtransfer._protocol._transitions import TRANSITIONS, UPLOAD_TRANSITIONS, Rule

_ORDER = list(Phase)


def _node(phase: Phase) -> str:
    return phase.name


def diagram(table: Mapping[type[Any], Rule]) -> str:
    """The Mermaid ``stateDiagram-v2`` source for ``table``."""
    arrows: dict[tuple[Phase, Phase], list[str]] = defaultdict(list)
    stays: dict[Phase, list[str]] = defaultdict(list)
    for kind, rule in table.items():
        for src, targets in rule.moves.items():
            for dst in targets:
                if dst is src:
                    stays[src].append(kind.__name__)
                else:
                    arrows[src, dst].append(kind.__name__)
    out = ["stateDiagram-v2"]
    out.extend(f'    state "{p.value} ({PHASE_STATE[p].name})" as {_node(p)}' for p in _ORDER)
    out.append(f"    [*] --> {_node(Phase.QUEUED)}")
    for (src, dst), events in sorted(
        arrows.items(), key=lambda item: (_ORDER.index(item[0][0]), _ORDER.index(item[0][1]))
    ):
        out.append(f"    {_node(src)} --> {_node(dst)} : {', '.join(sorted(events))}")
    for phase in _ORDER:
        if stays.get(phase):
            out.append(f"    note right of {_node(phase)}")
            out.append(f"        stays on {', '.join(sorted(stays[phase]))}")
            out.append("    end note")
    out.append(f"    {_node(Phase.DONE)} --> [*]")
    return "\n".join(out) + "\n"


def _short(phases: frozenset[Phase] | set[Phase]) -> str:
    return ", ".join(p.value for p in _ORDER if p in phases) or "-"


def table(rules: Mapping[type[Any], Rule]) -> str:
    """The rules as a Markdown table, one row per event type."""
    out = [
        "| event | accepted in -> may lead to | ignored in |",
        "|---|---|---|",
    ]
    for kind, rule in rules.items():
        # Sources that lead to the same phases share one entry: "a, b -> c".
        groups: dict[frozenset[Phase], set[Phase]] = defaultdict(set)
        for src, targets in rule.moves.items():
            groups[targets].add(src)
        moves = "; ".join(
            f"{_short(sources)} -> {_short(targets)}"
            for targets, sources in sorted(
                groups.items(), key=lambda g: min(_ORDER.index(p) for p in g[1])
            )
        )
        out.append(f"| `{kind.__name__}` | {moves} | {_short(rule.ignores)} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", action="store_true", help="the upload machine's table")
    parser.add_argument("--table", action="store_true", help="a Markdown table, not Mermaid")
    args = parser.parse_args(argv)
    rules = UPLOAD_TRANSITIONS if args.uploads else TRANSITIONS
    sys.stdout.write(table(rules) if args.table else diagram(rules))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
