"""Everything a request handler needs, built once per gateway replica and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.embedder_client import EmbedderClient
from serve_app.settings import Settings


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
