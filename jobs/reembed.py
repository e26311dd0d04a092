"""Bulk re-embedding as a Ray Job: ``python -m jobs.reembed --source SOURCE --model MODEL [...]``.

Pipeline (Ray Data, streaming): source rows → :func:`jobs.qdrant_sink.prepare_batch` (validate,
point IDs for the target version, skip points already written) → :class:`jobs.embed_udf.EmbedBatch`
(an actor pool running the online backend code) → :class:`jobs.qdrant_sink.QdrantDatasink`
(per-tenant batched upserts through the store actor).

Blue-green: rows land in ``embeddings__{model}__{to_version}``; once per-tenant counts check out
(target count == source rows - failed rows) the alias ``embeddings__{model}`` is switched to it
(``--no-switch`` leaves it). ``--dry-run`` reports what would happen and writes nothing;
``--rollback --to-version V`` points the alias at ``embeddings__{model}__{V}`` (V defaults to the
registry version). Reruns are idempotent: point IDs are deterministic and already-written points
are skipped. With ``--job-id`` the job row (type ``reembed``) is kept up to date. The last stdout
line is ``REEMBED_RESULT {json}``.

Importing this module starts nothing (no Ray, no store, no database).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.actor import ActorHandle

    from serve_app.settings import Settings

log = logging.getLogger("heimdex.reembed")

RESULT_PREFIX = "REEMBED_RESULT "
PROGRESS_PREFIX = "REEMBED_PROGRESS "
JOB_TYPE = "reembed"
PROGRESS_INTERVAL_S = 2.0
MAX_CONCURRENCY = 8


class VerificationError(RuntimeError):
    """Target counts do not match source rows minus failed rows; the alias was not switched."""


# --------------------------------------------------------------------------------------- arguments


def build_arg_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The job's options; ``heimdex reembed`` reuses them (``add_help=False`` as a parent parser)."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.reembed", description="Re-embed stored or file rows into a model version.",
        add_help=add_help,
    )
    parser.add_argument("--source", help="collection:<model>[@<version>] | jsonl:<path> | parquet:<path>")
    parser.add_argument("--model", required=True, help="registry model to embed with")
    parser.add_argument("--to-version", default=None, help="target version (default: the registry version)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per embedding batch")
    parser.add_argument("--concurrency", type=int, default=None, help="embedding actors (default: from cluster)")
    parser.add_argument("--num-cpus", type=float, default=None, help="CPUs per embedding actor")
    parser.add_argument("--num-gpus", type=float, default=None, help="GPUs per embedding actor (fractional ok)")
    parser.add_argument("--flush-size", type=int, default=256, help="points per upsert (64-256 recommended)")
    parser.add_argument("--dry-run", action="store_true", help="report what would happen; write nothing")
    parser.add_argument("--rollback", action="store_true", help="point the alias at --to-version and stop")
    parser.add_argument("--job-id", default=None, help="jobs row (type reembed) to keep up to date")
    parser.add_argument("--org", action="append", default=None, help="only this tenant (repeatable)")
    parser.add_argument("--no-switch", action="store_true", help="write and verify, but leave the alias")
    return parser


def to_argv(args: argparse.Namespace) -> list[str]:
    """The job's own command-line arguments from a parsed namespace (for submission)."""
    out: list[str] = []
    for action in build_arg_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                out.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value or []:
                out += [flag, str(item)]
        elif value is not None and value != action.default:
            out += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return out


# ---------------------------------------------------------------------------------------- tracking


