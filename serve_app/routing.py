"""Per-tenant collection routing for the online path: the Gateway and the relay ask here which
collection is live for a (tenant, model), and where a write must go (see :mod:`serve_app.db.routes`).

Routes are cached for :data:`serve_app.db.routes.ROUTE_CACHE_TTL_S` per process, so a switch or a
migration's start is seen within that bound; the re-embed job waits out the same bound before it
reads its source.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from sqlalchemy.orm import Session, sessionmaker

from deployments.mock_vectors import MOCK_DIMENSION, MOCK_MODEL, MOCK_VERSION
from deployments.registry import get_model
from deployments.vector_store import VectorStore, collection_name
from serve_app.db.routes import ROUTE_CACHE_TTL_S, Route, RouteRepository


def ensure_model_collections(store: VectorStore, models: Iterable[str]) -> None:
    """Create each model's registry collection (and the mock one) if absent: where tenants start."""
    store.ensure_collection(MOCK_MODEL, MOCK_VERSION, MOCK_DIMENSION)
    for model in models:
        spec = get_model(model)
        store.ensure_collection(spec.name, spec.version, spec.dimension)


def default_collection(model: str) -> str:
    """A tenant's collection of ``model`` before any migration: the registry version's."""
    version = MOCK_VERSION if model == MOCK_MODEL else get_model(model).version
    return collection_name(model, version)


class RouteResolver:
    """Cached reads of tenant routes (one per process; thread-safe enough for dict get/set)."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float = ROUTE_CACHE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Route]] = {}

    def resolve(self, org_id: str, model: str) -> Route:
        key = (org_id, model)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        with self._sessions() as session:
            route = RouteRepository(session).get(org_id, model, default_collection(model))
        self._cache[key] = (now, route)
        return route

    async def aresolve(self, org_id: str, model: str) -> Route:
        hit = self._cache.get((org_id, model))
        if hit is not None and self._clock() - hit[0] < self._ttl_s:
            return hit[1]
        return await asyncio.to_thread(self.resolve, org_id, model)

    def routes_of(self, org_id: str, models: list[str]) -> dict[str, Route]:
        """Uncached: the tenant's route for each of ``models`` and every model it has a row for."""
        with self._sessions() as session:
            repo = RouteRepository(session)
            found = {r.model: r for r in repo.list(org_id=org_id)}
            for model in models:
                found.setdefault(model, repo.get(org_id, model, default_collection(model)))
        return dict(sorted(found.items()))
