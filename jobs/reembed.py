"""Bulk re-embedding as a Ray Job: ``python -m jobs.reembed --source SOURCE --model MODEL [...]``.

Pipeline (Ray Data, streaming): source rows → :func:`jobs.qdrant_sink.prepare_batch` (validate,
point IDs for the target version, skip points already written) → :class:`jobs.embed_udf.EmbedBatch`
(an actor pool running the online backend code) → :class:`jobs.qdrant_sink.QdrantDatasink`
(per-tenant batched upserts through the store actor).

Cross-model: ``--source collection:minilm-l6-v2 --model all-mpnet-base-v2`` moves each tenant's route of the
SOURCE model (the name its requests use) onto a new version of ``--model``'s collection
(:func:`jobs.migration.route_model_of`); ``--rollback --model minilm-l6-v2`` returns it. The Serve app must serve
both models for the whole migration (:func:`check_served`).

Per tenant (jobs/migration.py, serve_app/db/routes.py): a tenant whose live collection is the target is
filled in place; any other tenant is marked migrating (writers then also write the target), its rows
land in ``embeddings__{model}__{version}``, the target is verified against the source by point set (one
catch-up pass), and only then does that tenant switch (``--no-switch`` verifies only). ``--dry-run``
writes nothing; ``--rollback`` and ``--finalize`` are database steps (:func:`route_command`). Reruns are
idempotent: point IDs are deterministic and already-written points are skipped. The job row (type
``reembed``; ``--job-id``, else one of its own) carries progress and the result.

Importing this module starts nothing (no Ray, no store, no database).
"""

from __future__ import annotations

import _thread
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from deployments.model_paths import ModelPaths
from deployments.vector_store import StoreConfig, VectorStore, collection_name, open_store, parse_collection_name
from jobs import migration, sources
from jobs.resources import TASK_CPUS, InsufficientResourcesError, ResourcePlan, plan_resources
from serve_app.reembed_args import ReembedArgs

if TYPE_CHECKING:
    from ray.actor import ActorHandle

    from serve_app.settings import Settings

log = logging.getLogger("heimdex.reembed")

RESULT_PREFIX = "REEMBED_RESULT "
PROGRESS_PREFIX = "REEMBED_PROGRESS "
JOB_TYPE = "reembed"
PROGRESS_INTERVAL_S = 2.0


# Tenant under which a re-embed spanning several tenants is tracked (no tenant's GET /jobs shows it).
OPERATOR_ORG = "_operator"


def ray_submission_id() -> str | None:
    """The Ray Jobs submission id of this driver, when it runs as a Ray Job."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        value = json.loads(raw).get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
    return str(value) if value else None


class VerificationError(RuntimeError):
    """Target counts do not match source rows minus failed rows; the alias was not switched."""


# ---------------------------------------------------------------------------------------- tracking


class JobTracker:
    """Keeps one ``jobs`` row up to date; progress updates never fail the run."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        from serve_app.db import make_engine, make_sessionmaker

        self.job_id = job_id
        self._engine = make_engine(settings.resolved_database_url)
        self._sessions = make_sessionmaker(self._engine)
        self._lock = threading.Lock()

    @classmethod
    def create(cls, settings: Settings, args: ReembedArgs) -> JobTracker:
        """A new ``reembed`` job row for a run nobody created one for: under the one ``--org`` tenant
        (``OPERATOR_ORG`` when the run spans tenants), keyed by the Ray submission id so a retried
        driver finds its row again."""
        from serve_app.db import JobRepository, make_engine, make_sessionmaker

        orgs = args.org or []
        org = orgs[0] if len(orgs) == 1 else OPERATOR_ORG
        key = f"reembed:{ray_submission_id() or uuid.uuid4()}"
        engine = make_engine(settings.resolved_database_url)
        try:
            with make_sessionmaker(engine)() as session:
                job_id = JobRepository(session).create_tracked_job(org, JOB_TYPE, key, "ray-job-submit").job.id
        finally:
            engine.dispose()
        return cls(settings, job_id)

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


def cluster_plan(args: ReembedArgs) -> ResourcePlan:
    """The embedding actors' plan for the connected cluster as it is now (see :mod:`jobs.resources`)."""
    import ray

    return plan_resources(total=ray.cluster_resources(), free=ray.available_resources(),
                          node_cores=os.cpu_count() or 1, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                          concurrency=args.concurrency)


