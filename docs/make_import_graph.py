"""Draw the import graph of Heimdex's packages into docs/architecture.md (between the markers).

Run `python docs/make_import_graph.py` after moving code; `--check` exits 1 when the drawing is stale
(tests/unit/test_layering.py runs it). Nodes are folders (and the entry-point modules); an arrow
A --> B means some module of A imports B. Only imports of our own packages count; imports inside a
package are not drawn.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("serve_app", "deployments", "jobs", "cluster")
# Entry points sit above everything: they wire the rest together and may import any layer.
ENTRY_POINTS = {"serve_app/cli.py": "serve_app.cli", "serve_app/app.py": "serve_app.app"}
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- import-graph:begin -->", "<!-- import-graph:end -->"


def node_of(path: Path) -> str:
    """The graph node of a source file: its entry-point name, or its package."""
    rel = path.relative_to(ROOT).as_posix()
    return ENTRY_POINTS.get(rel, rel.split("/")[0])


def node_of_module(module: str) -> str:
    name = ".".join(module.split(".")[:2])
    return name if name in ENTRY_POINTS.values() else module.split(".")[0]


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            source = node_of(path)
            for node in ast.walk(ast.parse(path.read_text())):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                           else [])
                for module in modules:
                    if module.split(".")[0] in PACKAGES:
                        target = node_of_module(module)
                        if target != source:
                            graph[source].add(target)
    return graph


def render() -> str:
    lines = [BEGIN, "```mermaid", "graph TD"]
    for source, targets in sorted(edges().items()):
        lines += [f"    {source.replace('.', '_')}[{source}] --> {t.replace('.', '_')}[{t}]" for t in sorted(targets)]
    lines += ["```", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/architecture.md's graph is stale")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    updated = head + render() + tail
    if args.check:
        if updated != text:
            print("docs/architecture.md's import graph is stale: run python docs/make_import_graph.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
