"""Cross-model routes without Ray: a tenant's minilm route that lives in an mpnet collection.

Real SQLite database, real route repository, real relay and API code; the models are FakeHashBackends (named
fakes) with the registry's real dimensions (384 and 768) and the store is an in-memory fake, so what is checked is
which model embeds what and where it lands: every collection gets vectors of its own model, under that model's
point IDs; a 768-d vector never reaches a 384-d collection; an unserved live model is refused at the Gateway.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.backends.fake import FakeHashBackend
from deployments.point_ids import point_id_for
from deployments.registry import get_model
from deployments.vector_store.base import SearchHit, collection_name
from jobs import migration
from serve_app.api import create_api
from serve_app.auth import TokenVerifier
from serve_app.db import EmbedSegment, JobRepository, RouteConflictError, RouteRepository, upgrade_database
from serve_app.db.database import Database
from serve_app.embedder_client import LocalEmbedderClient
from serve_app.rate_limit import ConcurrencyGate, TenantRateLimiter
from serve_app.relay import RelayCore
from serve_app.routes import jobs, vectors_search, vectors_write
from serve_app.routing import RouteResolver
from serve_app.services import Services
from serve_app.settings import Settings
from tests.fault.inprocess import MemoryStoreFake
from tests.unit.test_api_inprocess import SECRET, bearer

MINILM, MPNET = "minilm-l6-v2", "all-mpnet-base-v2"
MINI_V1 = collection_name(MINILM, "v1")
MPNET_V2 = collection_name(MPNET, "v2")


class CountingFakeBackend(FakeHashBackend):
    """FakeHashBackend that records how many texts it embedded."""

    def __init__(self, name: str) -> None:
        super().__init__(get_model(name))
        self.texts = 0

    def embed(self, texts: list[str]) -> Any:
        self.texts += len(texts)
        return super().embed(texts)


class SearchingStoreFake(MemoryStoreFake):
    """MemoryStoreFake that also answers searches and records the (collection, vector size) of each."""

    def __init__(self) -> None:
        super().__init__()
        self.searches: list[tuple[str, int]] = []

    async def search(self, collection: str, tenant: str, vector: Any, **kwargs: Any) -> list[SearchHit]:
        self.searches.append((collection, len(vector)))
        return []


def _routes(db: Database, org: str, pending: str | None = None, switch: bool = False) -> None:
    with db.sessions() as session:
        repo = RouteRepository(session)
        repo.begin_migration(org, MINILM, MINI_V1, pending or MPNET_V2, "job-x", f"collection:{MINILM}")
        if switch:
            repo.switch(org, MINILM, "job-x")


def _write(db: Database, org: str, n: int, prefix: str) -> None:
    with db.sessions() as session:
        JobRepository(session).create_embed_jobs(
            org, "u", [EmbedSegment("a", f"{prefix}{i}", f"text {prefix} {i}", MINILM, "v1") for i in range(n)])


@pytest.fixture
def world(tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET)
    upgrade_database(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    backends = {MINILM: CountingFakeBackend(MINILM), MPNET: CountingFakeBackend(MPNET)}
    store = SearchingStoreFake()
    relay = RelayCore(settings, LocalEmbedderClient(dict(backends)), store)  # type: ignore[arg-type]
    relay.routes = RouteResolver(db.sessions, ttl_s=0.0)  # every batch sees the route as it is now
    yield settings, db, backends, store, relay
    db.dispose()
    relay.db.dispose()


async def _drain(relay: RelayCore) -> None:
    deadline = time.monotonic() + 30
    while await relay.run_once():
        assert time.monotonic() < deadline


async def test_relay_embeds_each_target_with_its_collections_model(world: Any) -> None:
    _settings, db, backends, store, relay = world
    _routes(db, "org-m")  # migrating minilm -> mpnet: writes reach minilm v1 AND mpnet v2
    _write(db, "org-m", 3, "m")
    _write(db, "org-o", 2, "o")  # another tenant, steady on minilm
    await _drain(relay)

    mine_mini, mine_mpnet = store.points[(MINI_V1, "org-m")], store.points[(MPNET_V2, "org-m")]
    assert len(mine_mini) == len(mine_mpnet) == 3
    assert {p.vector.shape[0] for p in mine_mini.values()} == {384}
    assert {p.vector.shape[0] for p in mine_mpnet.values()} == {768}
    # Point IDs per (collection model, version): the ones the bulk job computes for the same segment.
    assert set(mine_mpnet) == {point_id_for("org-m", "a", f"m{i}", MPNET, "v2") for i in range(3)}
    assert set(mine_mini) == {point_id_for("org-m", "a", f"m{i}", MINILM, "v1") for i in range(3)}
    assert {p.payload["model"] for p in mine_mpnet.values()} == {MPNET}
    assert backends[MPNET].texts == 3, "mpnet embedded the migrating tenant's writes only"
    expected = backends[MPNET].embed(["text m 0"]).vectors[0]
    got = mine_mpnet[point_id_for("org-m", "a", "m0", MPNET, "v2")].vector
    assert np.allclose(got, expected), "the mpnet collection holds the mpnet model's vector of the text"

    assert len(store.points[(MINI_V1, "org-o")]) == 2 and (MPNET_V2, "org-o") not in store.points


async def test_after_the_switch_search_and_writes_use_the_live_model(world: Any) -> None:
    import httpx

    settings, db, backends, store, relay = world
    _routes(db, "org-a", switch=True)  # live = mpnet v2, previous = minilm v1 (rollback target, still written)
    services = Services(settings=settings, embedders=LocalEmbedderClient(dict(backends)),
                        verifier=TokenVerifier(settings), limiter=TenantRateLimiter(1000, 1000),
                        gate=ConcurrencyGate(100), db=db, store=store, routes=RouteResolver(db.sessions, ttl_s=0.0))
    app = create_api(services, extra_routers=(vectors_write.router, vectors_search.router, jobs.router))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        found = await client.post("/vectors/search", headers=bearer(org="org-a"), json={"query": "hello"})
        assert found.status_code == 200, found.text
        assert found.json()["model"] == MINILM and found.json()["embedding_model"] == MPNET
        assert store.searches[-1] == (MPNET_V2, 768), "the query was embedded by mpnet for the mpnet collection"

        short = await client.post("/vectors/search", headers=bearer(org="org-a"), json={"vector": [0.1] * 384})
        assert short.status_code == 422 and short.json()["error"]["code"] == "dimension_mismatch"
        assert MPNET_V2 in short.json()["error"]["message"]
        assert len(store.searches) == 1, "a vector of the wrong size never reached the store"

        other = await client.post("/vectors/search", headers=bearer(org="org-b"), json={"query": "hello"})
        assert other.json()["embedding_model"] == MINILM and store.searches[-1] == (MINI_V1, 384)

        accepted = await client.post("/vectors/embed", headers=bearer(org="org-a"),
                                     json={"asset_id": "n", "segment_id": "1", "text": "a new write"})
        assert accepted.status_code == 202, accepted.text
        body = accepted.json()
        assert (body["model"], body["embedding_model"], body["model_version"]) == (MINILM, MPNET, "v2")
        assert body["point_id"] == point_id_for("org-a", "n", "1", MPNET, "v2")
    await _drain(relay)
    assert body["point_id"] in store.points[(MPNET_V2, "org-a")], "the answered point ID is the live one"
    assert point_id_for("org-a", "n", "1", MINILM, "v1") in store.points[(MINI_V1, "org-a")], \
        "the rollback target (minilm) gets the write too"

    # Rollback: minilm is live again at once, with the write made after the switch in it.
    rolled = migration.rollback(db.sessions, MINILM, ["org-a"], None)
    assert rolled["tenants"]["org-a"]["live"] == MINI_V1 and rolled["tenants"]["org-a"]["live_model"] == MINILM
    with pytest.raises(RouteConflictError, match=f"--model {MINILM}"):
        migration.rollback(db.sessions, MPNET, ["org-a"], None)


async def test_an_unserved_live_model_is_refused_at_the_gateway(world: Any) -> None:
    import httpx

    settings, db, backends, store, _relay = world
    _routes(db, "org-a", switch=True)
    only_minilm = LocalEmbedderClient({MINILM: backends[MINILM]})
    services = Services(settings=settings, embedders=only_minilm, verifier=TokenVerifier(settings),
                        limiter=TenantRateLimiter(1000, 1000), gate=ConcurrencyGate(100), db=db, store=store,
                        routes=RouteResolver(db.sessions, ttl_s=0.0))
    app = create_api(services, extra_routers=(vectors_write.router, vectors_search.router))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        search = await client.post("/vectors/search", headers=bearer(org="org-a"), json={"query": "hello"})
        write = await client.post("/vectors/embed", headers=bearer(org="org-a"),
                                  json={"asset_id": "n", "segment_id": "1", "text": "x"})
    for response in (search, write):
        assert response.status_code == 503 and response.json()["error"]["code"] == "live_model_not_served"
        assert MPNET in response.json()["error"]["message"]
    assert store.searches == [] and store.upserts == 0


def test_a_cross_model_source_moves_the_source_models_routes() -> None:
    assert migration.route_model_of("collection", MINILM, MPNET) == MINILM
    assert migration.route_model_of("collection", MINILM, MINILM) == MINILM
    assert migration.route_model_of("collection", "mock", MINILM) == MINILM, "mock -> real fills the real route"
    assert migration.route_model_of("jsonl", None, MPNET) == MPNET
    assert migration.route_model_of("collection", "not-a-model", MPNET) == MPNET
