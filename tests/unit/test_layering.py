"""Every import arrow between our packages runs down, and the drawing in docs/architecture.md is current."""

from __future__ import annotations

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
