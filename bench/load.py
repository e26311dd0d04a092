"""A bounded closed-loop HTTP load generator that runs in its own process.

``N`` asyncio workers, each with its own ``httpx.AsyncClient`` (HTTP/1.1 keep-alive, one connection:
one client shared by all workers cost about 3x the client CPU on 2 cores, CPU the service under test
then lacks), send the given JSON bodies round-robin until either ``max_requests`` have been sent or
``max_duration_s`` has passed, whichever comes first. The client runs in a separate (spawned) process
so it never shares a GIL with the bench driver and its own CPU use is measured and reported
(``client_cpu_s`` / ``client_cpu_pct``): on a small machine the client competes with the service for
cores, and that must be visible next to the figures.

Only loopback URLs are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.timing import percentiles

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"the bench only talks to loopback services; got {url!r}")


@dataclass(frozen=True)
class LoadSpec:
    """One load run: where, what, how many at once, and its two bounds."""

    url: str  # full URL of the endpoint, e.g. http://127.0.0.1:8000/v1/embeddings
    bodies: list[dict[str, Any]]  # JSON bodies, sent round-robin
    concurrency: int
    max_requests: int
    max_duration_s: float
    items_per_request: int = 1  # texts per body, for items/s
    headers: dict[str, str] = field(default_factory=dict)
    # Optional headers per body (same length as ``bodies``), merged over ``headers``: e.g. one tenant's
    # token per body so one run spreads over many tenants.
    body_headers: list[dict[str, str]] | None = None
    warmup_requests: int = 0  # sent (at the same concurrency) before the clock starts; not counted
    timeout_s: float = 120.0


@dataclass
class LoadResult:
    """What one run measured. Latencies are of successful requests only, in milliseconds."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    requests_per_s: float = 0.0
    items_per_s: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    concurrency: int = 0
    items_per_request: int = 1
    stopped_by: str = ""  # "max_requests" or "max_duration"
    client_cpu_s: float = 0.0
    client_cpu_pct: float = 0.0  # of one core, over elapsed_s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _drive(spec: LoadSpec) -> LoadResult:
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60.0)
    headers = {"Content-Type": "application/json", **spec.headers}
    encoded = [_dumps(body) for body in spec.bodies]
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=spec.timeout_s,
                                                                     headers=headers))
                   for _ in range(spec.concurrency)]
        if spec.warmup_requests > 0:
            await _phase(clients, spec, encoded, spec.warmup_requests, spec.max_duration_s)
        return await _phase(clients, spec, encoded, spec.max_requests, spec.max_duration_s)


def _dumps(body: dict[str, Any]) -> bytes:
    import json

    return json.dumps(body, separators=(",", ":")).encode()


async def _phase(clients: list[Any], spec: LoadSpec, encoded: list[bytes], max_requests: int,
                 max_duration_s: float) -> LoadResult:
    import httpx

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    issued = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + max_duration_s
    stopped = {"by": "max_requests"}

    async def worker(client: Any) -> None:
        nonlocal issued
        while True:
            if issued >= max_requests:
                return
            if time.perf_counter() >= deadline:
                stopped["by"] = "max_duration"
                return
            index = issued % len(encoded)
            issued += 1
            extra = spec.body_headers[index] if spec.body_headers else None
            sent = time.perf_counter()
            try:
                response = await client.post(spec.url, content=encoded[index], headers=extra)
                await response.aread()
                key = str(response.status_code)
                ok = 200 <= response.status_code < 300
            except httpx.HTTPError as exc:
                key = type(exc).__name__
                ok = False
            done = time.perf_counter()
            statuses[key] = statuses.get(key, 0) + 1
            if ok:
                latencies.append((done - sent) * 1000.0)

    await asyncio.gather(*(worker(client) for client in clients))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    result = LoadResult(requests=issued, ok=len(latencies), errors=issued - len(latencies), status_counts=statuses,
                        elapsed_s=elapsed, concurrency=spec.concurrency, items_per_request=spec.items_per_request,
                        stopped_by=stopped["by"], client_cpu_s=cpu,
                        client_cpu_pct=100.0 * cpu / elapsed if elapsed > 0 else 0.0)
    if elapsed > 0:
        result.requests_per_s = len(latencies) / elapsed
        result.items_per_s = result.requests_per_s * spec.items_per_request
    for key, value in percentiles(latencies).items():
        setattr(result, key, value)
    return result


def run_in_this_process(spec: LoadSpec) -> dict[str, Any]:
    """Run the load here (the subprocess entry point); returns :meth:`LoadResult.as_dict`."""
    check_loopback(spec.url)
    if not spec.bodies:
        raise ValueError("no request bodies")
    if spec.body_headers is not None and len(spec.body_headers) != len(spec.bodies):
        raise ValueError("body_headers must have one entry per body")
    if spec.concurrency < 1 or spec.max_requests < 1 or spec.max_duration_s <= 0:
        raise ValueError("concurrency, max_requests and max_duration_s must be positive")
    return asyncio.run(_drive(spec)).as_dict()


class LoadRunner:
    """One spawned client process, reused across runs (spawned, not forked: the driver holds Ray and
    torch threads that a fork would copy in an unknown state)."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def run(self, spec: LoadSpec) -> LoadResult:
        check_loopback(spec.url)
        future = self._pool.submit(run_in_this_process, spec)
        # The run bounds itself; the extra margin covers warm-up and in-flight requests at the deadline.
        raw = future.result(timeout=2 * spec.max_duration_s + spec.timeout_s + 60)
        return LoadResult(**raw)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LoadRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
