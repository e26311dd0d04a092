"""Heimdex's metrics at the HTTP edge: the request middleware and the ``/metrics`` route.

One export: ``GET /metrics`` on the app, Prometheus text. This Gateway replica's request counters
and latencies (a process-local ``prometheus_client`` registry), plus figures gathered at scrape time
from the Embedder (one replica per model answers, its series labelled with its ``pid``), the relay,
the store actor and the database (:mod:`deployments.metrics` keeps them in each process). Ray's own
metrics (``ray_serve_*``) stay on Ray's metrics agent; Heimdex records nothing twice. With several
Gateway replicas, scrape each (under direct ingress each listens on its own port, from the public
port upwards).

No metric object is created at import time (Serve imports this module in every replica).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.logging_setup import fields
from deployments.metrics import LATENCY_BUCKETS_S, in_serve_replica
from deployments.tenant_labels import TenantLabels

logger = logging.getLogger("heimdex.access")

UNMATCHED_ROUTE = "unmatched"
SOURCE_TIMEOUT_S = 3.0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_ID_CHARS = 128


class GatewayMetrics:
    """Request counters and latency of this gateway process."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("heimdex_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("heimdex_http_request_duration_seconds", "HTTP request latency by route template",
                                 ["route", "method"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.refusals = Counter("heimdex_tenant_refusals", "429 answers by tenant (bounded labels) and budget "
                                "(rate: requests per second; concurrency: share of calls in flight)",
                                ["tenant", "budget"], registry=self.registry)
        self.tenant_labels = TenantLabels()

    def refused(self, tenant: str, budget: str) -> None:
        """One 429 for ``tenant``: its rate budget or its share of calls in flight was spent."""
        label = self.tenant_labels(tenant)
        self.refusals.labels(label, budget).inc()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)


_gateway_metrics: GatewayMetrics | None = None


def gateway_metrics() -> GatewayMetrics:
    """This process's :class:`GatewayMetrics`, created on first use."""
    global _gateway_metrics
    if _gateway_metrics is None:
        _gateway_metrics = GatewayMetrics()
    return _gateway_metrics


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/jobs/{job_id}``), never the raw path (unbounded labels)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = candidate.matches(scope)
        if match == Match.FULL and isinstance(getattr(candidate, "path", None), str):
            return str(candidate.path)
    return UNMATCHED_ROUTE


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class RequestObservabilityMiddleware:
    """Outermost middleware: counts and times every request by route template and status, logs one
    structured access line (request id, tenant, route, status, duration), and outside Serve returns
    ``X-Request-ID`` (inside Serve the proxy already accepts and returns it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.add_request_id_header = not in_serve_replica()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = (_header(scope, b"x-request-id") or _new_request_id())[:MAX_REQUEST_ID_CHARS]
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if self.add_request_id_header:
                    headers = MutableHeaders(scope=message)
                    if "x-request-id" not in headers:
                        headers.append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method = str(scope.get("method", "GET"))
            try:
                gateway_metrics().observe(route, method, status, seconds)
                if route != "/metrics":
                    logger.info("%s %s %d %.1fms", method, route, status, seconds * 1000, extra=fields(
                        request_id=request_id, tenant=self._tenant(scope), http_route=route, method=method,
                        status=status, duration_ms=round(seconds * 1000, 2)))
            except Exception as exc:  # observability must never fail a request
                logger.debug("request metrics failed: %s", exc)

    @staticmethod
    def _tenant(scope: Scope) -> str | None:
        """The org of the principal the auth dependency verified (serve_app.deps), for the log line only.
        Unauthenticated or refused requests have none; the token itself is never logged."""
        principal = (scope.get("state") or {}).get("principal")
        return None if principal is None else str(principal.org_id)


def _new_request_id() -> str:
    import uuid

    return str(uuid.uuid4())


# --------------------------------------------------------------------------- /metrics


@dataclass
class MetricsSources:
    """What the ``/metrics`` route asks at scrape time: Serve handles, the store client, the database."""

    embedders: dict[str, Any] = field(default_factory=dict)
    relay: Any = None
    store_actor: Any = None  # the embedded store's actor handle (None with a Qdrant server: no actor)
    db: Any = None  # serve_app.db.database.Database


def count_jobs_by_status(db: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from serve_app.db.models import Job, JobStatus

    with db.readonly_sessions() as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {status.value: 0 for status in JobStatus}
    counts.update({str(status): int(n) for status, n in rows})
    return counts


async def collect_snapshot(sources: MetricsSources) -> dict[str, Any]:
    """Figures from every source, each bounded by a timeout; a failed source is reported as down."""

    async def guarded(name: str, awaitable: Any) -> tuple[str, Any]:
        try:
            return name, await asyncio.wait_for(awaitable, SOURCE_TIMEOUT_S)
        except Exception as exc:
            logger.debug("metrics source %s failed: %s", name, exc)
            return name, None

    calls = [guarded(f"embedder:{model}", handle.metrics_snapshot.remote())
             for model, handle in sorted(sources.embedders.items())]
    if sources.relay is not None:
        calls.append(guarded("relay", sources.relay.status.remote()))
    if sources.store_actor is not None:
        calls.append(guarded("store", sources.store_actor.metrics_snapshot.remote()))
    if sources.db is not None:
        calls.append(guarded("database", asyncio.to_thread(count_jobs_by_status, sources.db)))
    return dict(await asyncio.gather(*calls))


def _histogram_buckets(snapshot: dict[str, Any]) -> list[tuple[str, float]]:
    cumulative = 0.0
    out: list[tuple[str, float]] = []
    for bound, count in zip([*snapshot["buckets"], float("inf")], snapshot["counts"], strict=True):
        cumulative += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    return out


def snapshot_families(snapshot: dict[str, Any]) -> list[Any]:
    """Prometheus metric families for a :func:`collect_snapshot` result (pure; unit-testable)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    up = GaugeMetricFamily("heimdex_metrics_source_up", "1 when the source answered this scrape", labels=["source"])
    for source, value in sorted(snapshot.items()):
        up.add_metric([source], 0.0 if value is None else 1.0)
    families: list[Any] = [up]

    batches = CounterMetricFamily("heimdex_embedder_batches", "batches run", labels=["model", "pid"])
    texts = CounterMetricFamily("heimdex_embedder_texts", "texts embedded", labels=["model", "pid"])
    tokens = CounterMetricFamily("heimdex_embedder_tokens", "tokens embedded", labels=["model", "pid"])
    depth = GaugeMetricFamily("heimdex_embedder_queue_depth", "embed calls waiting for or inside a batch",
                              labels=["model", "pid"])
    size = HistogramMetricFamily("heimdex_embedder_batch_size", "calls per @serve.batch batch",
                                 labels=["model", "pid"])
    latency = HistogramMetricFamily("heimdex_embedder_batch_latency_seconds", "seconds to embed one batch",
                                    labels=["model", "pid"])
    tenant_depth = GaugeMetricFamily("heimdex_embedder_tenant_queue_texts",
                                     "texts waiting in each tenant's queue for a model pass (bounded tenant labels)",
                                     labels=["model", "pid", "tenant"])
    tenant_wait = HistogramMetricFamily("heimdex_embedder_tenant_wait_seconds",
                                        "seconds a call waited in its tenant's queue before a model pass took it",
                                        labels=["model", "pid", "tenant"])
    for source, value in sorted(snapshot.items()):
        if not source.startswith("embedder:") or value is None:
            continue
        labels = [str(value["model"]), str(value.get("pid", ""))]
        batches.add_metric(labels, value["batches"])
        texts.add_metric(labels, value["texts"])
        tokens.add_metric(labels, value["tokens"])
        depth.add_metric(labels, value["queue_depth"])
        size.add_metric(labels, _histogram_buckets(value["batch_size"]), value["batch_size"]["sum"])
        latency.add_metric(labels, _histogram_buckets(value["batch_latency_s"]), value["batch_latency_s"]["sum"])
        for tenant, figures in sorted(value.get("tenants", {}).items()):
            tenant_depth.add_metric([*labels, tenant], figures["queued_texts"])
            tenant_wait.add_metric([*labels, tenant], _histogram_buckets(figures["wait_s"]), figures["wait_s"]["sum"])
    families += [batches, texts, tokens, depth, size, latency, tenant_depth, tenant_wait]

    relay = snapshot.get("relay")
    if relay is not None:
        families.append(CounterMetricFamily("heimdex_relay_delivered", "outbox messages delivered",
                                            value=relay["delivered"]))
        families.append(CounterMetricFamily("heimdex_relay_failed_attempts", "relay attempts that failed",
                                            value=relay["failed_attempts"]))
        families.append(CounterMetricFamily("heimdex_relay_dead_letters", "jobs sent to the dead letter state",
                                            value=relay["dead_letters"]))
        outbox = GaugeMetricFamily("heimdex_outbox_messages", "outbox rows by state", labels=["state"])
        for state, n in sorted(relay.get("outbox", {}).items()):
            outbox.add_metric([state], n)
        families.append(outbox)
        lag = relay.get("oldest_due_age_s")
        families.append(GaugeMetricFamily("heimdex_outbox_lag_seconds",
                                          "age of the oldest due outbox message (0 when none is due)",
                                          value=float(lag or 0.0)))

    jobs = snapshot.get("database")
    if jobs is not None:
        family = GaugeMetricFamily("heimdex_jobs", "jobs by status (from the database)", labels=["status"])
        for status, n in sorted(jobs.items()):
            family.add_metric([status], n)
        families.append(family)

    store = snapshot.get("store")
    if store is not None:
        family_h = HistogramMetricFamily("heimdex_store_latency_seconds", "seconds per vector-store call",
                                         labels=["operation"])
        for operation, hist in sorted(store["latency_s"].items()):
            family_h.add_metric([operation], _histogram_buckets(hist), hist["sum"])
        families.append(family_h)
    return families


def render(families: Iterable[Any], registries: Iterable[Any] = ()) -> bytes:
    """Prometheus text of some metric families plus whole registries."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    class _Fixed(Collector):
        def __init__(self, items: list[Any]) -> None:
            self.items = items

        def collect(self) -> Iterator[Any]:
            return iter(self.items)

    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Fixed(list(families)))
    return b"".join([*(generate_latest(r) for r in registries), generate_latest(scrape)])


router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text: this replica's request metrics and the embedder, relay, store and job figures."""
    sources: MetricsSources = getattr(request.app.state, "metrics_sources", None) or MetricsSources()
    snapshot = await collect_snapshot(sources)
    body = render(snapshot_families(snapshot), [gateway_metrics().registry])
    return Response(body, media_type=PROMETHEUS_CONTENT_TYPE)
