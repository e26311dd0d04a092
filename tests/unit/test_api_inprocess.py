"""The FastAPI app in-process (no Ray): the rollback switch, anonymous access rules, error shapes.

Uses FakeHashBackend (a named fake) behind LocalEmbedderClient and a real SQLite database.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from deployments.backends.fake import FakeHashBackend
from deployments.registry import get_model
from serve_app.api import create_api
from serve_app.auth import TokenVerifier, mint_token
from serve_app.db import upgrade_database
from serve_app.db.database import Database
from serve_app.embedder_client import LocalEmbedderClient
from serve_app.rate_limit import ConcurrencyGate, TenantRateLimiter
from serve_app.routes import jobs, vectors_search, vectors_write
from serve_app.services import Services
from serve_app.settings import Settings
from serve_app.switches import real_embeddings_reader

SECRET = "unit-test-secret-0123456789abcdef0123456789"


def make_client(tmp_path: Path, routers: tuple[object, ...] = (vectors_write.router, jobs.router),
                **overrides: object) -> httpx.AsyncClient:
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET, **overrides)  # type: ignore[arg-type]
    upgrade_database(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    services = Services(
        settings=settings,
        embedders=LocalEmbedderClient({"minilm-l6-v2": FakeHashBackend(get_model("minilm-l6-v2"))}),
        verifier=TokenVerifier(settings), limiter=TenantRateLimiter(1000, 1000), gate=ConcurrencyGate(100),
        db=db, switches=real_embeddings_reader(db.readonly_sessions, settings.enable_real_embeddings),
    )
    app = create_api(services, extra_routers=routers)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


ALL_ROUTERS = (vectors_write.router, vectors_search.router, jobs.router)


def bearer(settings_env: str = "development", org: str = "org-a") -> dict[str, str]:
    settings = Settings(jwt_secret=SECRET, env=settings_env)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {mint_token(settings, org_id=org, sub='u')}"}


async def test_rollback_switch_turns_real_routes_off_but_mock_keeps_working(tmp_path: Path) -> None:
    async with make_client(tmp_path, enable_real_embeddings=False) as client:
        off = await client.post("/v1/embeddings", json={"input": "x"})
        assert off.status_code == 503
        assert "HEIMDEX_ENABLE_REAL_EMBEDDINGS" in off.json()["error"]["message"]
        assert off.headers["Retry-After"]
        embed = await client.post("/vectors/embed", headers=bearer(),
                                  json={"asset_id": "a", "segment_id": "s", "text": "hello"})
        assert embed.status_code == 503 and embed.json()["error"]["code"] == "real_embeddings_disabled"
        mock = await client.post("/vectors/mock", headers=bearer(), json={"asset_id": "a", "segment_id": "s"})
        assert mock.status_code == 202, mock.text
        assert mock.headers["Deprecation"] == "true"
        job = await client.get(f"/jobs/{mock.json()['job_id']}", headers=bearer())
        assert job.status_code == 200 and job.json()["status"] == "queued"


async def test_switch_on_embeds_with_the_backend(tmp_path: Path) -> None:
    async with make_client(tmp_path) as client:
        response = await client.post("/v1/embeddings", json={"input": ["a b", "c"]})
        assert response.status_code == 200
        assert len(response.json()["data"][0]["embedding"]) == 384


async def test_anonymous_embeddings_only_in_development(tmp_path: Path) -> None:
    async with make_client(tmp_path, env="production") as client:
        anonymous = await client.post("/v1/embeddings", json={"input": "x"})
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "missing_token"
        with_token = await client.post("/v1/embeddings", json={"input": "x"}, headers=bearer("production"))
        assert with_token.status_code == 200


async def test_a_bad_token_is_refused_even_where_anonymous_is_allowed(tmp_path: Path) -> None:
    async with make_client(tmp_path) as client:
        response = await client.post("/v1/embeddings", json={"input": "x"},
                                     headers={"Authorization": "Bearer not.a.jwt"})
        assert response.status_code == 401
        assert "not.a.jwt" not in response.text


async def test_embed_job_rows_written_in_one_transaction(tmp_path: Path) -> None:
    from serve_app.db import Job, JobEvent, Outbox

    async with make_client(tmp_path) as client:
        response = await client.post("/vectors/embed", headers=bearer(),
                                     json={"asset_id": "a", "segment_id": "s", "text": "hello"})
        assert response.status_code == 202
    db = Database(Settings(data_dir=tmp_path).resolved_database_url)
    with db.sessions() as session:
        assert session.query(Job).count() == 1
        assert session.query(JobEvent).count() == 1
        outbox = session.query(Outbox).one()
        assert outbox.payload["text"] == "hello" and outbox.payload["org_id"] == "org-a"


@pytest.mark.parametrize("env", ["production"])
def test_production_refuses_the_default_secret(env: str) -> None:
    with pytest.raises(ValueError, match="HEIMDEX_JWT_SECRET"):
        Settings(env=env)  # type: ignore[arg-type]


async def test_job_counts_are_per_tenant_and_follow_status(tmp_path: Path) -> None:
    async with make_client(tmp_path) as client:
        for i in range(3):
            accepted = await client.post("/vectors/embed", headers=bearer(org="org-a"),
                                         json={"asset_id": "a", "segment_id": f"s{i}", "text": f"hello {i}"})
            assert accepted.status_code == 202
        await client.post("/vectors/embed", headers=bearer(org="org-b"),
                          json={"asset_id": "a", "segment_id": "s", "text": "other tenant"})
        mine = await client.get("/jobs/counts", headers=bearer(org="org-a"))
        assert mine.status_code == 200, mine.text
        assert mine.json()["total"] == 3 and mine.json()["counts"]["queued"] == 3
        assert set(mine.json()["counts"]) >= {"queued", "running", "succeeded", "failed"}
        theirs = (await client.get("/jobs/counts", headers=bearer(org="org-b"))).json()
        assert theirs["total"] == 1
        assert (await client.get("/jobs/counts")).status_code == 401
