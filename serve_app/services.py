"""Everything a request handler needs, built once per gateway replica and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deployments.model_paths import ModelPaths
from serve_app.embedder_client import EmbedderClient
from serve_app.errors import ApiError
from serve_app.settings import Settings

if TYPE_CHECKING:
    from deployments.vector_store import AsyncVectorStore
    from serve_app.db.database import Database
    from serve_app.routing import RouteResolver

RETRY_SOON = {"Retry-After": "5"}


@dataclass
class Services:
    settings: Settings
    embedders: EmbedderClient
    verifier: Any  # serve_app.auth.TokenVerifier
    limiter: Any  # serve_app.tenant_admission.TenantAdmission (or rate_limit.TenantRateLimiter in-process)
    gate: Any  # serve_app.rate_limit.ConcurrencyGate
    store: Any | None = None  # deployments.vector_store.AsyncVectorStore
    db: Any | None = None  # serve_app.db.database.Database
    routes: Any | None = None  # serve_app.routing.RouteResolver (per-tenant live collections)
    switches: Any | None = None  # serve_app.switches.SwitchReader of real_embeddings (None: the Settings value)
    model_paths: ModelPaths = field(init=False)  # where the weights are: settings.model_paths(), built once

    def __post_init__(self) -> None:
        self.model_paths = self.settings.model_paths()

    # The one place a route learns that a part it needs is missing: 503 with Retry-After.
    def require_db(self) -> Database:
        if self.db is None:
            raise ApiError(503, "database_unavailable", "the job database is not configured", headers=RETRY_SOON)
        db: Database = self.db
        return db

    def require_routes(self) -> RouteResolver:
        if self.routes is None:
            raise ApiError(503, "database_unavailable", "the job database is not configured", headers=RETRY_SOON)
        routes: RouteResolver = self.routes
        return routes

    def require_store(self) -> AsyncVectorStore:
        if self.store is None:
            raise ApiError(503, "store_unavailable", "the vector store is not configured", headers=RETRY_SOON)
        store: AsyncVectorStore = self.store
        return store
