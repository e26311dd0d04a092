"""The outbox relay: delivers accepted embed jobs at least once, with idempotent effects.

A Serve deployment started with the app. Its loop claims due outbox rows (leases, so several
relays can run and a crashed one's rows come back after the lease), embeds their texts through
the Embedder deployment in one call per model, upserts the vectors under deterministic point IDs
(a redelivered row overwrites the same point), then finishes all the batch's jobs in one
transaction. A failure sends the rows back with exponential backoff and jitter; past the last
attempt the job is DEAD_LETTER with the error.

While the live real-embeddings switch is off (``heimdex embeddings off``; see
:mod:`serve_app.switches`) it claims mock-model jobs only: real-model jobs stay QUEUED with their
outbox rows untouched (not leased, attempts unchanged) and go on once the switch is on again.
A batch claimed before the relay saw the change still finishes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from ray import serve

from deployments.logging_setup import configure_logging, fields
from deployments.mock_vectors import MOCK_MODEL, mock_vector
from deployments.point_ids import point_id_for
from deployments.tenant_labels import RELAY_TENANT
from deployments.vector_store import (
    AsyncVectorStore,
    open_async_store,
    open_store,
    parse_collection_name,
)
from deployments.vector_store.payloads import segment_payload, segment_point
from serve_app.db.database import Database
from serve_app.db.documents import DOCUMENT_CLEANUP_TASK, DocumentRepository, chunk_segment_id
from serve_app.db.jobs import EMBED_MOCK_TASK, EMBED_TASK
from serve_app.db.outbox import ClaimedMessage, OutboxQueue
from serve_app.db.routes import Route
from serve_app.embedder_client import ServeEmbedderClient
from serve_app.reembed_args import ReembedArgs
from serve_app.routing import RouteResolver, ensure_model_collections
from serve_app.settings import Settings, get_settings
from serve_app.switches import real_embeddings_reader

logger = logging.getLogger("heimdex.relay")

REEMBED_TASK = "reembed"
EMBED_TASKS = frozenset({EMBED_TASK, EMBED_MOCK_TASK})
# What the relay still claims while the real-embeddings switch is off: mock-model embed jobs only. Real-model
# embed jobs and re-embeds (a real model's work) stay queued, untouched, until the switch is on again.
SWITCHED_OFF_TASKS = frozenset({EMBED_MOCK_TASK})
CRASH_POINTS = frozenset({"after_claim", "after_upsert"})
# Longest pause between two polls of an outbox that has stayed empty.
RELAY_IDLE_POLL_MAX_S = 0.25
# Per embedding model: message index in the group -> (vector, tokens fed to the model, truncated).
Embedded = dict[str, dict[int, tuple[Any, int, bool]]]


def point_payload(msg: ClaimedMessage, model: str, model_version: str) -> dict[str, Any]:
    """A point's payload in a collection of ``model`` (the collection's own model, as the bulk job writes it)."""
    p = msg.payload
    return segment_payload(p["org_id"], p["asset_id"], p["segment_id"], model, model_version,
                           str(p.get("text") or ""), datetime.now(UTC).isoformat(), job_id=msg.job_id,
                           chunk=p.get("chunk"))


class RelayCore:
    """The relay's work, independent of Serve (the fault tests drive it directly too)."""

    def __init__(self, settings: Settings, embedders: Any, store: AsyncVectorStore,
                 owner: str | None = None) -> None:
        self.settings = settings
        self.embedders = embedders
        self.store = store
        self.db = Database(settings.resolved_database_url)
        self.routes = RouteResolver(self.db.sessions)
        self.owner = owner or f"relay-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.queue = OutboxQueue(self.db.sessions, self.owner, settings.relay_lease_s, settings.relay_max_attempts,
                                 settings.relay_backoff_base_s, settings.relay_backoff_max_s)
        # The live rollback switch, read before every claim (cached for at most SWITCH_CACHE_TTL_S).
        self.real_embeddings = real_embeddings_reader(self.db.readonly_sessions, settings.enable_real_embeddings)
        self.delivered = 0
        self.failed_attempts = 0
        self.dead_letters = 0
        # Fault-injection hooks (tests only; refused in production, see arm_crash).
        self.paused = False
        self.crash_at: str | None = None
        self.crash: Any = lambda: os._exit(1)  # in-process tests replace this with a raising callable

    def arm_crash(self, point: str) -> None:
        """Test hook: crash (``self.crash()``, by default ``os._exit(1)``) at ``point`` of the next
        batch: "after_claim" (rows leased, nothing done) or "after_upsert" (points written, jobs not
        finished). Refused in production."""
        if self.settings.env == "production":
            raise RuntimeError("fault injection is disabled in production")
        if point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}; one of {sorted(CRASH_POINTS)}")
        self.crash_at = point

    def _maybe_crash(self, point: str) -> None:
        if self.crash_at == point:
            self.crash_at = None
            logger.warning("fault injection: relay %s crashing %s", self.owner, point)
            self.crash()

    async def run_once(self) -> int:
        """Claim and process one batch; returns how many messages were claimed."""
        if self.paused:
            return 0
        tasks = None if await self.real_embeddings.aget() else SWITCHED_OFF_TASKS
        messages = await asyncio.to_thread(self.queue.claim, self.settings.relay_batch_size, tasks)
        if not messages:
            return 0
        self._maybe_crash("after_claim")
        unknown = [m for m in messages if m.task not in EMBED_TASKS | {REEMBED_TASK, DOCUMENT_CLEANUP_TASK}]
        for msg in unknown:
            await self._fail([msg], f"unknown outbox task {msg.task!r}")
        for msg in (m for m in messages if m.task == REEMBED_TASK):
            await self._submit_reembed(msg)
        for msg in (m for m in messages if m.task == DOCUMENT_CLEANUP_TASK):
            await self._clean_document(msg)
        embed = [m for m in messages if m.task in EMBED_TASKS]
        if embed:
            await self._process_embed(embed)
        return len(messages)

    async def _process_embed(self, messages: list[ClaimedMessage]) -> None:
        alive = await asyncio.to_thread(self.queue.mark_running_many, messages, "embedding", 30)
        messages = [m for m, ok in zip(messages, alive, strict=True) if ok]
        by_model: dict[str, list[ClaimedMessage]] = defaultdict(list)
        for msg in messages:
            by_model[msg.payload["model"]].append(msg)
        await asyncio.gather(*(self._embed_group(model, group) for model, group in by_model.items()))

    async def _embed_group(self, model: str, messages: list[ClaimedMessage]) -> None:
        """Embed and upsert one model's messages. ``model`` is the model the writes NAMED; each tenant's route
        says which collections they reach, and each collection gets the vector of the model it was built with
        (a tenant migrating minilm -> mpnet gets a MiniLM vector in its live collection and an mpnet vector in
        the pending one: one embedding per distinct model, shared by the tenants that need it)."""
        try:
            tenants = sorted({m.payload["org_id"] for m in messages})
            routes = {t: await self.routes.aresolve(t, model) for t in tenants}
            outputs: Embedded = {}
            await self._embed_for(messages, routes, outputs)
            alive = await asyncio.to_thread(self.queue.mark_running_many, messages, "upserting", 70)
            keep = [i for i, ok in enumerate(alive) if ok]
            by_tenant: dict[str, list[int]] = defaultdict(list)
            for i in keep:
                by_tenant[messages[i].payload["org_id"]].append(i)
            # Asked again right before the upsert (cached for at most ROUTE_CACHE_TTL_S): a migration that began
            # meanwhile is seen, and a model it adds is embedded now.
            routes = {t: await self.routes.aresolve(t, model) for t in by_tenant}
            await self._embed_for(messages, routes, outputs)
            written: dict[int, tuple[str, str, str, list[str]]] = {}
            for tenant, rows in by_tenant.items():
                # The tenant's route says where its vectors live now: live, plus the collection a running
                # migration fills (or the one a rollback would return to). Each (model, version) has its own IDs.
                route = routes[tenant]
                for target in route.write_targets:
                    target_model, target_version = parse_collection_name(target)
                    vectors = outputs[target_model]
                    # The model's vector and the BM25 terms of the text, side by side in one point (hybrid search).
                    points = [segment_point(point_id_for(tenant, messages[i].payload["asset_id"],
                                                         messages[i].payload["segment_id"], target_model,
                                                         target_version),
                                            vectors[i][0], point_payload(messages[i], target_model, target_version))
                              for i in rows]
                    await self.store.upsert(target, tenant, points, wait=True)
                    if target == route.live:
                        for i, point in zip(rows, points, strict=True):
                            written[i] = (point.id, target_model, target_version, route.write_targets)
            superseded = await self._undo_superseded(messages, by_tenant, routes)
            self._maybe_crash("after_upsert")
            results = []
            for i in keep:
                p = messages[i].payload
                pid, live_model, live_version, targets = written[i]
                vector, tokens, truncated = outputs[live_model][i]
                results.append((messages[i], {
                    "org_id": p["org_id"], "asset_id": p["asset_id"], "segment_id": p["segment_id"],
                    "point_id": pid, "collection": targets[0], "collections": targets, "model": model,
                    "embedding_model": live_model, "model_version": live_version, "vector_size": len(vector),
                    "tokens": tokens, "truncated": truncated,
                    "completed_at": datetime.now(UTC).isoformat(),
                    **({"superseded": True} if i in superseded else {}),
                }))
            done = await asyncio.to_thread(self.queue.complete_many, results)
            self.delivered += sum(done)
        except Exception as exc:  # any failure: retry with backoff, dead-letter past max attempts
            logger.warning("relay batch of %d %s jobs failed: %s", len(messages), model, exc, extra=fields(
                job_ids=[m.job_id for m in messages][:20], model=model, stage="embed_upsert", count=len(messages)))
            await self._fail(messages, f"{type(exc).__name__}: {str(exc)[:500]}")

    async def _undo_superseded(self, messages: list[ClaimedMessage], by_tenant: dict[str, list[int]],
                               routes: dict[str, Route]) -> set[int]:
        """Document chunks just written whose document is no longer at their version (changed or deleted since
        they were accepted): their points are deleted again, now. Read AFTER the upsert, so a change committed
        later is covered by its own cleanup job (serve_app/db/documents.py explains the ordering)."""
        chunks = [i for rows in by_tenant.values() for i in rows if messages[i].payload.get("chunk")]
        if not chunks:
            return set()
        pairs = {(messages[i].payload["org_id"], messages[i].payload["asset_id"]) for i in chunks}

        def read() -> dict[tuple[str, str], str | None]:
            with self.db.readonly_sessions() as session:
                return DocumentRepository(session).current_versions(pairs)

        current = await asyncio.to_thread(read)
        stale = {i for i in chunks if current.get((messages[i].payload["org_id"], messages[i].payload["asset_id"]))
                 != messages[i].payload["chunk"]["doc_version"]}
        for tenant, rows in by_tenant.items():
            segments = [(messages[i].payload["asset_id"], messages[i].payload["segment_id"])
                        for i in rows if i in stale]
            if segments:
                await self._delete_points(tenant, segments, routes[tenant].write_targets)
        return stale

    async def _delete_points(self, tenant: str, segments: list[tuple[str, str]], collections: list[str]) -> int:
        """Delete the tenant's points of these (asset_id, segment_id)s from ``collections``, by their
        deterministic IDs in each (idempotent: an ID already gone is no error)."""
        deleted = 0
        for collection in collections:
            try:
                model, version = parse_collection_name(collection)
            except ValueError:
                continue
            ids = [point_id_for(tenant, asset, segment, model, version) for asset, segment in segments]
            deleted += await self.store.delete_ids(collection, tenant, ids)
        return deleted

    async def _clean_document(self, msg: ClaimedMessage) -> None:
        """Delete the chunks of a replaced document version (a ``document_cleanup`` job) from every collection."""
        p = msg.payload
        try:
            if not await asyncio.to_thread(self.queue.mark_running, msg, "deleting", 50):
                return  # the lease is lost (another relay has it) or the job was canceled
            segments = [(p["asset_id"], chunk_segment_id(stale["doc_version"], i))
                        for stale in p["stale"] for i in range(int(stale["chunks"]))]
            deleted = await self._delete_points(p["org_id"], segments, await self.store.list_collections())
            done = await asyncio.to_thread(self.queue.complete, msg, {
                "org_id": p["org_id"], "asset_id": p["asset_id"], "replaced_by": p["replaced_by"],
                "stale": p["stale"], "deleted": deleted, "completed_at": datetime.now(UTC).isoformat()})
            self.delivered += int(done)
        except Exception as exc:
            logger.warning("document cleanup job %s failed: %s", msg.job_id, exc)
            await self._fail([msg], f"{type(exc).__name__}: {str(exc)[:500]}")

    async def _embed_for(self, messages: list[ClaimedMessage], routes: dict[str, Route], outputs: Embedded) -> None:
        """Fill ``outputs[model][i]`` (vector, tokens, truncated) for every message ``i`` whose tenant's route
        (in ``routes``) writes into a collection of ``model`` and that has no such vector yet: one call per
        model, holding only the messages that need it (an mpnet pass only for tenants migrating to mpnet)."""
        wanted: dict[str, list[int]] = defaultdict(list)
        for i, msg in enumerate(messages):
            route = routes.get(msg.payload["org_id"])
            for embed_model in route.write_models if route is not None else []:
                if i not in outputs.get(embed_model, {}):
                    wanted[embed_model].append(i)
        for embed_model, rows in wanted.items():
            done = outputs.setdefault(embed_model, {})
            if embed_model == MOCK_MODEL:
                for i in rows:
                    p = messages[i].payload
                    done[i] = (mock_vector(p["org_id"], p["asset_id"], p["segment_id"]), 0, False)
                continue
            output = await self.embedders.embed(embed_model, [str(messages[i].payload["text"]) for i in rows])
            for k, i in enumerate(rows):
                done[i] = (output.vectors[k], int(output.token_counts[k]), bool(output.truncated[k]))

    async def _submit_reembed(self, msg: ClaimedMessage) -> None:
        """Hand a re-embed job to Ray Jobs. The submission id is derived from the job id, so a
        redelivered message finds its earlier submission instead of starting a second run."""
        from cluster import jobs_client

        submission_id = f"heimdex-reembed-{msg.job_id}"
        raw = msg.payload["args"]  # a ReembedArgs dump (rows written before it: the argv itself)
        args = [str(a) for a in raw] if isinstance(raw, list) else ReembedArgs.model_validate(raw).to_argv()
        try:
            await asyncio.to_thread(self.queue.mark_running, msg, "submitting", 1)
            try:
                import ray

                # Pin the driver to this cluster (a host may run several, e.g. tests beside `make run`).
                pin = {"HEIMDEX_RAY_ADDRESS": ray.get_runtime_context().gcs_address}
                await asyncio.to_thread(jobs_client.submit_reembed, self.settings.dashboard_url, args, msg.job_id,
                                        submission_id, extra_env=pin)
            except Exception as exc:
                if "already exists" not in str(exc):
                    raise
            await asyncio.to_thread(self.queue.hand_off, msg, "submitted", {"submission_id": submission_id})
        except Exception as exc:
            logger.warning("re-embed submission for job %s failed: %s", msg.job_id, exc)
            await self._fail([msg], f"{type(exc).__name__}: {str(exc)[:500]}")

    async def _fail(self, messages: list[ClaimedMessage], error: str) -> None:
        for msg in messages:
            state = await asyncio.to_thread(self.queue.fail, msg, error)
            self.failed_attempts += 1
            if state is not None and state.value == "dead":
                self.dead_letters += 1
                logger.warning("job dead-lettered after %d attempts", msg.attempts,
                               extra=fields(job_id=msg.job_id, stage="dead_letter", attempt=msg.attempts))

    def status(self) -> dict[str, Any]:
        return {"owner": self.owner, "delivered": self.delivered, "failed_attempts": self.failed_attempts,
                "dead_letters": self.dead_letters, "outbox": self.queue.counts_by_state(),
                "oldest_due_age_s": self.queue.oldest_due_age_s(),
                "real_embeddings": "on" if self.real_embeddings.get() else "off",
                "served_models": self.embedders.served_models()}


