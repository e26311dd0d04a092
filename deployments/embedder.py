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
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from deployments.backends import EmbeddingBackend, EmbedOutput, load_backend
from deployments.metrics import EmbedderMetrics
from deployments.registry import get_model

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


@dataclass
class EmbedderConfig:
    """The live-tunable part of an Embedder (its Serve ``user_config``)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # calls per Serve batch
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S  # Serve's wait for a batch to fill
    max_texts_per_pass: int = DEFAULT_MAX_TEXTS_PER_PASS  # the Coalescer's cap on one model pass

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> EmbedderConfig:
        unknown = set(raw) - {"max_batch_size", "batch_wait_timeout_s", "max_texts_per_pass"}
        if unknown:
            raise ValueError(f"unknown Embedder user_config keys: {sorted(unknown)}")
        config = cls(
            max_batch_size=int(raw.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
            batch_wait_timeout_s=float(raw.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S)),
            max_texts_per_pass=int(raw.get("max_texts_per_pass", DEFAULT_MAX_TEXTS_PER_PASS)),
        )
        if config.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if not 1 <= config.max_texts_per_pass <= 65536:
            raise ValueError("max_texts_per_pass must be within [1, 65536]")
        if not 0 <= config.batch_wait_timeout_s <= 1:
            raise ValueError("batch_wait_timeout_s must be within [0, 1]")
        return config


@dataclass
class BatchStats:
    """How batches actually formed: the evidence that batching works under concurrency."""

    batches: int = 0
    calls: int = 0
    texts: int = 0
    tokens: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    largest: int = 0

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
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


@dataclass
class _Waiting:
    requests: list[list[str]]
    future: asyncio.Future[list[EmbedOutput]]

    @property
    def texts(self) -> int:
        return sum(len(texts) for texts in self.requests)


class Coalescer:
    """Runs model passes one at a time; everything submitted while a pass runs joins the next one.

    ``submit`` may be called by any number of coroutines on one event loop. The first caller starts a
    drain task that takes every waiting submission (up to ``max_texts_per_pass`` texts; a larger
    single submission goes alone), runs ``embed_pass`` on the model thread, hands each caller its
    slice, and repeats until nothing waits. A failed pass fails only the submissions in it.
    """

    def __init__(self, embed_pass: Any, executor: ThreadPoolExecutor,
                 max_texts_per_pass: int = DEFAULT_MAX_TEXTS_PER_PASS) -> None:
        self._embed_pass = embed_pass
        self._executor = executor
        self.max_texts_per_pass = max_texts_per_pass
        self._waiting: deque[_Waiting] = deque()
        self._drain_task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def submit(self, requests: list[list[str]]) -> list[EmbedOutput]:
        loop = asyncio.get_running_loop()
        item = _Waiting(requests, loop.create_future())
        self._waiting.append(item)
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = loop.create_task(self._drain())
        return await item.future

    def _take(self) -> list[_Waiting]:
        taken = [self._waiting.popleft()]
        texts = taken[0].texts
        while self._waiting and texts + self._waiting[0].texts <= self.max_texts_per_pass:
            item = self._waiting.popleft()
            taken.append(item)
            texts += item.texts
        return taken

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            taken = [item for item in self._take() if not item.future.done()]  # skip cancelled callers
            if not taken:
                continue
            requests = [texts for item in taken for texts in item.requests]
            try:
                outputs = await loop.run_in_executor(self._executor, self._embed_pass, requests)
            except Exception as exc:  # the pass failed: fail its callers, keep serving the rest
                for item in taken:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            start = 0
            for item in taken:
                end = start + len(item.requests)
                if not item.future.done():
                    item.future.set_result(outputs[start:end])
                start = end


class EmbedderCore:
    """The replica's logic without Serve: testable directly, wrapped by the deployment below."""

    def __init__(self, model: str, backend: str | None = None, device: str = "auto",
                 threads: int | None = None) -> None:
        self.spec = get_model(model)
        started = time.perf_counter()
        self.backend: EmbeddingBackend = load_backend(self.spec, backend, device=device, threads=threads)
        self.backend.warmup()
        self.load_seconds = time.perf_counter() - started
        # One thread owns the model: forward passes never overlap, the event loop stays free.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heimdex-model")
        self.coalescer = Coalescer(self._embed_pass, self._executor)
        self.stats = BatchStats()
        self.metrics = EmbedderMetrics(self.spec.name)
        self.config = EmbedderConfig()
        self.last_error: str | None = None

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
            "pid": os.getpid(),
            "node_id": _node_id(),
        }

    async def run_batch(self, requests: list[list[str]]) -> list[EmbedOutput]:
        """Embed the texts of several calls; merged with other batches waiting for the model."""
        return await self.coalescer.submit(requests)

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
            results.append(
                EmbedOutput(
                    vectors=output.vectors[start:end],
                    token_counts=output.token_counts[start:end],
                    truncated=output.truncated[start:end],
                )
            )
            start = end
        return results

    def check(self) -> None:
        """Raise if the backend no longer produces sane vectors (Serve then replaces the replica)."""
        probe = self.backend.embed(["health"])
        if probe.vectors.shape != (1, self.spec.dimension) or not np.isfinite(probe.vectors).all():
            raise RuntimeError(f"backend returned a bad vector of shape {probe.vectors.shape}")


def _configure_logging() -> None:
    """JSON logs through Serve's logger (the function lives in serve_app; imported lazily, no FastAPI)."""
    try:
        from serve_app.logging_setup import configure_logging
    except ImportError:  # pragma: no cover
        return
    configure_logging()


def _node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # pragma: no cover - outside Ray
        return None


@serve.deployment(
    name="Embedder",
    max_ongoing_requests=256,
    max_queued_requests=512,
    health_check_period_s=10,
    health_check_timeout_s=30,
    ray_actor_options={"num_cpus": 1},
)
class Embedder:
    """Serve deployment around :class:`EmbedderCore`."""

    def __init__(self, model: str = "minilm-l6-v2", backend: str | None = None, device: str = "auto",
                 threads: int | None = None) -> None:
        _configure_logging()
        self.core = EmbedderCore(model, backend=backend, device=device, threads=threads)
        logger.info("embedder ready: %s", self.core.info())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = EmbedderConfig.parse(user_config or {})
        self._embed_batch.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self._embed_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.core.coalescer.max_texts_per_pass = config.max_texts_per_pass
        self.core.config = config
        logger.info("embedder reconfigured: %s", config)

    async def embed(self, texts: list[str]) -> EmbedOutput:
        """Embed one request's texts; batched with other concurrent calls."""
        self.core.metrics.enter()
        try:
            result: EmbedOutput = await self._embed_batch(texts)
        finally:
            self.core.metrics.leave()
        return result

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S,
                 max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _embed_batch(self, requests: list[list[str]]) -> list[EmbedOutput]:
        return await self.core.run_batch(requests)

    def info(self) -> dict[str, Any]:
        return self.core.info()

    def batch_stats(self) -> dict[str, Any]:
        return self.core.stats.as_dict()

    def metrics_snapshot(self) -> dict[str, Any]:
        """This replica's figures for the Gateway's ``/metrics`` route."""
        return {**self.core.metrics.snapshot(), "pid": os.getpid(), "node_id": _node_id()}

    def check_health(self) -> None:
        self.core.check()
