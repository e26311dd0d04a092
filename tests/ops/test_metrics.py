"""Metrics and structured logs on the real app.

* ``/metrics`` (Prometheus text) moves by what a few requests did: request counts by route
  template and status, embedder batches/texts/tokens/batch-size histogram, store search and upsert
  latency counts, jobs by status, relay deliveries (before/after deltas, polled with a deadline in
  case a second gateway replica answers a scrape).
* Ray's own metrics export (the node's metrics agent) carries Heimdex's Ray metrics.
* X-Request-ID is accepted and returned, and the access log line is JSON with request id + tenant
  and without the token.
"""

from __future__ import annotations

import glob
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServeApp
from tests.serve.helpers import auth, token, wait_job

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"
Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Sample:
    from prometheus_client.parser import text_string_to_metric_families

    out: Sample = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def present(sample: Sample, name: str, **labels: str) -> bool:
    """Whether any sample called ``name`` carries ``labels`` (a gauge of 0 still counts)."""
    return any(n == name and all(dict(ls).get(k) == val for k, val in labels.items()) for n, ls in sample)


def total(sample: Sample, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in sample.items()
               if n == name and all(dict(ls).get(k) == val for k, val in labels.items()))


def scrape(app: ServeApp) -> Sample:
    response = httpx.get(f"{app.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def poll(app: ServeApp, ok: Callable[[Sample], bool], timeout_s: float = 30.0) -> Sample:
    deadline = time.monotonic() + timeout_s
    current = scrape(app)
    while not ok(current) and time.monotonic() < deadline:
        time.sleep(0.5)
        current = scrape(app)
    return current


def test_metrics_endpoint_moves_with_traffic(serve_app: ServeApp) -> None:
    org = f"org-metrics-{uuid.uuid4().hex[:6]}"
    before = scrape(serve_app)
    for source in ("embedder:minilm-l6-v2", "relay", "store", "database"):
        assert total(before, "heimdex_metrics_source_up", source=source) == 1.0, source

    texts = ["metrics count this text", "and this one", "a third text to embed"]
    for _ in range(3):
        response = httpx.post(f"{serve_app.url}/v1/embeddings", json={"input": texts, "model": MODEL},
                              headers=auth(org), timeout=60)
        assert response.status_code == 200, response.text
    job = httpx.post(f"{serve_app.url}/vectors/embed", json={"asset_id": "a1", "segment_id": "s0",
                                                              "text": "a text the relay embeds"},
                     headers=auth(org), timeout=60)
    assert job.status_code == 202, job.text
    assert wait_job(serve_app.url, org, job.json()["job_id"])["status"] == "succeeded"
    search = httpx.post(f"{serve_app.url}/vectors/search", json={"query": "text"}, headers=auth(org), timeout=60)
    assert search.status_code == 200, search.text
    job_path = httpx.get(f"{serve_app.url}/jobs/{job.json()['job_id']}", headers=auth(org), timeout=30)
    assert job_path.status_code == 200

    def delta(after: Sample, name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    def moved(after: Sample) -> bool:
        return (delta(after, "heimdex_http_requests_total", route="/v1/embeddings", method="POST", status="200") >= 3
                and delta(after, "heimdex_http_requests_total", route="/jobs/{job_id}", status="200") >= 1)

    after = poll(serve_app, moved)
    # Requests: by route template (never the raw /jobs/<uuid> path) and status.
    assert delta(after, "heimdex_http_requests_total", route="/v1/embeddings", method="POST", status="200") >= 3
    assert delta(after, "heimdex_http_requests_total", route="/jobs/{job_id}", status="200") >= 1
    assert not any(n == "heimdex_http_requests_total" and job.json()["job_id"] in dict(ls).get("route", "")
                   for n, ls in after)
    assert delta(after, "heimdex_http_request_duration_seconds_count", route="/v1/embeddings") >= 3
    # Embedder: 9 texts online + 1 by the relay + 1 search query, tokens counted, batches observed.
    assert delta(after, "heimdex_embedder_texts_total", model=MODEL) >= 11
    assert delta(after, "heimdex_embedder_tokens_total", model=MODEL) >= 11
    assert delta(after, "heimdex_embedder_batch_size_count", model=MODEL) >= 1
    assert delta(after, "heimdex_embedder_batch_latency_seconds_sum", model=MODEL) > 0
    assert present(after, "heimdex_embedder_queue_depth", model=MODEL)
    assert total(after, "heimdex_embedder_queue_depth", model=MODEL) >= 0
    # Store, jobs, relay.
    assert delta(after, "heimdex_store_latency_seconds_count", operation="search") >= 1
    assert delta(after, "heimdex_store_latency_seconds_count", operation="upsert") >= 1
    assert delta(after, "heimdex_jobs", status="succeeded") >= 1
    assert delta(after, "heimdex_relay_delivered_total") >= 1
    assert ("heimdex_outbox_lag_seconds", ()) in after
    assert present(after, "heimdex_relay_dead_letters_total"), "the dead-letter counter is exported even at 0"


def test_request_id_is_returned_and_logged_as_json_with_tenant(serve_app: ServeApp) -> None:
    import ray

    request_id = f"req-{uuid.uuid4().hex}"
    bearer = token("org-logs")
    response = httpx.post(f"{serve_app.url}/v1/embeddings", json={"input": ["log me"], "model": MODEL},
                          headers={"Authorization": f"Bearer {bearer}", "X-Request-ID": request_id}, timeout=60)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    assert httpx.get(f"{serve_app.url}/healthz", timeout=10).headers.get("x-request-id")

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    deadline = time.monotonic() + 30
    record: dict[str, object] | None = None
    while record is None and time.monotonic() < deadline:
        for path in glob.glob(str(logs / "replica_heimdex_Gateway_*.log")):
            for line in Path(path).read_text(errors="replace").splitlines():
                if request_id in line and line.startswith("{"):
                    candidate = json.loads(line)
                    if candidate.get("http_route") == "/v1/embeddings":
                        record = candidate
                assert bearer not in line, f"token in {os.path.basename(path)}"
        time.sleep(0.5)
    assert record is not None, f"no JSON access line with {request_id} under {logs}"
    assert record["request_id"] == request_id and record["tenant"] == "org-logs"
    assert record["status"] == 200 and record["method"] == "POST"