# Options (replicas, CPUs, queues, health checks) live in serve_config.yaml only.
@serve.deployment(name="OutboxRelay")
class OutboxRelay:
    def __init__(self, embedders: dict[str, Any]) -> None:
        configure_logging()
        settings = get_settings()
        store_config = settings.store_config()
        ensure_model_collections(open_store(store_config), embedders)
        store = open_async_store(store_config)
        # The write path is one tenant at the Embedder: its batches are already fair across tenants (the claim).
        embed_client = ServeEmbedderClient(embedders, settings.embed_timeout_s, tenant=RELAY_TENANT,
                                           calls_in_flight=settings.embed_calls_in_flight)
        self.core = RelayCore(settings, embed_client, store)
        self._stopping = asyncio.Event()
        self._last_error: str | None = None
        # Several batches in flight under a backlog: while one waits for the store to flush, the next is
        # embedding. Each worker claims its own leased rows, exactly as separate relay replicas would.
        # Only worker 0 polls an idle outbox; the others sleep until it finds a full batch.
        self._backlog = asyncio.Event()
        loop = asyncio.get_event_loop()
        self._tasks = [loop.create_task(self._loop(worker)) for worker in range(settings.relay_concurrency)]
        logger.info("outbox relay %s started with %d workers", self.core.owner, len(self._tasks))

    async def _loop(self, worker: int) -> None:
        settings = self.core.settings
        poll = settings.relay_poll_interval_s
        idle_rounds = 0
        while not self._stopping.is_set():
            if worker > 0:
                await self._backlog.wait()
            try:
                claimed = await self.core.run_once()
                self._last_error = None
            except Exception as exc:  # database down: keep trying, the rows stay in the outbox
                self._last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                logger.warning("relay loop error: %s", self._last_error)
                self._backlog.clear()
                await asyncio.sleep(min(5.0, poll * 20))
                continue
            if claimed >= settings.relay_batch_size:
                self._backlog.set()
                idle_rounds = 0
            elif claimed == 0:
                self._backlog.clear()
                if worker == 0:
                    # An idle outbox is polled less often, up to RELAY_IDLE_POLL_MAX_S between polls.
                    await asyncio.sleep(min(RELAY_IDLE_POLL_MAX_S, poll * 2 ** min(idle_rounds, 8)))
                    idle_rounds += 1
            else:
                idle_rounds = 0

    async def status(self) -> dict[str, Any]:
        status = await asyncio.to_thread(self.core.status)
        status["last_error"] = self._last_error
        status["paused"] = self.core.paused
        return status

    # Fault-injection hooks, reachable only through a deployment handle inside the Ray cluster.
    def pause(self) -> None:
        """Stop claiming new batches (the batch in progress finishes)."""
        self.core.paused = True

    def resume(self) -> None:
        self.core.paused = False

    def arm_crash(self, point: str) -> None:
        """Make this replica exit at ``point`` of its next batch (see :meth:`RelayCore.arm_crash`)."""
        self.core.arm_crash(point)

    def check_health(self) -> None:
        for task in self._tasks:
            if task.done():
                raise RuntimeError(f"relay loop stopped: {task.exception()!r}")

    def __del__(self) -> None:
        self._stopping.set()