class JobTracker:
    """Keeps one ``jobs`` row up to date; progress updates never fail the run."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        from serve_app.db import make_engine, make_sessionmaker

        self.job_id = job_id
        self._engine = make_engine(settings.resolved_database_url)
        self._sessions = make_sessionmaker(self._engine)
        self._lock = threading.Lock()

    def _transition(self, status: str, **kwargs: Any) -> None:
        from serve_app.db import JobRepository, JobStatus

        with self._lock, self._sessions() as session:
            JobRepository(session).transition(self.job_id, JobStatus(status), **kwargs)

    def start(self) -> None:
        from serve_app.db import Job, JobStatus

        with self._sessions() as session:
            job = session.get(Job, self.job_id)
            if job is None:
                raise LookupError(f"no job row {self.job_id!r}")
            status = JobStatus(job.status)
        if status in (JobStatus.FAILED, JobStatus.DEAD_LETTER):
            self._transition(JobStatus.QUEUED, stage="queued", progress=0, message="reembed rerun")
        self._transition(JobStatus.RUNNING, stage="reading", message="reembed started")

    def update(self, stage: str, progress: int | None = None, result: dict[str, Any] | None = None,
               message: str | None = None) -> None:
        try:
            self._transition("running", stage=stage, progress=progress, result=result, message=message)
        except Exception:
            log.warning("could not update job %s", self.job_id, exc_info=True)

    def succeed(self, result: dict[str, Any]) -> None:
        self._transition("succeeded", stage="done", progress=100, result=result, message="reembed finished")

    def fail(self, error: str, result: dict[str, Any] | None = None) -> None:
        try:
            self._transition("failed", stage="failed", error=error[:4000], result=result, message="reembed failed")
        except Exception:
            log.warning("could not mark job %s failed", self.job_id, exc_info=True)

    def close(self) -> None:
        self._engine.dispose()


# ---------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ResourcePlan:
    concurrency: int
    num_cpus: float
    num_gpus: float
    threads: int | None
    device: str


def plan_resources(args: argparse.Namespace) -> ResourcePlan:
    """Embedding actor resources from the arguments, defaulting from what the cluster has free."""
    import ray

    total = ray.cluster_resources()
    free = ray.available_resources()
    gpus = float(total.get("GPU", 0.0))
    num_gpus = float(args.num_gpus) if args.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if num_gpus > 0:
        num_cpus = float(args.num_cpus) if args.num_cpus is not None else 1.0
        concurrency = args.concurrency or max(1, min(MAX_CONCURRENCY, int(gpus // num_gpus)))
        return ResourcePlan(concurrency, num_cpus, num_gpus, None, "cuda")
    free_cpus = float(free.get("CPU", total.get("CPU", 1.0)))
    num_cpus = float(args.num_cpus) if args.num_cpus is not None else (2.0 if free_cpus >= 8 else 1.0)
    # Leave a little for the read/prepare/write tasks.
    concurrency = args.concurrency or max(1, min(MAX_CONCURRENCY, int((free_cpus - 0.75) // num_cpus)))
    return ResourcePlan(concurrency, num_cpus, 0.0, max(1, round(num_cpus)), "cpu")


class ProgressReporter(threading.Thread):
    """Polls the sink's progress actor and publishes stage/progress every few seconds."""

    def __init__(self, progress: ActorHandle, total: int | None, tracker: JobTracker | None,
                 dry_run: bool, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        super().__init__(name="reembed-progress", daemon=True)
        self.progress = progress
        self.total = total
        self.tracker = tracker
        self.dry_run = dry_run
        self.interval_s = interval_s
        self.started_at = time.monotonic()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def snapshot(self) -> dict[str, Any]:
        import ray

        ref: Any = self.progress.snapshot.remote()
        counts: dict[str, int] = ray.get(ref, timeout=10)
        elapsed = max(1e-6, time.monotonic() - self.started_at)
        return {
            **counts,
            "rows_total": self.total,
            "elapsed_s": round(elapsed, 2),
            "rows_per_s": round(counts.get("rows", 0) / elapsed, 1),
            "embedded_per_s": round(counts.get("embedded", 0) / elapsed, 1),
        }

    def publish(self) -> None:
        try:
            snap = self.snapshot()
        except Exception as exc:
            log.warning("progress poll failed: %s", type(exc).__name__)
            return
        stage = "checking" if self.dry_run else ("writing" if snap["embedded"] else "embedding")
        percent = min(99, int(100 * snap["rows"] / self.total)) if self.total else None
        print(PROGRESS_PREFIX + json.dumps({"stage": stage, "progress": percent, **snap}), flush=True)
        if self.tracker is not None:
            self.tracker.update(stage, percent, {"partial": True, **snap})

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.publish()


# ---------------------------------------------------------------------------------------------- run


def rollback(args: argparse.Namespace, store: ActorHandle) -> dict[str, Any]:
    from deployments.registry import get_model
    from deployments.vector_store.base import CollectionNotFoundError, alias_name, collection_name
    from jobs.sources import store_call

    version = args.to_version or get_model(args.model).version
    target = collection_name(args.model, version)
    if target not in store_call(store, "list_collections"):
        raise CollectionNotFoundError(target)
    alias = alias_name(args.model)
    previous = store_call(store, "get_alias", alias)
    store_call(store, "set_alias", alias, target)
    return {"rollback": True, "alias": alias, "target_collection": target, "previous_collection": previous,
            "alias_switched": previous != target}


def run(args: argparse.Namespace, settings: Settings, tracker: JobTracker | None = None) -> dict[str, Any]:
    """Run one re-embedding (or dry run / rollback) on the connected Ray cluster; returns the result."""
    import ray

    from deployments.registry import get_model
    from deployments.vector_store.actor import get_store
    from deployments.vector_store.base import alias_name, collection_name
    from jobs import sources
    from jobs.embed_udf import EmbedBatch
    from jobs.qdrant_sink import ProgressCounter, QdrantDatasink, prepare_batch
    from jobs.sources import store_call

    if not ray.is_initialized():
        # HEIMDEX_RAY_ADDRESS pins the cluster: a job driver's RAY_ADDRESS is resolved from the host-wide
        # /tmp/ray/ray_current_cluster file, which names the newest cluster when a host runs several.
        ray.init(address=os.environ.get("HEIMDEX_RAY_ADDRESS") or None)
    spec = get_model(args.model)
    store = get_store(settings)
    if args.rollback:
        return rollback(args, store)
    if not args.source:
        raise ValueError("--source is required (unless --rollback)")
    if not 1 <= args.batch_size <= 4096:
        raise ValueError("--batch-size must be within 1..4096")

    version = args.to_version or spec.version
    target = collection_name(spec.name, version)
    alias = alias_name(spec.name)
    source = sources.parse_source(args.source)
    if tracker is not None:
        tracker.update("reading", 0, message=f"reading {source.describe()}")

    previous = store_call(store, "get_alias", alias)
    source_counts: dict[str, int] | None = None
    if source.kind == "collection":
        source_collection = store_call(store, "resolve", source.collection_ref())
        if source_collection == target:
            raise ValueError(f"source and target are the same collection ({target})")
        tenants = sources.collection_tenants(store, source_collection, args.org)
        source_counts = sources.count_collection(store, source_collection, tenants)
        total: int | None = sum(source_counts.values())
        ds = sources.build_dataset(source, store=store, tenants=tenants)
    else:
        ds = sources.build_dataset(source, orgs=args.org)
        total = ds.count()

    target_exists = target in store_call(store, "list_collections")
    if not args.dry_run:
        store_call(store, "ensure_collection", spec.name, version, spec.dimension)
        target_exists = True

    prepare: Any = prepare_batch
    ds = ds.map_batches(
        prepare, batch_size=args.batch_size, batch_format="pandas", num_cpus=0.25,
        fn_kwargs={"store": store, "collection": target if target_exists else None,
                   "model": spec.name, "version": version},
    )
    plan = None
    if not args.dry_run:
        plan = plan_resources(args)
        ds = ds.map_batches(
            EmbedBatch,
            fn_constructor_kwargs={"model": spec.name, "device": plan.device, "threads": plan.threads},
            batch_size=args.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.concurrency),
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus or None,
        )
    counter_cls: Any = ray.remote(ProgressCounter)
    progress: ActorHandle = counter_cls.options(num_cpus=0).remote()
    sink = QdrantDatasink(store, target, spec.name, version, flush_size=args.flush_size,
                          dry_run=args.dry_run, progress=progress)
    reporter = ProgressReporter(progress, total, tracker, args.dry_run)
    if tracker is not None:
        tracker.update("checking" if args.dry_run else "embedding", 0)
    started = time.monotonic()
    started_wall = time.time()
    reporter.start()
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
    finally:
        reporter.stop()
    elapsed = max(1e-6, time.monotonic() - started)
    steady_ref: Any = progress.steady_rate.remote(started_wall)
    steady: dict[str, float | None] = ray.get(steady_ref, timeout=30)
    summary = sink.summary or {"per_tenant": {}, "totals": {}, "failed_examples": []}
    totals: dict[str, int] = summary["totals"]
    per_tenant: dict[str, dict[str, int]] = summary["per_tenant"]
    for tenant, n in (source_counts or {}).items():
        per_tenant.setdefault(tenant, {"rows": 0, "embedded": 0, "skipped_existing": 0, "failed": 0})
        per_tenant[tenant]["source_rows"] = n

    result: dict[str, Any] = {
        "source": source.describe(),
        "model": spec.name,
        "target_version": version,
        "target_collection": target,
        "alias": alias,
        "previous_collection": previous,
        "rows_total": totals.get("rows", 0),
        "embedded": totals.get("embedded", 0),
        "skipped_existing": totals.get("skipped_existing", 0),
        "failed": totals.get("failed", 0),
        "failed_examples": summary["failed_examples"],
        "per_tenant": per_tenant,
        "elapsed_s": round(elapsed, 2),
        "rows_per_s": round(totals.get("rows", 0) / elapsed, 1),
        "embedded_per_s": round(totals.get("embedded", 0) / elapsed, 1),
        # Start-up (planning, actor pool, model load) to the first write, then the rate after it.
        **{k: None if v is None else round(v, 2) for k, v in steady.items()},
        "batch_size": args.batch_size,
        "resources": None if plan is None else plan.__dict__,
    }
    if args.dry_run:
        result.update({
            "dry_run": True,
            "target_exists": target_exists,
            "would_embed": result.pop("embedded"),
            "embedded_per_s": 0.0,
            "would_skip": result["skipped_existing"],
            "alias_switched": False,
            "alias_would_switch": (not args.no_switch) and previous != target,
        })
        return result

    if tracker is not None:
        tracker.update("verifying", 99, {"partial": True, **totals})
    mismatches: dict[str, dict[str, int]] = {}
    for tenant, counts in per_tenant.items():
        expected = counts["rows"] - counts["failed"]
        actual = int(store_call(store, "count", target, tenant))
        counts["target_count"] = actual
        if actual != expected:
            mismatches[tenant] = {"expected": expected, "actual": actual}
    result["verified"] = not mismatches
    if mismatches:
        raise VerificationError(f"target counts differ from source rows minus failed rows: {mismatches}")

    switched = False
    if not args.no_switch:
        if tracker is not None:
            tracker.update("switching", 99)
        store_call(store, "set_alias", alias, target)
        switched = previous != target
    result["alias_switched"] = switched
    return result


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_arg_parser().parse_args(argv)
    from serve_app.settings import get_settings

    settings = get_settings()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_on_sigterm)  # `ray job stop`: record the stop, then exit
    tracker = JobTracker(settings, args.job_id) if args.job_id else None
    try:
        if tracker is not None:
            tracker.start()
        result = run(args, settings, tracker)
    except BaseException as exc:
        error = "stopped (SIGTERM)" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SystemExit):
            log.warning("reembed stopped")
        else:
            log.exception("reembed failed")
        if tracker is not None:
            tracker.fail(error)
            tracker.close()
        print(RESULT_PREFIX + json.dumps({"status": "failed", "error": error}), flush=True)
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            raise
        return 1
    if tracker is not None:
        try:
            tracker.succeed(result)
        finally:
            tracker.close()
    print(RESULT_PREFIX + json.dumps({"status": "succeeded", **result}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
