"""Bulk path throughput: the Ray Data re-embedding pipeline vs the engine ceiling (``bench.ceiling``).

``python -m bench.bulk [--n 4000] [--batch-size 128] [--concurrency 1] [--num-cpus C] [--json PATH]``

The pipeline embeds N short texts (``bench.texts.short_texts``) with minilm-l6-v2 in one run:

* bulk: ``jobs.reembed.run`` over a JSONL source into a throw-away store (its own store actor and
  data directory), i.e. read → validate/point IDs/skip check → EmbedBatch actor pool → Qdrant sink
  with real upserts. Two rates: end to end (embedded rows over the whole wall time, which includes
  planning, starting the actor pool and loading the model: ~10 s that a migration of millions of
  rows pays once) and steady (rows embedded after the first write over the time from the first
  write to the last). ``bulk_ratio`` is the steady one; both are printed and recorded.
* ceiling: the fastest raw fp32 engine at its best batch size on SHORT texts (same generator), from
  the same ``bench.run`` run, or measured first in a subprocess when run alone. Both rates are divided
  by it: ``bulk_ratio`` (steady) and ``bulk_ratio_end_to_end``.

Starts its own local Ray (``ray.init(address="local")``) unless one is already initialised (the
bench stack's, in ``bench.run``: there the job plans its own actors, as on a user's cluster).
Prints figures, never asserts on them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.timing import write_json

MODEL = "minilm-l6-v2"
# Rows the bench's bulk step re-embeds: enough for a steady state well past the ~10 s start-up.
BENCH_ROWS = 12000


def write_jsonl(path: Path, texts: list[str]) -> None:
    with path.open("w") as handle:
        for i, text in enumerate(texts):
            org = "bench-a" if i % 2 == 0 else "bench-b"
            handle.write(json.dumps({"org_id": org, "asset_id": f"asset-{i % 50}", "segment_id": f"seg-{i}",
                                     "text": text}) + "\n")


def bulk_rate(texts: list[str], batch_size: int, concurrency: int, num_cpus: float | None) -> dict[str, Any]:
    """Run the real re-embedding pipeline over ``texts`` into a temporary store; returns its result."""
    import ray

    from deployments.vector_store.actor import get_store
    from jobs import reembed
    from serve_app.db import upgrade_database
    from serve_app.reembed_args import ReembedArgs
    from serve_app.settings import Settings

    cores = os.cpu_count() or 1
    own_cluster = not ray.is_initialized()
    if own_cluster:
        # Run alone (`python -m bench.bulk`), not a user's shape on purpose: the pipeline without the
        # app, its one embedding actor on every core against raw encode on every core, and one logical
        # CPU more than the machine has so the read/write tasks (0.25 CPU each) run beside that actor.
        # A private temp dir, so this cluster does not become the host's "current" one that other
        # processes' ray.init("auto") / job drivers would connect to.
        ray.init(address="local", num_cpus=cores + 1, include_dashboard=False,
                 log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="hx-bulk-"))
    workdir = Path(tempfile.mkdtemp(prefix="heimdex-bench-bulk-"))
    (workdir / "data").mkdir()  # the job's SQLite database (tenant routes, its job row) lives there
    settings = Settings(data_dir=workdir / "data", store_actor_name=f"bench-bulk-{uuid.uuid4().hex[:8]}",
                        qdrant_url=None)
    try:
        source = workdir / "rows.jsonl"
        write_jsonl(source, texts)
        argv = ["--source", f"jsonl:{source}", "--model", MODEL, "--to-version", "bench",
                "--batch-size", str(batch_size), "--concurrency", str(concurrency), "--no-switch"]
        # On the bench stack (bench.run's bulk step: the user's shape, the app holding part of the
        # CPUs) the job sizes its actors from the cluster's free CPUs, as a re-embed on a user's
        # cluster does; an actor asking every core could never start there.
        # Alone, too: the plan fits what is free (the store actor holds a CPU of its own).
        if num_cpus is not None:
            argv += ["--num-cpus", f"{num_cpus:g}"]
        args = ReembedArgs.parse(argv)
        upgrade_database(settings.resolved_database_url)  # the job keeps tenant routes there
        started = time.perf_counter()
        result = reembed.run(args, settings)
        result["wall_s"] = time.perf_counter() - started
        return result
    finally:
        handle: Any = get_store(settings.store_config())
        try:
            ray.get(handle.close.remote())
        finally:
            ray.kill(handle)
            shutil.rmtree(workdir, ignore_errors=True)


def measure_bulk(n: int = BENCH_ROWS, batch_size: int = 128, concurrency: int = 1, num_cpus: float | None = None,
                 ceiling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pipeline rows/s (steady and end to end) over the engine ceiling on SHORT texts: ``ceiling``
    (``bench.ceiling``'s ``ceiling.short``, from the same run) or measured here first."""
    from bench.texts import short_texts

    if ceiling is None:
        from bench.ceiling import FP32_ENGINES, measure_ceiling
        from bench.timing import in_subprocess

        ceiling = in_subprocess(measure_ceiling, sets=("short",), engines=FP32_ENGINES)["ceiling"]["short"]
    assert ceiling is not None
    texts = list(short_texts(n))
    result = bulk_rate(texts, batch_size, concurrency, num_cpus)
    end_to_end_per_s = result["embedded"] / result["elapsed_s"]
    steady_per_s = result.get("steady_embedded_per_s") or end_to_end_per_s
    return {
        "n": n,
        "bulk_rows_per_s": round(steady_per_s, 1),
        "bulk_rows_per_s_end_to_end": round(end_to_end_per_s, 1),
        "bulk_startup_s": result.get("startup_s"),
        "bulk_embedded": result["embedded"],
        "bulk_elapsed_s": result["elapsed_s"],
        "bulk_wall_s": round(result["wall_s"], 2),
        "bulk_resources": result.get("resources"),
        "ceiling": ceiling,
        "bulk_ratio": round(steady_per_s / ceiling["texts_per_s"], 3),
        "bulk_ratio_end_to_end": round(end_to_end_per_s / ceiling["texts_per_s"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12000, help="texts to embed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--num-cpus", type=float, default=None,
                        help="CPUs per embedding actor (default: all cores on its own cluster)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    figures = measure_bulk(args.n, args.batch_size, args.concurrency, args.num_cpus)
    top = figures["ceiling"]
    print(f"bulk pipeline: {figures['bulk_rows_per_s']:.1f} rows/s steady, "
          f"{figures['bulk_rows_per_s_end_to_end']:.1f} rows/s end to end ({figures['bulk_embedded']} rows in "
          f"{figures['bulk_elapsed_s']:.1f}s, {figures['bulk_startup_s']}s to the first write)")
    print(f"engine ceiling: {top['texts_per_s']:.1f}/s ({top['engine']}, batch {top['batch_size']})")
    print(f"ratio bulk/ceiling: {figures['bulk_ratio']:.3f} steady, {figures['bulk_ratio_end_to_end']:.3f} end to end")
    keys = ("bulk_rows_per_s", "bulk_rows_per_s_end_to_end", "ceiling", "bulk_ratio", "bulk_ratio_end_to_end")
    write_json(args.json, {k: figures[k] for k in keys} | {"details": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