class ProgressReporter(threading.Thread):
    """Polls the sink's progress actor and publishes stage/progress every few seconds. If no row has
    reached the sink ``placement_timeout_s`` after the start (an actor or task that cannot be placed),
    it interrupts the run with a message naming what the cluster lacks."""

    def __init__(self, progress: ActorHandle, total: int | None, tracker: JobTracker | None,
                 dry_run: bool, interval_s: float = PROGRESS_INTERVAL_S,
                 placement_timeout_s: float | None = None, plan: ResourcePlan | None = None) -> None:
        super().__init__(name="reembed-progress", daemon=True)
        self.progress = progress
        self.total = total
        self.tracker = tracker
        self.dry_run = dry_run
        self.interval_s = interval_s
        self.placement_timeout_s = placement_timeout_s
        self.plan = plan
        self.stalled: str | None = None
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

    def publish(self) -> dict[str, Any] | None:
        try:
            snap = self.snapshot()
        except Exception as exc:
            log.warning("progress poll failed: %s", type(exc).__name__)
            return None
        stage = "checking" if self.dry_run else ("writing" if snap["embedded"] else "embedding")
        percent = min(99, int(100 * snap["rows"] / self.total)) if self.total else None
        print(PROGRESS_PREFIX + json.dumps({"stage": stage, "progress": percent, **snap}), flush=True)
        if self.tracker is not None:
            self.tracker.update(stage, percent, {"partial": True, **snap})
        return snap

    def _check_placement(self, snap: dict[str, Any] | None) -> bool:
        timeout = self.placement_timeout_s
        if timeout is None or (snap is not None and snap.get("rows", 0) > 0):
            return False
        if time.monotonic() - self.started_at < timeout:
            return False
        import ray

        self.stalled = (
            f"no row reached the sink {timeout:.0f}s after the start: the embedding actors "
            f"({self.plan.as_dict() if self.plan else 'no plan'}) or their tasks could not be placed; "
            f"the cluster has {ray.available_resources().get('CPU', 0.0):.2f} CPU and "
            f"{ray.available_resources().get('GPU', 0.0):g} GPU free of {ray.cluster_resources().get('CPU', 0.0):g} "
            f"CPU; pass a smaller --num-cpus (or --num-gpus), --concurrency 1, or a longer --placement-timeout-s")
        log.error("%s", self.stalled)
        _thread.interrupt_main()
        return True

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            if self._check_placement(self.publish()):
                return


# ---------------------------------------------------------------------------------------------- run


@dataclass
class Pipeline:
    """What one pass of the Ray Data pipeline needs; :meth:`write` runs it and returns the sink summary."""

    store: VectorStore  # the driver's
    store_config: StoreConfig  # what each Ray Data task opens its own store from
    target: str
    model: str
    version: str
    source: sources.SourceSpec
    batch_size: int
    flush_size: int
    dry_run: bool
    plan: ResourcePlan | None
    paths: ModelPaths  # where the embedding actors find the weights (the driver's Settings)

    def dataset(self, collections: dict[str, str] | None, orgs: list[str] | None) -> Any:
        import ray

        from jobs.embed_udf import EmbedBatch
        from jobs.qdrant_sink import prepare_batch

        task_cpus = self.plan.task_cpus if self.plan else TASK_CPUS
        ds = sources.build_dataset(self.source, store_config=self.store_config, orgs=orgs, collections=collections,
                                   task_cpus=task_cpus)
        prepare: Any = prepare_batch
        check_in = None if self.dry_run and not self._target_exists() else self.target
        ds = ds.map_batches(
            prepare, batch_size=self.batch_size, batch_format="pandas", num_cpus=task_cpus,
            fn_kwargs={"store_config": self.store_config, "collection": check_in, "model": self.model,
                       "version": self.version},
        )
        if self.plan is not None:
            ds = ds.map_batches(
                EmbedBatch,
                fn_constructor_kwargs={"model": self.model, "paths": self.paths, "device": self.plan.device,
                                       "threads": self.plan.threads},
                batch_size=self.batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.plan.concurrency),
                num_cpus=self.plan.num_cpus, num_gpus=self.plan.num_gpus or None,
            )
        return ds

    def _target_exists(self) -> bool:
        return self.target in self.store.list_collections()

    def write(self, ds: Any, progress: ActorHandle) -> dict[str, Any]:
        from jobs.qdrant_sink import QdrantDatasink

        task_cpus = self.plan.task_cpus if self.plan else TASK_CPUS
        sink = QdrantDatasink(self.store_config, self.target, self.model, self.version, flush_size=self.flush_size,
                              dry_run=self.dry_run, progress=progress)
        ds.write_datasink(sink, ray_remote_args={"num_cpus": task_cpus})
        return sink.summary or {"per_tenant": {}, "totals": {}, "failed_examples": []}


