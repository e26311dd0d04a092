"""Overload: the per-tenant budget (429), the global in-flight gate (503) and the Embedder's bounded
queue (Serve max_queued_requests → 503) all answer at once with Retry-After; admitted requests and
other tenants are unaffected, and nothing answers 500 or hangs.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.backends import EmbedOutput
from serve_app.api import create_api
from serve_app.settings import Settings
from tests.conftest import ServeApp
from tests.fault.helpers import poll
from tests.fault.inprocess import MODEL, make_client, make_services
from tests.fault.serve_admin import deployment_details, redeploy_and_wait, with_deployment
from tests.serve.helpers import auth

EMBED = {"input": "overload probe", "model": MODEL}


def test_tenant_budget_429_with_retry_after_other_tenants_unaffected(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, tenant_rate_per_s=5, tenant_burst=5)
    client = make_client(make_services(settings))
    greedy, polite = auth("org-greedy"), auth("org-polite")
    statuses = [client.post("/v1/embeddings", json=EMBED, headers=greedy) for _ in range(12)]
    assert [r.status_code for r in statuses[:5]] == [200] * 5
    refused = [r for r in statuses if r.status_code != 200]
    assert len(refused) >= 5 and all(r.status_code == 429 for r in refused)
    for r in refused:
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "tenant_rate_limited" and r.json()["error"]["type"] == "rate_limit_error"
    # Another tenant keeps its whole budget.
    assert [client.post("/v1/embeddings", json=EMBED, headers=polite).status_code for _ in range(5)] == [200] * 5
    # The greedy tenant is admitted again once its bucket refills (5/s): poll, never sleep-and-hope.
    poll(lambda: client.post("/v1/embeddings", json=EMBED, headers=greedy).status_code == 200, 5, "refill")


class GatedEmbedderClient:
    """Wraps an embedder client; every embed waits until ``release`` is set (requests pile up in flight)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.waiting = 0

    def served_models(self) -> list[str]:
        return list(self.inner.served_models())

    async def embed(self, model: str, texts: list[str], tenant: str = "(unnamed)") -> EmbedOutput:
        self.waiting += 1
        await self.release.wait()
        return await self.inner.embed(model, texts, tenant)

    async def info(self, model: str) -> dict[str, Any]:
        return dict(await self.inner.info(model))


def test_global_in_flight_gate_503_with_retry_after_admitted_requests_succeed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_in_flight=4)
    services = make_services(settings)
    gated = GatedEmbedderClient(services.embedders)
    services.embedders = gated
    app = create_api(services)

    async def scenario() -> tuple[list[httpx.Response], int, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://heimdex") as client:
            tasks = [asyncio.create_task(client.post("/v1/embeddings", json=EMBED, headers=auth(f"org-{i % 3}")))
                     for i in range(10)]
            deadline = time.monotonic() + 10
            while not (gated.waiting == 4 and sum(t.done() for t in tasks) == 6):
                assert time.monotonic() < deadline, (gated.waiting, [t.done() for t in tasks])
                await asyncio.sleep(0.01)
            health = (await client.get("/healthz")).status_code  # probes bypass the gate
            gated.release.set()
            responses = list(await asyncio.gather(*tasks))
            after = await client.post("/v1/embeddings", json=EMBED, headers=auth("org-0"))
            return responses, health, after

    responses, health, after = asyncio.run(asyncio.wait_for(scenario(), 30))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 4 + [503] * 6, codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "overloaded"
        else:
            assert len(r.json()["data"]) == 1
    assert health == 200 and after.status_code == 200 and services.gate.in_flight == 0


@pytest.mark.serve
@pytest.mark.slow
def test_embedder_queue_overflow_on_the_real_app_is_503_not_500(serve_app: ServeApp) -> None:
    original = serve_app.config
    tight = with_deployment(original, "Embedder", max_ongoing_requests=2, max_queued_requests=2,
                            user_config={"max_batch_size": 2, "batch_wait_timeout_s": 0.05})
    body = {"input": [f"overload sentence number {i} " * 40 for i in range(32)], "model": MODEL}
    try:
        redeploy_and_wait(serve_app, tight, "Embedder", "max_queued_requests", 2)
        headers = auth("org-overload")

        def call(_: int) -> httpx.Response:
            return httpx.post(f"{serve_app.url}/v1/embeddings", json=body, headers=headers, timeout=90)

        with ThreadPoolExecutor(max_workers=60) as pool:
            responses = list(pool.map(call, range(60)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}, sorted(set(codes))
        assert codes.count(503) >= 1 and codes.count(200) >= 1, codes
        for r in responses:
            if r.status_code == 503:
                assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "overloaded", r.text
            else:
                assert len(r.json()["data"]) == 32
        print(f"\nembedder overflow: {codes.count(200)} x 200, {codes.count(503)} x 503 of 60")
    finally:
        redeploy_and_wait(serve_app, original, "Embedder", "max_queued_requests", 512)
    assert deployment_details(serve_app, "Embedder")["deployment_config"]["max_ongoing_requests"] == 256
