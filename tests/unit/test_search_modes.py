"""``mode`` of POST /vectors/search without Ray: which mode a request gets, what reaches the store, the errors.

The app runs in-process on a real SQLite database with a FakeHashBackend (a named fake model) and a store fake
that records each search's arguments; the relay writes through the same fake, so the points it builds are
checked too (both vectors: the model's and the BM25 terms of the text).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.backends.fake import FakeHashBackend
from deployments.registry import get_model
from deployments.vector_store import bm25
from deployments.vector_store.base import SearchHit, SparseIndexMissingError
from serve_app.api import create_api
from serve_app.auth import TokenVerifier
from serve_app.db import EmbedSegment, JobRepository, upgrade_database
from serve_app.db.database import Database
from serve_app.embedder_client import LocalEmbedderClient
from serve_app.rate_limit import ConcurrencyGate, TenantRateLimiter
from serve_app.relay import RelayCore
from serve_app.routes import vectors_search
from serve_app.routing import RouteResolver
from serve_app.services import Services
from serve_app.settings import Settings
from tests.fault.inprocess import MemoryStoreFake
from tests.unit.test_api_inprocess import SECRET, bearer
from tests.unit.test_documented_errors import assert_answers

MODEL = "minilm-l6-v2"


class CountingBackend(FakeHashBackend):
    def __init__(self) -> None:
        super().__init__(get_model(MODEL))
        self.calls = 0

    def embed(self, texts: list[str]) -> Any:
        self.calls += 1
        return super().embed(texts)


class RecordingStore(MemoryStoreFake):
    """Records every search's arguments; ``missing`` makes sparse/hybrid fail as on a pre-hybrid collection."""

    def __init__(self) -> None:
        super().__init__()
        self.searches: list[dict[str, Any]] = []
        self.missing: BaseException | None = None

    async def search(self, collection: str, tenant: str, vector: Any, **kwargs: Any) -> list[SearchHit]:
        self.searches.append({"collection": collection, "tenant": tenant, "vector": vector, **kwargs})
        if self.missing is not None and kwargs.get("mode") != "dense":
            raise self.missing
        return [SearchHit("p1", 0.5, {"asset_id": "a", "segment_id": "s", "text_preview": "t"})]


class WrappedError(RuntimeError):
    """What a Ray actor call raises when the actor's method raised: the original as ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@pytest.fixture
def world(tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET, search_mode="hybrid")
    upgrade_database(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    backend, store = CountingBackend(), RecordingStore()
    services = Services(settings=settings, embedders=LocalEmbedderClient({MODEL: backend}),
                        verifier=TokenVerifier(settings), limiter=TenantRateLimiter(1000, 1000),
                        gate=ConcurrencyGate(100), db=db, store=store, routes=RouteResolver(db.sessions, ttl_s=0.0))
    app = create_api(services, extra_routers=(vectors_search.router,))
    yield settings, db, backend, store, app
    db.dispose()


async def search(app: Any, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.post("/vectors/search", headers=bearer(), json=body)


async def test_the_mode_each_request_gets(world: Any) -> None:
    _settings, _db, backend, store, app = world
    cases: list[tuple[dict[str, Any], str]] = [
        ({"query": "KX7731 pump"}, "hybrid"),  # no mode: the deployment's default (HEIMDEX_SEARCH_MODE)
        ({"query": "KX7731 pump", "mode": "dense"}, "dense"),
        ({"query": "KX7731 pump", "mode": "sparse"}, "sparse"),
        ({"vector": [0.1] * 384}, "dense"),  # a vector without a mode: dense, as before modes existed
        ({"query": "KX7731 pump", "score_threshold": 0.3}, "dense"),  # a cosine threshold: dense
    ]
    for body, mode in cases:
        response = await search(app, **body)
        assert response.status_code == 200, response.text
        assert response.json()["mode"] == mode, body
        sent = store.searches[-1]
        assert sent["mode"] == mode and sent["tenant"] == "org-a"
        assert sent["text"] == body.get("query")
        assert (sent["vector"] is None) == (mode == "sparse"), "sparse needs no query vector"
    assert backend.calls == 3, "the query is embedded for dense and hybrid only, never for sparse or a vector"


async def test_bad_mode_requests_are_422_naming_the_field(world: Any) -> None:
    _settings, _db, _backend, store, app = world
    for body, code, field in [
        ({"vector": [0.1] * 384, "mode": "hybrid"}, "mode_needs_query", "mode"),
        ({"vector": [0.1] * 384, "mode": "sparse"}, "mode_needs_query", "mode"),
        ({"query": "x", "mode": "hybrid", "score_threshold": 0.5}, "score_threshold_needs_dense", "score_threshold"),
    ]:
        response = await search(app, **body)
        assert (response.status_code, response.json()["error"]["code"], response.json()["error"]["field"]) == (
            422, code, field), response.text
    response = await search(app, query="x", mode="fuzzy")
    assert response.status_code == 422 and response.json()["error"]["field"] == "mode"
    assert store.searches == []


@pytest.mark.parametrize("wrapped", [False, True], ids=["direct", "through-the-store-actor"])
async def test_a_pre_hybrid_collection_is_409_sparse_index_missing_as_documented(world: Any, wrapped: bool) -> None:
    _settings, _db, _backend, store, app = world
    error = SparseIndexMissingError("embeddings__minilm-l6-v2__v1")
    store.missing = WrappedError(error) if wrapped else error
    for mode in ("sparse", "hybrid"):
        response = await search(app, query="KX7731", mode=mode)
        assert_answers(response, 409, "sparse_index_missing", "mode")
        message = response.json()["error"]["message"]
        assert "embeddings__minilm-l6-v2__v1" in message and "re-embed" in message
        assert "--source collection:minilm-l6-v2 --model minilm-l6-v2" in message
    assert (await search(app, query="KX7731", mode="dense")).status_code == 200, "dense still answers"


async def test_the_relay_writes_both_vectors(world: Any) -> None:
    settings, db, backend, store, _app = world
    with db.sessions() as session:
        JobRepository(session).create_embed_jobs("org-a", "u", [EmbedSegment("a", "s1", "Ticket KX7731 leaks oil",
                                                                             MODEL, "v1")])
    relay = RelayCore(settings, LocalEmbedderClient({MODEL: backend}), store)
    try:
        deadline = time.monotonic() + 30
        while await relay.run_once():
            assert time.monotonic() < deadline
    finally:
        relay.db.dispose()
    (point,) = [p for points in store.points.values() for p in points.values()]
    assert point.sparse == bm25.encode_document("Ticket KX7731 leaks oil")
    assert set(bm25.encode_query("kx7731").indices) <= set(point.sparse.indices)
    assert len(point.vector) == 384
