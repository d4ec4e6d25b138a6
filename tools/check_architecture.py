"""The architecture gates of ARCHITECTURE.md that import-linter cannot express.

Run by `make lint`. It fails (exit 1, one line per breach) when:

- a product module is longer than 600 lines, or a module of `bgtransfer.testing` longer
  than 800: past that size a module holds more than one concept (issue 15);
- a function's cyclomatic complexity is above radon grade D (30) in the product, or above
  20 in `bgtransfer.testing`, whose servers must stay easy to read to be trusted;
- two modules of the package import each other, directly or through others, counting
  imports under `if TYPE_CHECKING:` and inside functions: a cycle means two concepts that
  cannot be understood, tested or replaced one at a time.

`--report` prints the numbers without failing, for the edit-test loop.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp
from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parent.parent / "src" / "bgtransfer"
PRODUCT_LINES = 600
TESTING_LINES = 800
PRODUCT_COMPLEXITY = 30  # the top of radon's grade D
TESTING_COMPLEXITY = 20


def _is_testing(path: Path) -> bool:
    return "testing" in path.relative_to(ROOT).parts[:1]


def size_breaches() -> Iterator[str]:
    for path in sorted(ROOT.rglob("*.py")):
        limit = TESTING_LINES if _is_testing(path) else PRODUCT_LINES
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            yield f"{path.relative_to(ROOT.parent)}: {lines} lines (limit {limit})"


def complexity_breaches() -> Iterator[str]:
    for path in sorted(ROOT.rglob("*.py")):
        limit = TESTING_COMPLEXITY if _is_testing(path) else PRODUCT_COMPLEXITY
        for block in cc_visit(path.read_text(encoding="utf-8")):
            if block.complexity > limit:
                yield (
                    f"{path.relative_to(ROOT.parent)}:{block.lineno}: {block.fullname} "
                    f"has complexity {block.complexity} (limit {limit})"
                )


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative so a deep chain cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def import_cycles() -> Iterator[str]:
    graph = grimp.build_graph("bgtransfer", cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    for component in _strongly_connected(edges):
        yield "import cycle: " + " <-> ".join(component)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="print, do not fail")
    args = parser.parse_args(argv)
    breaches = [*size_breaches(), *complexity_breaches(), *import_cycles()]
    for line in breaches:
        print(line)
    if breaches and not args.report:
        print(f"{len(breaches)} architecture breach(es); see ARCHITECTURE.md", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
