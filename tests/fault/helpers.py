"""Helpers for the fault tests against the session's real app: relay hooks, job sweeps, point counts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import ServeApp, wait_ready
from tests.serve.helpers import TERMINAL, auth

APP_NAME = "heimdex"
MODEL = "minilm-l6-v2"

SENTENCES = [
    "Solar panels convert sunlight into electricity.", "The museum reopened after a long renovation.",
    "Heavy rain caused flooding in coastal towns.", "A quick brown fox jumps over the lazy dog.",
    "The orchestra rehearsed the symphony twice.", "Engineers inspected the bridge after the quake.",
    "Fresh bread smells wonderful in the morning.", "The team celebrated winning the championship.",
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def segments(asset: str, n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"asset_id": asset, "segment_id": f"s{i}", "text": f"{SENTENCES[i % len(SENTENCES)]} (#{i})"}
            for i in range(start, start + n)]


def submit(app: ServeApp, org: str, segs: list[dict[str, str]]) -> list[str]:
    """POST /vectors/embed:batch (retrying 503/429 a bounded number of times); returns the job ids."""
    for _ in range(20):
        response = httpx.post(f"{app.url}/vectors/embed:batch", json={"segments": segs}, headers=auth(org),
                              timeout=60)
        if response.status_code in (429, 503):
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        assert response.status_code == 202, response.text
        return [j["job_id"] for j in response.json()["jobs"]]
    raise AssertionError(f"could not submit: {response.status_code} {response.text}")


def list_jobs(url: str, org: str) -> dict[str, dict[str, Any]]:
    """Every job of ``org`` (all pages)."""
    jobs: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        response = httpx.get(f"{url}/jobs", params=params, headers=auth(org), timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        jobs.update({j["id"]: j for j in body["jobs"]})
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return jobs


def wait_all_terminal(url: str, org: str, job_ids: list[str], timeout_s: float = 150.0) -> dict[str, dict[str, Any]]:
    """Poll the tenant's job list until every job in ``job_ids`` is terminal; fail with the stragglers."""
    deadline = time.monotonic() + timeout_s
    jobs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        try:
            jobs = list_jobs(url, org)
        except (httpx.HTTPError, AssertionError):
            time.sleep(0.5)  # the gateway may be restarting
            continue
        if all(jid in jobs and jobs[jid]["status"] in TERMINAL for jid in job_ids):
            return jobs
        time.sleep(0.5)
    pending = {jid: (jobs.get(jid) or {}).get("status") for jid in job_ids
               if (jobs.get(jid) or {}).get("status") not in TERMINAL}
    raise AssertionError(f"{len(pending)} jobs not terminal after {timeout_s}s: {list(pending.items())[:5]}")


def point_count(url: str, org: str, model: str = MODEL) -> int:
    response = httpx.get(f"{url}/vectors/stats", headers=auth(org), timeout=30)
    assert response.status_code == 200, response.text
    return int(response.json()["models"].get(model, 0))


def assert_exactly_once(url: str, org: str, job_ids: list[str], expected_segments: int,
                        timeout_s: float = 150.0) -> dict[str, dict[str, Any]]:
    """Every job ended succeeded, and the tenant holds exactly one point per distinct segment."""
    jobs = wait_all_terminal(url, org, job_ids, timeout_s)
    bad = {jid: (jobs[jid]["status"], jobs[jid].get("error")) for jid in job_ids if jobs[jid]["status"] != "succeeded"}
    assert not bad, f"{len(bad)} jobs did not succeed: {list(bad.items())[:5]}"
    point_ids = {jobs[jid]["result"]["point_id"] for jid in job_ids}
    assert len(point_ids) == expected_segments
    assert point_count(url, org) == expected_segments, "lost or duplicate points"
    return jobs


def poll(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # transient while things restart
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {last!r}")


# ------------------------------------------------------------------ Serve / Ray plumbing

def relay_handle() -> Any:
    from ray import serve

    return serve.get_deployment_handle("OutboxRelay", app_name=APP_NAME)


def relay_call(method: str, *args: Any, timeout_s: float = 60.0) -> Any:
    """Call an OutboxRelay method, retrying while the replica is being replaced."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return getattr(relay_handle(), method).remote(*args).result(timeout_s=20)
        except Exception as exc:
            last = exc
            time.sleep(0.5)
    raise AssertionError(f"relay.{method} failed for {timeout_s}s: {last!r}")


def pause_relay() -> None:
    """Pause the relay and wait until it holds no lease (its batch in progress has finished)."""
    relay_call("pause")
    poll(lambda: relay_call("status")["outbox"].get("leased", 0) == 0, 60, "relay idle")


def replica_actors(deployment: str) -> list[Any]:
    import ray
    from ray.util.state import list_actors

    # Several Ray instances may run on this machine (other sessions): name ours by its GCS address.
    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                         limit=1000)
    return [a for a in actors if (a.class_name or "") == f"ServeReplica:{APP_NAME}:{deployment}"]


def kill_replica(deployment: str) -> str:
    """ray.kill the (single) replica actor of ``deployment``; returns the killed actor's id."""
    import ray

    actors = replica_actors(deployment)
    assert len(actors) == 1, f"expected one {deployment} replica, found {[a.class_name for a in actors]}"
    actor = actors[0]
    ray.kill(ray.get_actor(actor.name, namespace=actor.ray_namespace), no_restart=True)
    return str(actor.actor_id)


def wait_replaced(deployment: str, killed_id: str, timeout_s: float = 120.0) -> None:
    poll(lambda: [a for a in replica_actors(deployment) if str(a.actor_id) != killed_id], timeout_s,
         f"a new {deployment} replica")


def ensure_healthy(app: ServeApp) -> None:
    wait_ready(app.url, timeout_s=240)
