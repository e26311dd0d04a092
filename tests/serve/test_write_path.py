"""The write path on the real app: jobs + outbox in one transaction, relay delivery, tenancy."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import ServeApp
from tests.serve.helpers import auth, wait_job

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"


def post(app: ServeApp, path: str, org: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{app.url}{path}", json=body, headers={**auth(org), **(headers or {})}, timeout=60)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_embed_job_runs_to_succeeded_with_ordered_events(serve_app: ServeApp) -> None:
    org, asset = unique("org-w"), unique("asset")
    response = post(serve_app, "/vectors/embed", org, {"asset_id": asset, "segment_id": "s0",
                                                       "text": "The quick brown fox jumps over the lazy dog."})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["created"] is True and accepted["model"] == MODEL and accepted["model_version"] == "v1"
    job = wait_job(serve_app.url, org, accepted["job_id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == 100 and job["result"]["point_id"] == accepted["point_id"]
    statuses = [e["next_status"] for e in job["events"] if e["prev_status"] != e["next_status"]]
    assert statuses == ["queued", "running", "succeeded"], job["events"]
    found = post(serve_app, "/vectors/search", org, {"query": "fast animal leaping", "asset_id": asset}).json()
    assert [r["point_id"] for r in found["results"]] == [accepted["point_id"]]


def test_same_request_20_times_concurrently_is_one_job_and_one_point(serve_app: ServeApp) -> None:
    org, asset = unique("org-dup"), unique("asset")
    body = {"asset_id": asset, "segment_id": "s0", "text": "Idempotent effects make redelivery harmless."}
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: post(serve_app, "/vectors/embed", org, body), range(20)))
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses if r.status_code != 202]
    job_ids = {r.json()["job_id"] for r in responses}
    assert len(job_ids) == 1
    assert sum(r.json()["created"] for r in responses) == 1
    wait_job(serve_app.url, org, job_ids.pop())
    stats = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth(org), timeout=30).json()
    assert stats["models"][MODEL] == 1


def test_changed_text_makes_a_new_job_and_overwrites_the_point(serve_app: ServeApp) -> None:
    org, asset = unique("org-chg"), unique("asset")
    first = post(serve_app, "/vectors/embed", org, {"asset_id": asset, "segment_id": "s0", "text": "first text"}).json()
    second = post(serve_app, "/vectors/embed", org,
                  {"asset_id": asset, "segment_id": "s0", "text": "second text"}).json()
    assert first["job_id"] != second["job_id"]
    assert first["point_id"] == second["point_id"], "same segment → same deterministic point"
    for job in (first, second):
        assert wait_job(serve_app.url, org, job["job_id"])["status"] == "succeeded"
    stats = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth(org), timeout=30).json()
    assert stats["models"][MODEL] == 1


def test_idempotency_key(serve_app: ServeApp) -> None:
    org, key = unique("org-idem"), unique("key")
    body = {"asset_id": "a", "segment_id": "s", "text": "hello idempotency"}
    first = post(serve_app, "/vectors/embed", org, body, {"Idempotency-Key": key})
    again = post(serve_app, "/vectors/embed", org, body, {"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    conflict = post(serve_app, "/vectors/embed", org, {**body, "text": "other"}, {"Idempotency-Key": key})
    assert conflict.status_code == 422 and conflict.json()["error"]["field"] == "Idempotency-Key"
    bad = post(serve_app, "/vectors/embed", org, body, {"Idempotency-Key": "has space"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_idempotency_key"


def test_batch_three_segments_searchable_by_owner_only(serve_app: ServeApp) -> None:
    org, other, asset = unique("org-batch"), unique("org-other"), unique("asset")
    texts = ["Solar panels convert sunlight into electricity.", "The museum reopened after renovation.",
             "Heavy rain caused flooding in coastal towns."]
    response = post(serve_app, "/vectors/embed:batch", org,
                    {"segments": [{"asset_id": asset, "segment_id": f"s{i}", "text": t} for i, t in enumerate(texts)]})
    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert len({j["job_id"] for j in jobs}) == 3
    for job in jobs:
        assert wait_job(serve_app.url, org, job["job_id"])["status"] == "succeeded"
    hits = post(serve_app, "/vectors/search", org, {"query": "photovoltaic power", "limit": 3}).json()["results"]
    assert hits[0]["segment_id"] == "s0" and {h["asset_id"] for h in hits} == {asset}
    assert post(serve_app, "/vectors/search", other, {"query": "photovoltaic power"}).json()["results"] == []


def test_jobs_are_tenant_scoped_404_never_403(serve_app: ServeApp) -> None:
    owner, intruder = unique("org-own"), unique("org-intr")
    job_id = post(serve_app, "/vectors/embed", owner, {"asset_id": "a", "segment_id": "s", "text": "secret"}).json()[
        "job_id"]
    wait_job(serve_app.url, owner, job_id)
    for method, path in [("GET", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/retry"),
                         ("POST", f"/jobs/{job_id}/cancel")]:
        response = httpx.request(method, f"{serve_app.url}{path}", headers=auth(intruder), timeout=30)
        assert response.status_code == 404, (path, response.text)
        assert "secret" not in response.text
    listing = httpx.get(f"{serve_app.url}/jobs", headers=auth(intruder), timeout=30).json()
    assert listing["jobs"] == []
    mine = httpx.get(f"{serve_app.url}/jobs?status=succeeded", headers=auth(owner), timeout=30).json()
    assert [j["id"] for j in mine["jobs"]] == [job_id]


def test_retry_and_cancel_refuse_wrong_states(serve_app: ServeApp) -> None:
    org = unique("org-state")
    job_id = post(serve_app, "/vectors/embed", org, {"asset_id": "a", "segment_id": "s", "text": "done soon"}).json()[
        "job_id"]
    wait_job(serve_app.url, org, job_id)
    for action in ("retry", "cancel"):
        response = httpx.post(f"{serve_app.url}/jobs/{job_id}/{action}", headers=auth(org), timeout=30)
        assert response.status_code == 409, response.text
    assert httpx.get(f"{serve_app.url}/jobs/not-a-uuid", headers=auth(org), timeout=30).status_code == 422


def test_mock_path_is_deprecated_but_works(serve_app: ServeApp) -> None:
    org = unique("org-mock")
    response = post(serve_app, "/vectors/mock", org, {"asset_id": "a", "segment_id": "s", "text": "mock me"})
    assert response.status_code == 202, response.text
    assert response.headers["Deprecation"] == "true" and "Sunset" in response.headers
    job = wait_job(serve_app.url, org, response.json()["job_id"])
    assert job["status"] == "succeeded" and job["result"]["model"] == "mock"
    stats = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth(org), timeout=30).json()
    assert stats["models"]["mock"] == 1
    schema = httpx.get(f"{serve_app.url}/openapi.json", timeout=30).json()
    assert schema["paths"]["/vectors/mock"]["post"]["deprecated"] is True


BAD_EMBEDS: list[tuple[str, dict[str, Any], int, str]] = [
    ("missing text", {"asset_id": "a", "segment_id": "s"}, 422, "text"),
    ("empty text", {"asset_id": "a", "segment_id": "s", "text": ""}, 422, "text"),
    ("blank text", {"asset_id": "a", "segment_id": "s", "text": "  "}, 422, "text"),
    ("empty asset", {"asset_id": "", "segment_id": "s", "text": "x"}, 422, "asset_id"),
    ("number asset", {"asset_id": 5, "segment_id": "s", "text": "x"}, 422, "asset_id"),
    ("unknown model", {"asset_id": "a", "segment_id": "s", "text": "x", "model": "bogus"}, 404, "model"),
    ("newline in segment", {"asset_id": "a", "segment_id": "s\n1", "text": "x"}, 422, "segment_id"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_EMBEDS, ids=[c[0] for c in BAD_EMBEDS])
def test_bad_embed_is_a_4xx_naming_the_field(serve_app: ServeApp, case: str, body: dict[str, Any], status: int,
                                             field: str) -> None:
    response = post(serve_app, "/vectors/embed", "org-bad", body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field


def test_batch_limits(serve_app: ServeApp) -> None:
    empty = post(serve_app, "/vectors/embed:batch", "org-bad", {"segments": []})
    assert empty.status_code == 422 and empty.json()["error"]["field"] == "segments"
    too_many = post(serve_app, "/vectors/embed:batch", "org-bad",
                    {"segments": [{"asset_id": "a", "segment_id": str(i), "text": "x"} for i in range(257)]})
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "too_many_segments"