def resolve_tenants(args: ReembedArgs, store: VectorStore, sessions: Any, model: str,
                    source: sources.SourceSpec) -> tuple[dict[str, str], dict[str, str] | None]:
    """(each tenant's live collection of ``model``, each tenant's source collection or None for files)."""
    if source.kind == "collection":
        assert source.model is not None
        orgs = args.org or sorted(sources.model_tenants(store, source.model))
        if source.version:
            source_collections = dict.fromkeys(orgs, collection_name(source.model, source.version))
        else:
            source_collections = {o: r.live for o, r in migration.routes_of(sessions, orgs, source.model).items()}
        present = set(store.list_collections())
        source_collections = {o: c for o, c in source_collections.items()
                              if c in present and int(store.count(c, o)) > 0}
        orgs = sorted(source_collections)
    else:
        source_collections = None
        if args.org:
            orgs = list(args.org)
        else:
            ds = sources.build_dataset(source, task_cpus=TASK_CPUS)
            orgs = sorted({str(o) for o in ds.unique("org_id")})
    lives = {o: r.live for o, r in migration.routes_of(sessions, orgs, model).items()}
    return lives, source_collections


def choose_target(args: ReembedArgs, store: VectorStore, model: str, source: sources.SourceSpec,
                  lives: dict[str, str], route_model: str | None = None) -> str:
    if args.to_version:
        return collection_name(model, args.to_version)
    if source.kind == "collection" and source.model == model and not source.version:
        return collection_name(model, migration.next_version(store, model))
    if route_model not in (None, model):
        # Cross-model: a version of its own, so the migrated points never share an ID space with the points
        # tenants write when they name ``model`` itself (those live in its registry version).
        return collection_name(model, migration.next_version(store, model))
    distinct = sorted(set(lives.values()))
    if len(distinct) > 1:
        raise migration.MigrationPlanError(
            f"the tenants' live collections of {model} differ ({', '.join(distinct)}); pass --to-version, or --org")
    from serve_app.routing import default_collection

    return distinct[0] if distinct else default_collection(model)


def run(args: ReembedArgs, settings: Settings, tracker: JobTracker | None = None) -> dict[str, Any]:
    """Run one re-embedding (or dry run) on the connected Ray cluster; returns the result."""

    from deployments.registry import get_model
    from serve_app.db import ROUTE_CACHE_TTL_S
    from serve_app.db.database import Database

    connect_ray()
    spec = get_model(args.model)
    if not args.source:
        raise ValueError("--source is required (unless --rollback or --finalize)")
    store_config = settings.store_config()
    store = open_store(store_config)
    db = Database(settings.resolved_database_url)
    source = sources.parse_source(args.source)
    if tracker is not None:
        tracker.update("reading", 0, message=f"reading {source.describe()}")

    # Cross-model (--source collection:<another model>): the routes that move are the source model's.
    route_model = migration.route_model_of(source.kind, source.model, spec.name)
    if route_model != spec.name and not args.dry_run:
        check_served(route_model, spec.name)
    lives, source_collections = resolve_tenants(args, store, db.sessions, route_model, source)
    target = choose_target(args, store, spec.name, source, lives, route_model)
    version = parse_collection_name(target)[1]
    live_counts = sources.count_collections(store, lives)
    moves = migration.plan_moves(target, lives, source_collections, live_counts)
    plan = None if args.dry_run else cluster_plan(args)  # fails now, with the fix, if it cannot be placed
    source_counts = None if source_collections is None else sources.count_collections(store, source_collections)
    total = sum(source_counts.values()) if source_counts is not None else None
    pipeline = Pipeline(store, store_config, target, spec.name, version, source, args.batch_size, args.flush_size,
                        args.dry_run, plan, settings.model_paths())
    job_id = tracker.job_id if tracker is not None else f"untracked-{uuid.uuid4()}"
    began = False
    try:
        if not args.dry_run:
            store.ensure_collection(spec.name, version, spec.dimension)
            migration.begin(db.sessions, moves, route_model, target, job_id, source.describe())
            began = any(m.mode == "migrate" for m in moves)
            if began:  # every writer sees "migrating" (and double-writes) before the source is read
                time.sleep(2 * ROUTE_CACHE_TTL_S + 0.5)
        started = time.monotonic()
        summary, steady = _write_pass(pipeline, source_collections, args, total, tracker, plan)
        elapsed = max(1e-6, time.monotonic() - started)
        result = _result(source, spec.name, target, moves, summary, source_counts, elapsed, steady, args, plan)
        result["route_model"] = route_model
        if args.dry_run:
            return result
        if tracker is not None:
            tracker.update("verifying", 99, {"partial": True, **summary["totals"]})
        result["reconciled"] = _verify(pipeline, moves, source_collections, summary, args, total, tracker, plan)
        result["verified"] = True
        if tracker is not None:
            tracker.update("switching", 99)
        result["routes"] = migration.finish(db.sessions, moves, route_model, job_id, source.describe(),
                                            switch=not args.no_switch)
        result["switched"] = sorted(m.org_id for m in moves if m.mode == "migrate" and not args.no_switch)
        began = False
        return result
    finally:
        if began:
            migration.abort(db.sessions, moves, route_model, job_id)
        db.dispose()


