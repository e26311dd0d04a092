"""Process faults on the real app: Embedder and OutboxRelay replicas die mid-stream; nothing is lost.

Every test uses a fresh tenant and ends by checking every job (succeeded, exactly once) and every
point (the tenant's count equals the number of distinct segments: no loss, no duplicates).
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServeApp
from tests.fault.helpers import (
    assert_exactly_once,
    kill_replica,
    list_jobs,
    pause_relay,
    poll,
    relay_call,
    replica_actors,
    segments,
    submit,
    unique,
    wait_replaced,
)
from tests.serve.helpers import auth

pytestmark = [pytest.mark.serve, pytest.mark.slow]


def test_embedder_replica_killed_during_60_jobs(serve_app: ServeApp) -> None:
    org, asset = unique("org-fk-emb"), unique("asset")
    job_ids = submit(serve_app, org, segments(asset, 30))
    # Kill while the relay is working through the first half, then keep submitting during the outage.
    poll(lambda: any(j["status"] != "queued" for j in list_jobs(serve_app.url, org).values()), 60,
         "the relay to start on the stream", interval_s=0.05)
    killed = kill_replica("Embedder")
    for start in (30, 40, 50):
        job_ids += submit(serve_app, org, segments(asset, 10, start))
    wait_replaced("Embedder", killed)
    jobs = assert_exactly_once(serve_app.url, org, job_ids, 60, timeout_s=180)
    assert len(jobs) == 60


def test_relay_crash_after_claim_rows_come_back_after_lease(serve_app: ServeApp) -> None:
    org, asset = unique("org-fk-claim"), unique("asset")
    pause_relay()
    try:
        job_ids = submit(serve_app, org, segments(asset, 20))
        relay_call("arm_crash", "after_claim")
    finally:
        relay_call("resume")
    jobs = assert_exactly_once(serve_app.url, org, job_ids, 20, timeout_s=120)
    # The crashed claim counted as attempt 1; the reclaim after the 8 s lease is attempt 2.
    assert {jobs[j]["attempts"] for j in job_ids} == {2}, {jobs[j]["attempts"] for j in job_ids}


def test_relay_crash_between_upsert_and_job_update(serve_app: ServeApp) -> None:
    org, asset = unique("org-fk-ups"), unique("asset")
    pause_relay()
    try:
        job_ids = submit(serve_app, org, segments(asset, 20))
        relay_call("arm_crash", "after_upsert")
    finally:
        relay_call("resume")
    jobs = assert_exactly_once(serve_app.url, org, job_ids, 20, timeout_s=120)
    assert {jobs[j]["attempts"] for j in job_ids} == {2}
    for jid in job_ids:  # the redelivery overwrote the same deterministic point, one success each
        detail = httpx.get(f"{serve_app.url}/jobs/{jid}", headers=auth(org), timeout=30).json()
        events = [e["next_status"] for e in detail["events"]]
        assert events.count("succeeded") == 1, events


def test_relay_replica_ray_killed_mid_batch(serve_app: ServeApp) -> None:
    org, asset = unique("org-fk-relay"), unique("asset")
    job_ids = submit(serve_app, org, segments(asset, 40))
    poll(lambda: any(j["status"] == "running" or j["status"] == "succeeded"
                     for j in list_jobs(serve_app.url, org).values()), 60, "relay work", interval_s=0.05)
    killed = kill_replica("OutboxRelay")
    job_ids += submit(serve_app, org, segments(asset, 10, 40))
    wait_replaced("OutboxRelay", killed)
    assert_exactly_once(serve_app.url, org, job_ids, 50, timeout_s=120)


def test_embedder_failing_its_health_check_is_replaced_and_the_service_recovers(serve_app: ServeApp) -> None:
    """The docs promise that a replica whose health check fails is replaced: arm the Embedder's check to
    fail (a test hook refused in production), and Serve must start a new replica that serves again."""
    from ray import serve

    before = replica_actors("Embedder")
    assert len(before) == 1
    handle = serve.get_deployment_handle("Embedder", app_name="heimdex")
    handle.arm_unhealthy.remote().result(timeout_s=30)
    # health_check_period_s is 10 in serve_config.yaml: the next check fails and Serve replaces it.
    wait_replaced("Embedder", str(before[0].actor_id), timeout_s=180)
    poll(lambda: httpx.post(f"{serve_app.url}/v1/embeddings", json={"input": "back?"},
                            headers=auth(unique("org-hc")), timeout=30).status_code == 200,
         180, "the new Embedder replica to serve")
    assert handle.info.remote().result(timeout_s=60)["pid"] != 0
