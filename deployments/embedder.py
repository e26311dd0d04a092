"""The Embedder deployment: one model backend per replica, batched across callers with @serve.batch.

Each call carries the texts of one request (one text for a search query, up to thousands for an
OpenAI-style request). ``@serve.batch`` gathers concurrent calls into one batch; the backend then
length-sorts and chunks the batch's texts so the model runs few, well-filled forward passes. The
model runs on one dedicated thread so the replica's event loop keeps accepting calls (and forming
the next batch) while the current one computes.

Serve's batcher closes a batch on a timer whether or not the model is free, so under steady load it
hands over many small batches that then queue behind the forward pass in progress. The
:class:`Coalescer` merges every batch that queued up while the model was busy into the next forward
pass: batch size follows load (one text when idle, hundreds under load) with no fixed wait.

Every call carries its tenant, and the Coalescer queues calls per tenant and forms passes by Deficit
Round Robin (:mod:`deployments.fair_queue`): while tenants compete a pass is one round of
``quantum_texts`` per tenant, so one tenant's backlog delays another's call by one short pass at most.
The last passes' composition is kept (:class:`PassRecord`, ``Embedder.recent_passes``) as evidence.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from ray import serve

from deployments.backends import EmbeddingBackend, EmbedOutput, load_backend
from deployments.fair_queue import DeficitRoundRobin
from deployments.logging_setup import configure_logging
from deployments.metrics import EmbedderMetrics
from deployments.model_paths import ModelPaths
from deployments.registry import get_model
from deployments.tenant_labels import UNNAMED_TENANT

logger = logging.getLogger("heimdex.embedder")

# Defaults for user_config; serve_config.yaml overrides them and `serve deploy` changes them live.
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.0
# Serve batches allowed past @serve.batch at once: the ones beyond the batch in the model wait in the
# Coalescer, where they can merge, instead of behind Serve's semaphore, where they cannot.
# max_batch_size x MAX_CONCURRENT_BATCHES = the Embedder's max_ongoing_requests (256).
MAX_CONCURRENT_BATCHES = 32
# Most texts merged into one model pass (the backend still chunks them by its token budget).
DEFAULT_MAX_TEXTS_PER_PASS = 512
# Texts each tenant with work gets per Deficit Round Robin round. While tenants compete a pass is one
# round, so this bounds how long one tenant's share of a pass holds the model for the others (32 short
# texts ~ 40 ms on 2 cores) at little cost in batch efficiency (onnx-fp32 runs near its best at batch 32).
DEFAULT_QUANTUM_TEXTS = 32
# A tenant served this recently still counts as competing: a trickle between two requests is not "alone".
CONTENTION_WINDOW_S = 1.0
# Model passes whose records (texts per tenant) are kept for inspection.
PASS_HISTORY = 2048


class EmbedderConfig(BaseModel):
    """The live-tunable part of an Embedder (its Serve ``user_config``); an unknown key or a value out of
    range fails the deploy (the deployment goes UNHEALTHY with the error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: StrictInt = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, description="calls per Serve batch")
    batch_wait_timeout_s: float = Field(DEFAULT_BATCH_WAIT_TIMEOUT_S, ge=0, le=1,
                                        description="Serve's wait for a batch to fill")
    max_texts_per_pass: StrictInt = Field(DEFAULT_MAX_TEXTS_PER_PASS, ge=1, le=65536,
                                          description="the Coalescer's cap on one model pass")
    fair_queueing: StrictBool = Field(True, description="per-tenant queues served round-robin; false: one FIFO")
    quantum_texts: StrictInt = Field(DEFAULT_QUANTUM_TEXTS, ge=1, le=65536, description="texts per tenant per round")

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> EmbedderConfig:
        """Validate a ``user_config`` (ValueError, naming the key, for anything wrong)."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ValueError("Embedder user_config: " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())) from None


@dataclass
class BatchStats:
    """How batches actually formed: the evidence that batching works under concurrency."""

    batches: int = 0
    calls: int = 0
    texts: int = 0
    tokens: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    largest: int = 0
    handle_calls: int = 0  # Ray handle calls received (the Gateway merges concurrent requests into one)
    requests: int = 0  # requests those calls carried

    def received(self, requests: int) -> None:
        self.handle_calls += 1
        self.requests += requests

    def record(self, calls: int, texts: int, tokens: int) -> None:
        self.batches += 1
        self.calls += calls
        self.texts += texts
        self.tokens += tokens
        self.sizes[calls] += 1
        self.largest = max(self.largest, calls)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "calls": self.calls,
            "texts": self.texts,
            "tokens": self.tokens,
            "largest_batch": self.largest,
            "handle_calls": self.handle_calls,
            "requests": self.requests,
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


@dataclass
class _Request:
    """One call's texts, queued under its tenant until a model pass takes them."""

    texts: list[str]
    tenant: str
    future: asyncio.Future[EmbedOutput]
    queued_s: float  # the Coalescer's clock when it was queued
    passes_before: int  # model passes started before it was queued


