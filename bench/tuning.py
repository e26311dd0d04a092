"""Tuning experiments for the Embedder, each variant measured against the shipped config in one run.

``python -m bench.tuning`` starts one local stack and, for every variant, redeploys serve_config.yaml
with the variant's overrides (through the dashboard REST API, as ``serve deploy`` does), waits until
the Embedder runs it, and drives the same load: 32 concurrent clients, one short text per request.

Experiments:

* ``backend``: the Embedder on each CPU backend (``torch``, ``onnx-fp32``, ``onnx-int8``; ``args.backend``);
* ``layout``: threads per replica vs replicas on this machine's cores: 1 replica x N threads against
  N replicas x 1 thread (``args.threads`` + the Embedder's ``num_replicas``), N = cores;
* ``batch``: ``user_config`` sweeps, the Coalescer's ``max_texts_per_pass`` 32/128/512 x Serve's
  ``batch_wait_timeout_s`` 0/4 ms (applied live through ``reconfigure``, no replica restart).

The shipped config is measured first and again at the end, so drift on a noisy machine shows up in
the table. Figures are printed and written with ``--json``; nothing asserts on them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import LoadRunner, LoadSpec
from bench.machine import machine_info
from bench.run import embeddings_bodies
from bench.texts import text_set
from bench.timing import write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The Coalescer's cap on one model pass, and Serve's batch wait (0 = the shipped no-wait batching).
PASS_SIZES = (32, 128, 512)
BATCH_WAITS_S = (0.0, 0.004)
EXPERIMENTS = ("backend", "layout", "batch")
BACKENDS = ("torch", "onnx-fp32", "onnx-int8")


@dataclass(frozen=True)
class Variant:
    name: str
    experiment: str
    num_replicas: int | None = None
    threads: int | None = None
    backend: str | None = None
    user_config: dict[str, Any] = field(default_factory=dict)


def variants(experiments: tuple[str, ...], cores: int) -> list[Variant]:
    out = [Variant("shipped", "baseline")]
    if "backend" in experiments:
        out.extend(Variant(f"backend {name}", "backend", backend=name) for name in BACKENDS)
    if "layout" in experiments:
        out.append(Variant(f"1 replica x {cores} threads", "layout", num_replicas=1, threads=cores))
        if cores > 1:
            out.append(Variant(f"{cores} replicas x 1 thread", "layout", num_replicas=cores, threads=1))
    if "batch" in experiments:
        for size in PASS_SIZES:
            for wait in BATCH_WAITS_S:
                out.append(Variant(f"pass {size} / {wait * 1000:g} ms", "batch",
                                   user_config={"max_batch_size": 8, "batch_wait_timeout_s": wait,
                                                "max_texts_per_pass": size}))
    out.append(Variant("shipped (again)", "baseline"))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.stack import local_stack, with_overrides

    cores = os.cpu_count() or 1
    plan = variants(tuple(args.experiments), cores)
    short = text_set("short")
    bodies = embeddings_bodies(short, 1, 1000)
    result: dict[str, Any] = {"machine": machine_info(), "command": " ".join(["python -m bench.tuning", *sys.argv[1:]]),
                              "load": {"clients": args.clients, "max_requests": args.requests,
                                       "max_seconds": args.seconds}, "variants": []}
    started = time.perf_counter()
    # The user's shape (the machine's CPUs) unless a layout variant runs N replicas of 1 CPU each: they
    # need N CPUs next to the Gateway (0.25) and relay (0.1), one more than a user's N-core node has.
    # Logical CPUs only: the variants still share the same physical cores.
    layouts = [v.num_replicas for v in plan if v.num_replicas]
    num_cpus = max(layouts) + 1 if layouts and max(layouts) > 1 else None
    with LoadRunner() as runner, local_stack(num_cpus=num_cpus) as stack:
        assert stack.config is not None
        shipped = stack.config
        for variant in plan:
            print(f"[tuning] {variant.name} ...", flush=True)
            config = with_overrides(shipped, num_replicas=variant.num_replicas, threads=variant.threads,
                                    backend=variant.backend, user_config=variant.user_config or None)
            row: dict[str, Any] = {"name": variant.name, "experiment": variant.experiment,
                                   "num_replicas": variant.num_replicas, "threads": variant.threads,
                                   "backend": variant.backend,
                                   "user_config": variant.user_config}
            try:
                deploy_started = time.perf_counter()
                if config != stack.config:
                    stack.redeploy(config)
                row["deploy_s"] = round(time.perf_counter() - deploy_started, 1)
                before = stack.batch_stats()
                spec = LoadSpec(url=f"{stack.url}/v1/embeddings", bodies=bodies, concurrency=args.clients,
                                max_requests=args.requests, max_duration_s=args.seconds,
                                warmup_requests=2 * args.clients)
                row.update(runner.run(spec).as_dict())
                after = stack.batch_stats()
                if before and after and "error" not in before and "error" not in after:
                    batches = after["batches"] - before["batches"]
                    row["mean_calls_per_batch"] = (after["calls"] - before["calls"]) / batches if batches else None
            except Exception as exc:  # one broken variant must not lose the others
                row["error"] = f"{type(exc).__name__}: {exc}"
            result["variants"].append(row)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    base = next((r for r in result["variants"] if r["name"] == "shipped" and "items_per_s" in r), None)
    for row in result["variants"]:
        if base and "items_per_s" in row and base["items_per_s"]:
            row["vs_shipped"] = row["items_per_s"] / base["items_per_s"]
    return result


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(result: dict[str, Any]) -> None:
    m = result["machine"]
    print()
    print(f"Embedder tuning, {m['date']}, {m['cpu_model']}, {m['logical_cores']} cores, "
          f"load avg at start {m['load_average_at_start']}; {result['load']['clients']} clients x 1 short text")
    header = (f"{'variant':<26} {'texts/s':>8} {'vs shipped':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'calls/batch':>11} {'errors':>6} {'client cpu':>10}")
    print(header)
    print("-" * len(header))
    for r in result["variants"]:
        if "error" in r:
            print(f"{r['name']:<26} failed: {r['error']}")
            continue
        print(f"{r['name']:<26} {_fmt(r.get('items_per_s')):>8} {_fmt(r.get('vs_shipped'), 2):>10} "
              f"{_fmt(r.get('p50_ms')):>8} {_fmt(r.get('p99_ms')):>8} {_fmt(r.get('mean_calls_per_batch')):>11} "
              f"{r.get('errors', 0):>6} {_fmt(r.get('client_cpu_pct'), 0) + '%':>10}")
    print(f"total {result['elapsed_s']} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tuning", description="Embedder tuning experiments")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS),
                        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help=f"comma-separated: {','.join(EXPERIMENTS)}")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (one text per request)")
    parser.add_argument("--requests", type=int, default=3000, help="most requests per variant")
    parser.add_argument("--seconds", type=float, default=20.0, help="most seconds per variant")
    parser.add_argument("--quick", action="store_true", help="400 requests / 5 s per variant")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "tuning.json", help="where to write results")
    args = parser.parse_args(argv)
    unknown = set(args.experiments) - set(EXPERIMENTS)
    if unknown:
        parser.error(f"unknown experiments: {', '.join(sorted(unknown))}; known: {', '.join(EXPERIMENTS)}")
    if args.quick:
        args.requests, args.seconds = min(args.requests, 400), min(args.seconds, 5.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    write_json(args.json, result)
    print_table(result)
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
