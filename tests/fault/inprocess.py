"""An in-process Heimdex API + RelayCore over a real SQL database, with NAMED fakes for the vector store.

Used by the fault tests that need faults Ray cannot produce on demand (a store that refuses writes for
exactly as long as a test wants, a database that goes away and comes back). Everything except the
vector store and the model is the production code: routes, repositories, outbox, relay logic.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.testclient import TestClient

from deployments.backends.fake import FakeHashBackend
from deployments.registry import get_model
from deployments.vector_store.base import PointRecord
from serve_app.api import create_api
from serve_app.auth import TokenVerifier
from serve_app.db.database import Database
from serve_app.embedder_client import LocalEmbedderClient
from serve_app.rate_limit import ConcurrencyGate, TenantRateLimiter
from serve_app.relay import RelayCore
from serve_app.routes import jobs, vectors_search, vectors_write
from serve_app.routing import RouteResolver
from serve_app.services import Services
from serve_app.settings import Settings

MODEL = "minilm-l6-v2"


class MemoryStoreFake:
    """An in-memory stand-in (a named fake) for AsyncVectorStore: points keyed by (collection, tenant, point id)."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str], dict[str, PointRecord]] = defaultdict(dict)
        self.upserts = 0

    async def upsert(self, collection: str, tenant: str, points: list[PointRecord], wait: bool = True) -> int:
        self.upserts += 1
        for point in points:
            self.points[(collection, tenant)][point.id] = point
        return len(points)

    async def ping(self) -> dict[str, Any]:
        return {"kind": "memory-fake", "collections": sorted({c for c, _ in self.points})}

    def count(self, tenant: str) -> int:
        return sum(len(p) for (_, t), p in self.points.items() if t == tenant)


class FailingStoreFake(MemoryStoreFake):
    """MemoryStoreFake that refuses every upsert while ``down`` is set (a store outage)."""

    def __init__(self, down: bool = True) -> None:
        super().__init__()
        self.down = down
        self.refused = 0

    async def upsert(self, collection: str, tenant: str, points: list[PointRecord], wait: bool = True) -> int:
        if self.down:
            self.refused += 1
            raise ConnectionError("vector store unavailable (FailingStoreFake)")
        return await super().upsert(collection, tenant, points, wait)


def make_services(settings: Settings, store: Any = None, db: Database | None = None,
                  embedders: Any = None) -> Services:
    return Services(
        settings=settings,
        embedders=embedders or LocalEmbedderClient({MODEL: FakeHashBackend(get_model(MODEL))}),
        verifier=TokenVerifier(settings),
        limiter=TenantRateLimiter(settings.tenant_rate_per_s, settings.tenant_burst),
        gate=ConcurrencyGate(settings.max_in_flight),
        store=store,
        db=db,
        routes=None if db is None else RouteResolver(db.sessions),
    )


def make_client(services: Services) -> TestClient:
    app = create_api(services, extra_routers=(vectors_search.router, vectors_write.router, jobs.router))
    return TestClient(app, raise_server_exceptions=False)


@dataclass
class Harness:
    settings: Settings
    store: Any
    client: TestClient
    relay: RelayCore

    def drive(self, until: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Run relay batches until ``until()`` holds (a deadline, never a blind sleep)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            claimed = asyncio.run(self.relay.run_once())
            if until():
                return
            if claimed == 0:
                time.sleep(0.02)  # rows are in backoff
        raise AssertionError(f"relay condition not reached in {timeout_s}s: {self.relay.status()}")
