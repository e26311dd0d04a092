"""Every import arrow between our packages runs down, and the drawing in docs/architecture.md is current."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def graph_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_import_graph", ROOT / "docs" / "make_import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Each node may import only what is below it; the entry points wire the layers together.
ALLOWED = {
    "serve_app.cli": {"jobs", "serve_app", "deployments", "cluster"},
    "serve_app.app": {"serve_app", "deployments"},
    "jobs": {"serve_app", "deployments"},
    "serve_app": {"deployments", "cluster"},
    "deployments": set(),
    "cluster": set(),
}


def test_arrows_run_down() -> None:
    edges = graph_module().edges()
    for source, targets in edges.items():
        assert targets <= ALLOWED[source], f"{source} imports {sorted(targets - ALLOWED[source])}, above it"


def test_architecture_drawing_is_current() -> None:
    assert graph_module().main(["--check"]) == 0, "run python docs/make_import_graph.py"


def _environment_reads(path: Path) -> list[str]:
    """``os.environ`` / ``os.getenv`` reads in one file: every use of either but a write (``os.environ[k] = v``,
    ``os.environ.setdefault(k, v)``: the offline switches set before transformers is imported)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"{path.name}:{node.lineno} from os import {a.name}" for a in node.names
                      if a.name in ("environ", "getenv", "environb", "getenvb")]
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
                and node.attr in ("environ", "getenv", "environb", "getenvb")):
            continue
        parent = parents.get(node)
        writes = (isinstance(parent, ast.Attribute) and parent.attr == "setdefault") or (
            isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store))
        if not writes:
            found.append(f"{path.name}:{node.lineno} {ast.unparse(parent or node)}")
    return found


def test_deployments_read_no_environment() -> None:
    """Configuration reaches deployments/ as values (serve_app.settings.Settings: store_config(), model_paths());
    a read of the environment down there would be a second, unchecked Settings."""
    reads = [read for path in sorted((ROOT / "deployments").rglob("*.py")) for read in _environment_reads(path)]
    assert not reads, f"deployments/ reads the environment; take it from Settings instead: {reads}"


def test_the_environment_check_sees_reads(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('import os\nfrom os import getenv\na = os.environ.get("X")\nb = os.getenv("Y")\n'
                      'c = os.environ["Z"]\nos.environ["W"] = "1"\nos.environ.setdefault("V", "1")\n')
    reads = _environment_reads(sample)
    assert sorted(int(r.split(" ", 1)[0].rsplit(":", 1)[1]) for r in reads) == [2, 3, 4, 5], reads
