"""Metric objects of the model and store processes (Embedder replicas, the vector-store actor).

Two sinks per figure: a Ray metric (``ray.serve.metrics`` inside a Serve replica, ``ray.util.metrics``
elsewhere) that Ray's per-node metrics agent exports for Prometheus, and a small in-process
snapshot that the Gateway's ``/metrics`` route fetches through a handle. Nothing is created at
import time: Serve imports this module in every replica, so each object is built on first use.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from deployments.tenant_labels import TenantLabels

logger = logging.getLogger("heimdex.metrics")

# Seconds; from a cached search (~1 ms) to a cold large batch on CPU (tens of seconds).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                        10.0, 30.0)
# Calls (requests) per @serve.batch batch; max_batch_size tops out in the low hundreds.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class LocalHistogram:
    """A thread-safe Prometheus-style histogram kept in process memory (non-cumulative counts)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # last slot: above the largest bound (+Inf)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            self._count += 1

    def snapshot(self) -> dict[str, Any]:
        """``{"buckets": [...], "counts": [...], "sum", "count"}``; counts has one more slot (+Inf)."""
        with self._lock:
            return {"buckets": list(self.buckets), "counts": list(self._counts), "sum": self._sum,
                    "count": self._count}


def in_serve_replica() -> bool:
    """True inside a Ray Serve replica (Serve importable and a replica context set)."""
    try:
        from ray.serve import context

        return context._get_internal_replica_context() is not None
    except Exception:  # pragma: no cover - Serve not importable
        return False


def _ray_metrics_module() -> Any:
    if in_serve_replica():
        import ray.serve.metrics as serve_metrics

        return serve_metrics
    import ray.util.metrics as util_metrics

    return util_metrics


def _build(factory: Callable[[Any], Any], what: str) -> Any:
    """A Ray metric, or None where Ray metrics cannot be created (no Ray worker in this process)."""
    try:
        return factory(_ray_metrics_module())
    except Exception as exc:  # never let observability break the data path
        logger.debug("ray metric %s unavailable: %s", what, exc)
        return None


class RayMetrics:
    """Lazily created Ray metric objects, keyed by name; every call is a no-op where Ray is absent."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _get(self, name: str, factory: Callable[[Any], Any]) -> Any:
        metric = self._metrics.get(name)
        if metric is None and name not in self._metrics:
            with self._lock:
                if name not in self._metrics:
                    self._metrics[name] = _build(factory, name)
                metric = self._metrics[name]
        return metric

    def counter(self, name: str, description: str, value: float, tags: dict[str, str]) -> None:
        metric = self._get(name, lambda m: m.Counter(name, description=description, tag_keys=tuple(tags)))
        if metric is not None and value > 0:
            metric.inc(value, tags=tags)

    def gauge(self, name: str, description: str, value: float, tags: dict[str, str]) -> None:
        metric = self._get(name, lambda m: m.Gauge(name, description=description, tag_keys=tuple(tags)))
        if metric is not None:
            metric.set(value, tags=tags)

    def histogram(self, name: str, description: str, boundaries: Sequence[float], value: float,
                  tags: dict[str, str]) -> None:
        metric = self._get(name, lambda m: m.Histogram(name, description=description, boundaries=list(boundaries),
                                                       tag_keys=tuple(tags)))
        if metric is not None:
            metric.observe(value, tags=tags)


class EmbedderMetrics:
    """Batch size, per-batch latency, tokens and queue depth of one Embedder replica."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.ray = RayMetrics()
        self.batch_size = LocalHistogram(BATCH_SIZE_BUCKETS)
        self.batch_latency = LocalHistogram(LATENCY_BUCKETS_S)
        self.batches = 0
        self.texts = 0
        self.tokens = 0
        self.pending = 0  # embed() calls waiting for, or inside, a batch
        # Seconds each call waited in its tenant's queue before a model pass took it, by tenant label.
        self.tenant_labels = TenantLabels()
        self.tenant_wait: dict[str, LocalHistogram] = {}

    # The Ray gauge is set once per model pass and when the queue empties, not on every call: two Ray
    # metric calls per request were measurable on the single-text hot path.
    def enter(self, calls: int = 1) -> None:
        self.pending += calls

    def leave(self, calls: int = 1) -> None:
        self.pending -= calls
        if self.pending == 0:
            self._export_depth()

    def _export_depth(self) -> None:
        self.ray.gauge("heimdex_embedder_queue_depth", "embed calls waiting for or inside a batch",
                       self.pending, {"model": self.model})

    def record_batch(self, calls: int, texts: int, tokens: int, seconds: float) -> None:
        tags = {"model": self.model}
        self.batches += 1
        self.texts += texts
        self.tokens += tokens
        self.batch_size.observe(calls)
        self.batch_latency.observe(seconds)
        self.ray.histogram("heimdex_embedder_batch_size", "calls per @serve.batch batch", BATCH_SIZE_BUCKETS,
                           calls, tags)
        self.ray.histogram("heimdex_embedder_batch_latency_s", "seconds to embed one batch", LATENCY_BUCKETS_S,
                           seconds, tags)
        self.ray.counter("heimdex_embedder_texts", "texts embedded", texts, tags)
        self.ray.counter("heimdex_embedder_tokens", "tokens embedded", tokens, tags)
        self._export_depth()

    def record_wait(self, tenant: str, seconds: float) -> None:
        """One call's wait in its tenant's queue (in-process only: no Ray metric call per request)."""
        label = self.tenant_labels(tenant)
        histogram = self.tenant_wait.get(label)
        if histogram is None:
            histogram = self.tenant_wait.setdefault(label, LocalHistogram(LATENCY_BUCKETS_S))
        histogram.observe(seconds)

    def tenant_snapshot(self, queued_texts: dict[str, int]) -> dict[str, Any]:
        """``{label: {"queued_texts": n, "wait_s": histogram}}`` for every tenant label seen."""
        depth: dict[str, int] = {}
        for tenant, texts in queued_texts.items():
            label = self.tenant_labels(tenant)
            depth[label] = depth.get(label, 0) + texts
        empty = LocalHistogram(LATENCY_BUCKETS_S).snapshot()
        waits = {label: histogram.snapshot() for label, histogram in list(self.tenant_wait.items())}
        return {label: {"queued_texts": depth.get(label, 0), "wait_s": waits.get(label, empty)}
                for label in sorted(set(depth) | set(waits))}

    def snapshot(self) -> dict[str, Any]:
        return {"model": self.model, "batches": self.batches, "texts": self.texts, "tokens": self.tokens,
                "queue_depth": self.pending, "batch_size": self.batch_size.snapshot(),
                "batch_latency_s": self.batch_latency.snapshot()}


class StoreMetrics:
    """Latency of vector-store calls, by operation, inside the store actor."""

    OPERATIONS = ("upsert", "search", "search_batch")

    def __init__(self) -> None:
        self.ray = RayMetrics()
        self.latency = {op: LocalHistogram(LATENCY_BUCKETS_S) for op in self.OPERATIONS}

    @contextmanager
    def timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.latency[operation].observe(seconds)
            self.ray.histogram("heimdex_store_latency_s", "seconds per vector-store call", LATENCY_BUCKETS_S,
                               seconds, {"operation": operation})

    def snapshot(self) -> dict[str, Any]:
        return {"latency_s": {op: hist.snapshot() for op, hist in self.latency.items()}}