def _write_pass(pipeline: Pipeline, collections: dict[str, str] | None, args: ReembedArgs,
                total: int | None, tracker: JobTracker | None,
                plan: ResourcePlan | None) -> tuple[dict[str, Any], dict[str, float | None]]:
    """One run of the pipeline over ``collections``' tenants (or the file source), with progress."""
    import ray

    from jobs.qdrant_sink import ProgressCounter

    if collections is not None and not collections:
        return {"per_tenant": {}, "totals": {}, "failed_examples": []}, {}
    counter_cls: Any = ray.remote(ProgressCounter)
    progress: ActorHandle = counter_cls.options(num_cpus=0).remote()
    if plan is not None:
        from ray.data import DataContext
        from ray.data._internal.execution.interfaces import ExecutionResources

        # Ray Data sizes its budget from the whole cluster; the Serve app holds part of it.
        free = ray.available_resources()
        DataContext.get_current().execution_options.resource_limits = ExecutionResources(
            cpu=free.get("CPU", 0.0), gpu=free.get("GPU", 0.0))
    reporter = ProgressReporter(progress, total, tracker, pipeline.dry_run,
                                placement_timeout_s=None if pipeline.dry_run else args.placement_timeout_s,
                                plan=plan)
    if tracker is not None:
        tracker.update("checking" if pipeline.dry_run else "embedding", 0)
    started_wall = time.time()
    reporter.start()
    try:
        summary = pipeline.write(pipeline.dataset(collections, args.org), progress)
    except KeyboardInterrupt:
        if reporter.stalled:
            raise InsufficientResourcesError(reporter.stalled) from None
        raise
    finally:
        reporter.stop()
    steady_ref: Any = progress.steady_rate.remote(started_wall)
    steady: dict[str, float | None] = ray.get(steady_ref, timeout=30)
    return summary, steady


def _verify(pipeline: Pipeline, moves: list[migration.TenantMove], collections: dict[str, str] | None,
            summary: dict[str, Any], args: ReembedArgs, total: int | None, tracker: JobTracker | None,
            plan: ResourcePlan | None) -> dict[str, Any]:
    """Every embeddable source row of every tenant is in the target (one catch-up pass for rows written
    to the source while it was read), and a migrating target holds nothing the source lost meanwhile."""
    per_tenant: dict[str, dict[str, int]] = summary["per_tenant"]
    if collections is None:  # file source: the sink's own counts are the check
        bad = {t: c for t, c in per_tenant.items()
               if c.get("embedded", 0) + c.get("skipped_existing", 0) != c.get("rows", 0) - c.get("failed", 0)}
        if bad:
            raise VerificationError(f"rows neither written nor failed: {bad}")
        return {}
    report: dict[str, Any] = {}
    for attempt in range(2):
        missing = {}
        for move in moves:
            lost, extra = migration.reconcile(pipeline.store, move, pipeline.target)
            removed = migration.delete_extra(pipeline.store, pipeline.target, move.org_id, extra) if extra else 0
            report[move.org_id] = {"missing": len(lost), "extra_removed": report.get(move.org_id, {}).get(
                "extra_removed", 0) + removed, "catch_up_pass": attempt}
            if lost:
                missing[move.org_id] = move.source
        if not missing:
            return report
        if attempt == 0:
            log.info("catching up %d tenant(s) with rows written while the source was read", len(missing))
            _write_pass(pipeline, {t: c for t, c in missing.items() if c}, args, None, tracker, plan)
    raise VerificationError(f"target {pipeline.target} still lacks source rows after a catch-up pass: {report}")


