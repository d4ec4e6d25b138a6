"""Print the task machine's state diagram (Mermaid) from its transition table.

The diagram is drawn from the very table ``TransferMachine.handle()`` consults
(``bgtransfer._protocol._transitions``), so it cannot drift from the code. Arrows are
labelled with the events that take a task from one phase to another; events that may leave
the task where it is are listed in a note beside the phase. Paste the output into
ARCHITECTURE.md (a ```mermaid block). ``--uploads`` draws the upload machine's table.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", action="store_true", help="the upload machine's table")
    args = parser.parse_args(argv)
    sys.stdout.write(diagram(UPLOAD_TRANSITIONS if args.uploads else TRANSITIONS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
