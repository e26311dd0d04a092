"""Tenant isolation on the real app: one tenant floods /v1/embeddings over real HTTP while another sends a
steady trickle; what each model pass contained (the Embedder's pass records) shows the trickle never waits
behind the flood's backlog. Bounded in requests; nothing here is timed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import ServeApp
from tests.fault.helpers import poll, unique
from tests.fault.serve_admin import with_deployment
from tests.serve.helpers import auth

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"
FLOOD_CLIENTS = 12
FLOOD_TEXTS = 256  # per request: twelve of them queue ~3,000 texts, six full passes at 512 in arrival order
TRICKLE_REQUESTS = 15


def _ledger_knows(tenant: str) -> bool:
    import ray

    from serve_app.settings import Settings

    actor = ray.get_actor(Settings().budget_ledger_name, namespace="heimdex")
    return bool(ray.get(actor.knows.remote(tenant), timeout=30))


def embedder(method: str, *args: Any) -> Any:
    from ray import serve

    handle = serve.get_deployment_handle("Embedder", app_name="heimdex")
    return getattr(handle, method).remote(*args).result(timeout_s=60)


def flood_and_trickle(app: ServeApp, trickle_requests: int) -> tuple[list[int], dict[int, int], str]:
    """Tenant "flood" keeps 12 clients of 256-text requests going (honouring Retry-After on 429) while tenant
    "trickle" sends single-text requests one after another, once the flood queues over 1,024 texts. Returns
    in which pass after its arrival each trickle request rode (1 = the first to start), the flood's answers,
    and a /metrics scrape taken during the flood. Asserts nothing was lost on the way."""
    url = f"{app.url}/v1/embeddings"
    flood_org, trickle_org = unique("org-flood"), unique("org-trickle")
    start = embedder("pass_count")
    stop = threading.Event()
    flood_ok: list[int] = []
    flood_codes: dict[int, int] = {}
    lock = threading.Lock()

    def flood_client(c: int) -> None:
        headers = auth(flood_org)
        body = {"input": [f"flood client {c} text {i} about rivers and bridges" for i in range(FLOOD_TEXTS)],
                "model": MODEL}
        with httpx.Client(timeout=180) as client:
            while not stop.is_set():
                response = client.post(url, json=body, headers=headers)
                with lock:
                    flood_codes[response.status_code] = flood_codes.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    assert len(response.json()["data"]) == FLOOD_TEXTS
                    with lock:
                        flood_ok.append(c)
                else:  # over its share: 429 + Retry-After, honoured (wakes early when the test ends)
                    assert response.status_code == 429, response.text
                    stop.wait(float(response.headers["Retry-After"]))

    threads = [threading.Thread(target=flood_client, args=(c,), daemon=True) for c in range(FLOOD_CLIENTS)]
    for t in threads:
        t.start()
    try:
        # The flood's backlog is in place: the Embedder queues more than two full passes of its texts.
        deadline = time.monotonic() + 120
        while embedder("queued_texts").get(flood_org, 0) <= 1024:
            assert time.monotonic() < deadline, f"no flood backlog formed: {embedder('queued_texts')}"
            stop.wait(0.02)
        headers = auth(trickle_org)
        with httpx.Client(timeout=180) as client:
            for i in range(trickle_requests):
                response = client.post(url, json={"input": f"trickle question {i}", "model": MODEL}, headers=headers)
                assert response.status_code == 200, response.text
                assert len(response.json()["data"]) == 1
        metrics = httpx.get(f"{app.url}/metrics", timeout=30).text
        # The Gateway reconciles the tenants' budgets with the shared ledger actor (budgets across replicas).
        assert _ledger_knows(flood_org)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)

    passes = embedder("recent_passes", start)
    assert passes and passes[0]["seq"] == start + 1, "the pass records must cover the whole test"
    trickle = [nth for p in passes for tenant, _, nth in p["requests"] if tenant == trickle_org]
    flood_texts = sum(p["texts"].get(flood_org, 0) for p in passes)
    assert len(trickle) == trickle_requests  # every trickle request was in exactly one pass
    # The flood was served all along, and every text it was answered for was in a pass.
    assert len(flood_ok) >= 1 and flood_texts >= len(flood_ok) * FLOOD_TEXTS, (len(flood_ok), flood_texts)
    assert set(flood_codes) <= {200, 429}, flood_codes
    print(f"\nflood: {flood_codes}, {flood_texts} texts in passes; trickle rode passes {trickle} after "
          f"arrival; {len(passes)} passes")
    return trickle, flood_codes, metrics


def test_a_trickle_rides_the_next_model_pass_while_another_tenant_floods(serve_app: ServeApp) -> None:
    trickle, flood_codes, metrics = flood_and_trickle(serve_app, TRICKLE_REQUESTS)
    assert max(trickle) <= 2, trickle  # the first or second pass to start after each request arrived
    # Visible: per-tenant queue and wait figures, and the flood's 429s, if it got any.
    assert f'heimdex_embedder_tenant_wait_seconds_count{{model="{MODEL}"' in metrics
    assert "heimdex_embedder_tenant_queue_texts{" in metrics
    if flood_codes.get(429):
        assert "heimdex_tenant_refusals_total" in metrics and 'budget="concurrency"' in metrics


@pytest.mark.slow
def test_negative_control_one_fifo_queue_makes_the_trickle_wait_behind_the_flood(serve_app: ServeApp) -> None:
    """The same load with fair queueing switched off (live, through the Embedder's user_config): the test
    above would fail, which is what shows that it measures fairness."""
    original = serve_app.config
    embedder_config = next(d for d in original["applications"][0]["deployments"] if d["name"] == "Embedder")
    fifo = with_deployment(original, "Embedder",
                           user_config={**embedder_config.get("user_config", {}), "fair_queueing": False})
    try:
        serve_app.redeploy(fifo)
        poll(lambda: embedder("info")["fair_queueing"] is False, 120, "fair_queueing off", interval_s=0.5)
        trickle, _, _ = flood_and_trickle(serve_app, 4)
        # The first trickle request arrives behind more than 1,024 queued flood texts, two full passes of
        # 512 in arrival order. (Later ones find the flood held to its share of calls in flight by the
        # Gateway, so a shorter queue: the edge budget and the fair passes each limit the harm.)
        assert trickle[0] > 2, trickle
    finally:
        serve_app.redeploy(original)
        poll(lambda: embedder("info")["fair_queueing"] is True, 120, "fair_queueing on again", interval_s=0.5)
