"""POST /jobs/reembed: an admin re-embeds their tenant's mock vectors through the outbox and a Ray Job."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from deployments.vector_store import collection_name
from tests.conftest import ServeApp
from tests.serve.helpers import auth, wait_job

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"
SENTENCES = ["Volcanic eruptions can disrupt air travel for days.", "The violinist performed a concerto.",
             "Solar panels convert sunlight into electricity.", "The museum reopened after a renovation."]


def test_reembed_needs_admin_scope(serve_app: ServeApp) -> None:
    response = httpx.post(f"{serve_app.url}/jobs/reembed", headers=auth("org-plain"), timeout=30,
                          json={"source": "collection:mock", "model": MODEL})
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_scope_required"


@pytest.mark.parametrize(("body", "field"), [
    ({"source": "ftp://x", "model": MODEL}, "source"),
    ({"source": "collection:mock", "model": "nope"}, "model"),
    ({"source": "collection:mock", "model": MODEL, "to_version": "../etc"}, "to_version"),
])
def test_reembed_bad_input(serve_app: ServeApp, body: dict[str, str], field: str) -> None:
    response = httpx.post(f"{serve_app.url}/jobs/reembed", headers=auth("org-adm", scopes=("admin",)), json=body,
                          timeout=30)
    assert 400 <= response.status_code < 500 and response.json()["error"]["field"] == field, response.text


def test_admin_reembeds_own_tenant_and_no_other(serve_app: ServeApp) -> None:
    from deployments.vector_store import open_store
    from serve_app.settings import Settings

    org, other, version = f"org-re-{uuid.uuid4().hex[:6]}", f"org-re-{uuid.uuid4().hex[:6]}", \
        f"api-{uuid.uuid4().hex[:6]}"
    for tenant in (org, other):
        for i, text in enumerate(SENTENCES):
            response = httpx.post(f"{serve_app.url}/vectors/mock", headers=auth(tenant), timeout=30,
                                  json={"asset_id": "doc", "segment_id": str(i), "text": text})
            assert response.status_code == 202
            wait_job(serve_app.url, tenant, response.json()["job_id"])
    store = open_store(Settings().store_config())
    def held(tenant: str) -> tuple[object, object]:
        stats = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth(tenant), timeout=30).json()
        return stats["routes"], {c: n for c, n in stats["collections"].items() if n}

    other_before = held(other)

    response = httpx.post(f"{serve_app.url}/jobs/reembed", headers=auth(org, scopes=("admin",)), timeout=30,
                          json={"source": "collection:mock", "model": MODEL, "to_version": version})
    assert response.status_code == 202, response.text
    job = wait_job(serve_app.url, org, response.json()["id"], timeout_s=420)
    assert job["status"] == "succeeded", job
    assert job["result"]["embedded"] == len(SENTENCES)
    target = collection_name(MODEL, version)
    assert store.count(target, org) == len(SENTENCES)
    assert store.count(target, other) == 0, "another tenant's segments were re-embedded"
    stats = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth(org), timeout=30).json()
    assert stats["routes"][MODEL]["live"] == target and stats["routes"][MODEL]["state"] == "switched"
    assert held(other) == other_before, "a tenant admin's re-embed moved another tenant"

    points, _ = store.scroll(target, org, limit=10, with_vectors=True)
    texts = [p.payload["text"] for p in points]
    reference = httpx.post(f"{serve_app.url}/v1/embeddings", json={"input": texts, "model": MODEL}, timeout=60)
    expected = np.array([d["embedding"] for d in reference.json()["data"]], dtype=np.float32)
    got = np.array([p.vector for p in points], dtype=np.float32)
    assert ((expected * got).sum(1) >= 0.9999).all()