@dataclass(frozen=True)
class PassRecord:
    """What one model pass contained: the evidence that passes are formed fairly across tenants.

    ``requests`` holds ``(tenant, texts, nth)`` per call in the pass (a piece of ``quantum`` texts of a
    larger call counts as one): ``nth`` = 1 when this is the first pass to start after the call was
    queued, 2 the second, and so on.
    """

    seq: int
    texts: dict[str, int]
    requests: list[tuple[str, int, int]]
    contended: bool

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "texts": dict(self.texts), "contended": self.contended,
                "requests": [list(r) for r in self.requests]}


class Coalescer:
    """Runs model passes one at a time; what is queued while a pass runs forms the next one, fairly.

    ``embed`` may be called by any number of coroutines on one event loop. Each call's texts wait in
    their tenant's queue (:class:`~deployments.fair_queue.DeficitRoundRobin`, ``quantum`` texts per
    tenant per round). The first caller starts a drain task that takes the next pass (up to
    ``max_texts_per_pass`` texts; a larger single call goes alone; one round only while tenants compete),
    runs ``embed_pass`` on the model thread, hands each caller its slice, and repeats until nothing waits.
    A failed pass fails only the calls in it. ``fair=False`` forms passes in arrival order instead.
    """

    def __init__(self, embed_pass: Any, executor: ThreadPoolExecutor,
                 max_texts_per_pass: int = DEFAULT_MAX_TEXTS_PER_PASS, *, quantum: int = DEFAULT_QUANTUM_TEXTS,
                 fair: bool = True, on_wait: Callable[[str, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, history: int = PASS_HISTORY) -> None:
        self._embed_pass = embed_pass
        self._executor = executor
        self.max_texts_per_pass = max_texts_per_pass
        self._queue: DeficitRoundRobin[_Request] = DeficitRoundRobin(quantum, fair=fair)
        self._drain_task: asyncio.Task[None] | None = None
        self._on_wait = on_wait
        self._clock = clock
        self._passes = 0
        self._last_served: dict[str, float] = {}  # tenant -> when a pass last took its texts
        self.records: deque[PassRecord] = deque(maxlen=history)

    @property
    def fair(self) -> bool:
        return self._queue.fair

    @fair.setter
    def fair(self, value: bool) -> None:
        self._queue.fair = value

    @property
    def quantum(self) -> int:
        return self._queue.quantum

    @quantum.setter
    def quantum(self, value: int) -> None:
        if value < 1:
            raise ValueError("quantum must be >= 1")
        self._queue.quantum = value

    @property
    def waiting(self) -> int:
        """Calls queued (not yet in a pass)."""
        return len(self._queue)

    @property
    def passes(self) -> int:
        """Model passes started so far."""
        return self._passes

    def queued_texts(self) -> dict[str, int]:
        """Texts queued per tenant (tenants with nothing queued are absent)."""
        return self._queue.depth()

    async def embed(self, texts: list[str], tenant: str = UNNAMED_TENANT) -> EmbedOutput:
        """Embed one call's texts for ``tenant``; merged with other waiting calls into a model pass.

        With fair queueing a call of more than ``quantum`` texts is queued as pieces of ``quantum`` texts
        (in order), so while tenants compete no pass holds more than a round's worth of anyone's texts;
        a tenant alone still gets its pieces merged into full passes."""
        loop = asyncio.get_running_loop()
        size = self.quantum if self.fair else max(1, len(texts))
        pieces = [texts[i:i + size] for i in range(0, len(texts), size)] or [texts]
        now = self._clock()
        requests = [_Request(piece, tenant, loop.create_future(), now, self._passes) for piece in pieces]
        for request in requests:
            self._queue.push(tenant, request, len(request.texts))
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = loop.create_task(self._drain())
        if len(requests) == 1:
            return await requests[0].future
        try:
            outputs = await asyncio.gather(*(request.future for request in requests))
        except BaseException:
            for request in requests:  # the call failed or was cancelled: its other pieces need no pass
                request.future.cancel()
            raise
        return EmbedOutput.concat(list(outputs))

    async def submit(self, requests: list[list[str]], tenant: str = UNNAMED_TENANT) -> list[EmbedOutput]:
        """Several calls of one tenant (each keeps its own slice); fails if any of them fails."""
        return list(await asyncio.gather(*(self.embed(texts, tenant) for texts in requests)))

    def _contended(self, now: float) -> bool:
        """Whether tenants compete: more than one is queued now or was served within the last
        CONTENTION_WINDOW_S (a trickle tenant between two requests still counts)."""
        for tenant, served in list(self._last_served.items()):
            if now - served > CONTENTION_WINDOW_S:
                del self._last_served[tenant]
        tenants = set(self._last_served)
        for tenant in self._queue.depth():
            tenants.add(tenant)
            if len(tenants) > 1:
                return True
        return len(tenants) > 1

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            now = self._clock()
            contended = self.fair and self._contended(now)
            taken = [(tenant, request) for tenant, request in self._queue.take(self.max_texts_per_pass, contended)
                     if not request.future.done()]  # skip cancelled callers
            if not taken:
                continue
            self._passes += 1
            self._record(self._passes, taken, contended, now)
            requests = [request.texts for _, request in taken]
            try:
                outputs = await loop.run_in_executor(self._executor, self._embed_pass, requests)
            except Exception as exc:  # the pass failed: fail its callers, keep serving the rest
                for _, request in taken:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            for (_, request), output in zip(taken, outputs, strict=True):
                if not request.future.done():
                    request.future.set_result(output)

    def _record(self, seq: int, taken: list[tuple[str, _Request]], contended: bool, now: float) -> None:
        texts: dict[str, int] = {}
        calls: list[tuple[str, int, int]] = []
        for tenant, request in taken:
            texts[tenant] = texts.get(tenant, 0) + len(request.texts)
            calls.append((tenant, len(request.texts), seq - request.passes_before))
            self._last_served[tenant] = now
            if self._on_wait is not None:
                self._on_wait(tenant, now - request.queued_s)
        self.records.append(PassRecord(seq, texts, calls, contended))

    def recent_passes(self, after: int = 0) -> list[PassRecord]:
        """The recorded passes with ``seq > after`` (the last ``history`` passes at most)."""
        return [record for record in self.records if record.seq > after]


class EmbedderCore:
    """The replica's logic without Serve: testable directly, wrapped by the deployment below."""

    def __init__(self, model: str, paths: ModelPaths, backend: str | None = None, device: str = "auto",
                 threads: int | None = None) -> None:
        self.spec = get_model(model)
        started = time.perf_counter()
        self.backend: EmbeddingBackend = load_backend(self.spec, backend, device=device, threads=threads, paths=paths)
        self.backend.warmup()
        self.load_seconds = time.perf_counter() - started
        # One thread owns the model: forward passes never overlap, the event loop stays free.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heimdex-model")
        self.stats = BatchStats()
        self.metrics = EmbedderMetrics(self.spec.name)
        self.coalescer = Coalescer(self._embed_pass, self._executor, on_wait=self.metrics.record_wait)
        self.config = EmbedderConfig()
        self.last_error: str | None = None
        self.unhealthy = False

    def info(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "version": self.spec.version,
            "dimension": self.spec.dimension,
            "max_tokens": self.spec.max_tokens,
            "backend": self.backend.name,
            "load_seconds": round(self.load_seconds, 3),
            "max_batch_size": self.config.max_batch_size,
            "batch_wait_timeout_s": self.config.batch_wait_timeout_s,
            "max_texts_per_pass": self.config.max_texts_per_pass,
            "fair_queueing": self.config.fair_queueing,
            "quantum_texts": self.config.quantum_texts,
            "pid": os.getpid(),
            "node_id": _node_id(),
        }

    async def run_batch(self, requests: list[list[str]], tenants: list[str]) -> list[EmbedOutput | Exception]:
        """Embed the texts of several calls, each queued under its tenant; a failed call's slot holds its
        exception (the others still get their vectors)."""
        results = await asyncio.gather(*(self.coalescer.embed(texts, tenant)
                                         for texts, tenant in zip(requests, tenants, strict=True)),
                                       return_exceptions=True)
        out: list[EmbedOutput | Exception] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation and the like are not a call's result
            out.append(result)
        return out

    def tenant_snapshot(self) -> dict[str, Any]:
        """Per-tenant queue depth (texts waiting now) and wait before a pass (bounded labels)."""
        return self.metrics.tenant_snapshot(self.coalescer.queued_texts())

    def _embed_pass(self, requests: list[list[str]]) -> list[EmbedOutput]:
        """One model pass over the texts of ``requests`` (on the model thread); split per call."""
        flat = [text for texts in requests for text in texts]
        started = time.perf_counter()
        output = self.backend.embed(flat)
        tokens = sum(output.token_counts)
        self.stats.record(calls=len(requests), texts=len(flat), tokens=tokens)
        self.metrics.record_batch(len(requests), len(flat), tokens, time.perf_counter() - started)
        results: list[EmbedOutput] = []
        start = 0
        for texts in requests:
            end = start + len(texts)
            results.append(output.rows(start, end))
            start = end
        return results

    def check(self) -> None:
        """Raise if the backend no longer produces sane vectors (Serve then replaces the replica)."""
        if self.unhealthy:
            raise RuntimeError("marked unhealthy (fault injection)")
        probe = self.backend.embed(["health"])
        if probe.vectors.shape != (1, self.spec.dimension) or not np.isfinite(probe.vectors).all():
            raise RuntimeError(f"backend returned a bad vector of shape {probe.vectors.shape}")


def _node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # pragma: no cover - outside Ray
        return None


# Deployment options (replicas, max_ongoing_requests = max_batch_size x MAX_CONCURRENT_BATCHES, queue
# bound, health checks, CPUs/GPUs) live in serve_config.yaml only, one entry per served model.
@serve.deployment(name="Embedder")
class Embedder:
    """Serve deployment around :class:`EmbedderCore`."""

    def __init__(self, model: str = "minilm-l6-v2", backend: str | None = None, device: str = "auto",
                 threads: int | None = None, fault_injection: bool = False, *, paths: ModelPaths) -> None:
        configure_logging()
        # ``paths``: where the weights are, from the app's Settings (serve_app/app.py); replicas read no environment.
        self.core = EmbedderCore(model, paths, backend=backend, device=device, threads=threads)
        self.fault_injection = fault_injection  # the app passes False in production (serve_app/app.py)
        logger.info("embedder ready: %s", self.core.info())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = EmbedderConfig.parse(user_config or {})
        self._embed_batch.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self._embed_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.core.coalescer.max_texts_per_pass = config.max_texts_per_pass
        self.core.coalescer.fair = config.fair_queueing
        self.core.coalescer.quantum = config.quantum_texts
        self.core.config = config
        logger.info("embedder reconfigured: %s", config)

    async def embed(self, texts: list[str], tenant: str = UNNAMED_TENANT) -> EmbedOutput:
        """Embed one request's texts for ``tenant`` (its org_id; the relay's own name for the write path);
        batched with other concurrent calls, queued fairly per tenant."""
        self.core.stats.received(1)
        self.core.metrics.enter()
        try:
            result: EmbedOutput | Exception = await self._embed_batch((texts, tenant))
        finally:
            self.core.metrics.leave()
        if isinstance(result, Exception):
            raise result
        return result

    async def embed_many(self, calls: list[tuple[list[str], str]]) -> list[EmbedOutput | Exception]:
        """Several requests in one call (the Gateway merges concurrent ones, serve_app/call_merger.py):
        each ``(texts, tenant)`` is queued under its own tenant, so merging never changes who goes first;
        a failed request's slot holds its exception."""
        self.core.stats.received(len(calls))
        self.core.metrics.enter(len(calls))
        try:
            return await self.core.run_batch([texts for texts, _ in calls], [tenant for _, tenant in calls])
        finally:
            self.core.metrics.leave(len(calls))

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S,
                 max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _embed_batch(self, calls: list[tuple[list[str], str]]) -> list[EmbedOutput | Exception]:
        return await self.core.run_batch([texts for texts, _ in calls], [tenant for _, tenant in calls])

    def info(self) -> dict[str, Any]:
        return self.core.info()

    def batch_stats(self) -> dict[str, Any]:
        return self.core.stats.as_dict()

    def recent_passes(self, after: int = 0) -> list[dict[str, Any]]:
        """The last model passes with ``seq > after``: texts per tenant and how many passes each call waited."""
        return [record.as_dict() for record in self.core.coalescer.recent_passes(after)]

    def queued_texts(self) -> dict[str, int]:
        """Texts waiting now, per tenant (only tenants with something queued)."""
        return self.core.coalescer.queued_texts()

    def pass_count(self) -> int:
        """Model passes this replica has started (pass ``seq`` of the next one minus one)."""
        return self.core.coalescer.passes

    def metrics_snapshot(self) -> dict[str, Any]:
        """This replica's figures for the Gateway's ``/metrics`` route."""
        return {**self.core.metrics.snapshot(), "tenants": self.core.tenant_snapshot(), "pid": os.getpid(),
                "node_id": _node_id()}

    def check_health(self) -> None:
        self.core.check()

    def arm_unhealthy(self) -> None:
        """Test hook: from now on this replica fails its health check, so Serve replaces it (the fault
        suite checks that it does). Refused where the app was deployed with fault injection off."""
        if not self.fault_injection:
            raise RuntimeError("fault injection is disabled in production")
        logger.warning("fault injection: embedder replica %s will fail its health checks", os.getpid())
        self.core.unhealthy = True