def _result(source: sources.SourceSpec, model: str, target: str, moves: list[migration.TenantMove],
            summary: dict[str, Any], source_counts: dict[str, int] | None, elapsed: float,
            steady: dict[str, float | None], args: ReembedArgs, plan: ResourcePlan | None) -> dict[str, Any]:
    totals: dict[str, int] = summary["totals"]
    per_tenant: dict[str, dict[str, int]] = summary["per_tenant"]
    for tenant, n in (source_counts or {}).items():
        per_tenant.setdefault(tenant, {"rows": 0, "embedded": 0, "skipped_existing": 0, "failed": 0})
        per_tenant[tenant]["source_rows"] = n
    result: dict[str, Any] = {
        "source": source.describe(),
        "model": model,
        "target_version": parse_collection_name(target)[1],
        "target_collection": target,
        "tenants": {m.org_id: {"mode": m.mode, "live_before": m.live, "source": m.source} for m in moves},
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
        "resources": None if plan is None else plan.as_dict(),
    }
    if args.dry_run:
        result.update({"dry_run": True, "would_embed": result.pop("embedded"), "embedded_per_s": 0.0,
                       "would_skip": result["skipped_existing"],
                       "would_switch": sorted(m.org_id for m in moves if m.mode == "migrate" and not args.no_switch)})
    return result


APP_NAME = "heimdex"


def check_served(*models: str) -> None:
    """Refuse a cross-model migration the running app could not keep writing: from ``begin`` until a finalize,
    every write of a moving tenant is embedded by both models. Asks the app's relay which models it embeds
    with; with no Serve app on the cluster (a bulk run on its own) there is nothing to check."""
    try:
        from ray import serve

        handle: Any = serve.get_deployment_handle("OutboxRelay", app_name=APP_NAME)
        served = handle.status.remote().result(timeout_s=30).get("served_models")
    except Exception as exc:
        log.info("no Serve app %r to ask which models it serves (%s); not checked", APP_NAME, type(exc).__name__)
        return
    missing = [m for m in models if served is not None and m not in served]
    if missing:
        raise migration.MigrationPlanError(
            f"the Serve app serves {', '.join(served)} but a migration between {' and '.join(models)} needs both "
            f"(writes reach both collections until it is finalized); deploy serve_config.two-models.yaml "
            f"(or a config listing {', '.join(missing)}) first")


def connect_ray() -> None:
    import ray

    from serve_app.settings import get_settings

    if not ray.is_initialized():
        # HEIMDEX_RAY_ADDRESS pins the cluster: a job driver's RAY_ADDRESS is resolved from the host-wide
        # /tmp/ray/ray_current_cluster file, which names the newest cluster when a host runs several.
        ray.init(address=get_settings().ray_address)


def route_command(args: ReembedArgs, settings: Settings,
                  connect: Callable[[], None] | None = None) -> dict[str, Any]:
    """``--rollback`` (database only, instant) or ``--finalize`` (also deletes the points left behind,
    through the store actor of the cluster ``connect`` joins; refused before that when unverified)."""
    from deployments.registry import get_model
    from serve_app.db.database import Database

    model = get_model(args.model).name
    db = Database(settings.resolved_database_url)
    try:
        if args.rollback:
            return migration.rollback(db.sessions, model, args.org, args.to_version)
        if not args.org:
            raise ValueError("--finalize needs --org: it deletes the tenant's points from the collections it left")
        migration.check_finalizable(db.sessions, model, list(args.org))
        (connect or connect_ray)()
        return migration.finalize(db.sessions, open_store(settings.store_config()), model, list(args.org))
    finally:
        db.dispose()


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = ReembedArgs.parse(argv)
    from serve_app.settings import get_settings

    settings = get_settings()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_on_sigterm)  # `ray job stop`: record the stop, then exit
    if args.rollback or args.finalize:
        result = route_command(args, settings)
        print(RESULT_PREFIX + json.dumps({"status": "succeeded", **result}, default=str), flush=True)
        return 0
    # A run submitted straight to Ray Jobs (`ray job submit ... -- python -m jobs.reembed ...`) tracks
    # itself: it creates its own job row, visible in the tenant's GET /jobs like one made by POST /jobs/reembed.
    tracker = JobTracker(settings, args.job_id) if args.job_id else JobTracker.create(settings, args)
    try:
        tracker.start()
        result = run(args, settings, tracker)
    except BaseException as exc:
        error = "stopped (SIGTERM)" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SystemExit):
            log.warning("reembed stopped")
        else:
            log.exception("reembed failed")
        tracker.fail(error)
        tracker.close()
        print(RESULT_PREFIX + json.dumps({"status": "failed", "error": error}), flush=True)
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            raise
        return 1
    try:
        tracker.succeed(result)
    finally:
        tracker.close()
    print(RESULT_PREFIX + json.dumps({"status": "succeeded", "job_id": tracker.job_id, **result}, default=str),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
