"""The Gateway: Heimdex's FastAPI ingress deployment (auth, tenancy, schemas, routing to Embedders)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from ray import serve

from deployments.logging_setup import configure_logging
from deployments.vector_store import open_async_store, open_store
from deployments.vector_store.actor import get_store
from serve_app.api import create_api
from serve_app.auth import TokenVerifier
from serve_app.db.database import Database
from serve_app.embedder_client import ServeEmbedderClient
from serve_app.metrics import MetricsSources
from serve_app.rate_limit import ConcurrencyGate
from serve_app.routes import jobs, vectors_documents, vectors_search, vectors_write
from serve_app.routing import RouteResolver, ensure_model_collections
from serve_app.services import Services
from serve_app.settings import get_settings
from serve_app.switches import real_embeddings_reader
from serve_app.tenant_admission import TenantAdmission, ledger_link

logger = logging.getLogger("heimdex.gateway")


# Options (replicas, CPUs, queues, health checks) live in serve_config.yaml only.
@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway:
    def __init__(self, embedders: dict[str, Any], relay: Any = None) -> None:
        configure_logging()
        settings = get_settings()
        store_config = settings.store_config()
        store = open_async_store(store_config)
        db = Database(settings.resolved_database_url)
        # Each tenant's rate and concurrency budget, shared by every Gateway replica through the ledger actor.
        admission = TenantAdmission(settings.tenant_rate_per_s, settings.tenant_burst, settings.tenant_in_flight_pool,
                                    settings.tenant_min_in_flight, ledger=ledger_link(settings.budget_ledger_name))
        self.services = Services(
            settings=settings,
            embedders=ServeEmbedderClient(embedders, timeout_s=settings.embed_timeout_s, admission=admission,
                                          calls_in_flight=settings.embed_calls_in_flight),
            verifier=TokenVerifier(settings),
            limiter=admission,
            gate=ConcurrencyGate(settings.max_in_flight),
            store=store,
            db=db,
            routes=RouteResolver(db.sessions),
            # The live rollback switch (service_switches row; the Settings value until one is written).
            switches=real_embeddings_reader(db.readonly_sessions, settings.enable_real_embeddings),
        )
        self.relay = relay
        self.embedders = embedders
        ensure_model_collections(open_store(store_config), embedders)
        self.store_actor = get_store(store_config) if store_config.embedded else None
        logger.info("gateway ready; models served: %s", sorted(embedders))

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_api(self.services, extra_routers=(
            vectors_search.router, vectors_write.router, vectors_documents.router, jobs.router))
        app.state.metrics_sources = MetricsSources(self.embedders, self.relay, self.store_actor, self.services.db)
        return app
