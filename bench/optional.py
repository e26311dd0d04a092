"""Calls into bench modules written separately (``bench.bulk``, ``bench.backends``), if present.

Those modules are optional for the runner: a missing module, a missing function or a failure becomes
``{"skipped": reason}`` and the figure is recorded as null. Keyword arguments are passed only when the
called function's signature names them, so either side can grow without breaking the other.

Contract (documented in docs/benchmarks.md):

* ``bench.bulk.measure_bulk(**kw) -> dict`` with ``bulk_ratio`` (or ``ratio``), or with a throughput
  (``texts_per_s`` / ``segments_per_s``) that the runner divides by the raw throughput.
* ``bench.backends.measure_backends(**kw) -> dict`` (or ``measure_int8_speedup`` / ``compare_backends``)
  with ``int8_speedup`` (or ``speedup``). Failing those, ``bench.backends.main(argv)`` is run as its
  command line is (``--json PATH``, and shorter ``--seconds`` / ``--rounds`` in quick mode) and its JSON
  is read: ``workloads.<set>.speedup_int8_vs_torch_fp32``, the SHORT set's being the figure.

Keyword arguments offered: ``quick``, ``n`` (texts: fewer in quick mode), ``url``, ``stack``,
``baseline`` (the raw figures dict), ``raw_texts_per_s`` (raw best short throughput), ``texts`` (the
SHORT set).
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from collections.abc import Callable
from typing import Any


def _find(module_name: str, names: tuple[str, ...]) -> tuple[Callable[..., Any] | None, str]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None, f"{module_name} is not there (written separately)"
        return None, f"{module_name} could not be imported: {exc}"
    except Exception as exc:
        return None, f"{module_name} failed to import: {type(exc).__name__}: {exc}"
    for name in names:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn, f"{module_name}.{name}"
    return None, f"{module_name} has none of {', '.join(names)}"


def call_optional(module_name: str, names: tuple[str, ...], offered: dict[str, Any]) -> dict[str, Any]:
    """Call the first function found; its dict result (or a float under ``value``) with ``source``."""
    fn, where = _find(module_name, names)
    if fn is None:
        return {"skipped": where}
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in offered.items() if k in params}
    try:
        result = fn(**kwargs)
    except Exception as exc:
        return {"skipped": f"{where} raised {type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
    if isinstance(result, dict):
        return {"source": where, **result}
    if isinstance(result, int | float):
        return {"source": where, "value": float(result)}
    return {"source": where, "value": None, "unrecognised_result": repr(result)[:300]}


def backends_via_main(quick: bool) -> dict[str, Any]:
    """Run ``bench.backends.main`` with ``--json`` into a temp file and return its figures, with
    ``int8_speedup`` (SHORT workload) and ``int8_speedup_by_workload`` added."""
    import json
    import tempfile
    from pathlib import Path

    fn, where = _find("bench.backends", ("main",))
    if fn is None:
        return {"skipped": where}
    with tempfile.TemporaryDirectory(prefix="heimdex-bench-int8-") as tmp:
        path = Path(tmp) / "backends.json"
        argv = ["--json", str(path)] + (["--seconds", "1.0", "--rounds", "1"] if quick else [])
        try:
            fn(argv)
            figures: dict[str, Any] = json.loads(path.read_text())
        except (Exception, SystemExit) as exc:
            return {"skipped": f"{where} {' '.join(argv)} failed: {type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=5)}
    speedups = {name: w.get("speedup_int8_vs_torch_fp32") for name, w in figures.get("workloads", {}).items()}
    return {"source": f"{where} {' '.join(argv[2:])}".strip(), "int8_speedup": speedups.get("short"),
            "int8_speedup_by_workload": speedups, **figures}


def first_number(result: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = result.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def bulk_ratio(result: dict[str, Any], raw_texts_per_s: float | None) -> float | None:
    ratio = first_number(result, ("bulk_ratio", "ratio", "value"))
    if ratio is not None:
        return ratio
    throughput = first_number(result, ("texts_per_s", "segments_per_s", "throughput"))
    if throughput is not None and raw_texts_per_s:
        return throughput / raw_texts_per_s
    return None


def int8_speedup(result: dict[str, Any]) -> float | None:
    return first_number(result, ("int8_speedup", "speedup", "value"))
