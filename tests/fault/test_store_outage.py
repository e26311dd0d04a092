"""The vector store refuses writes: jobs retry with backoff, dead-letter past max attempts, and
``POST /jobs/{id}/retry`` recovers them once the store is back; point counts stay exact.

In-process: the real routes, repositories, outbox and RelayCore over a SQLite file, with a NAMED
store fake (FailingStoreFake) so the outage lasts exactly as long as the test wants. The real-app
variant (store actor killed and restarted by Ray) closes the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.db.engine import upgrade_database
from serve_app.relay import RelayCore
from serve_app.settings import Settings
from tests.conftest import ServeApp
from tests.fault.helpers import assert_exactly_once, segments, submit, unique
from tests.fault.inprocess import FailingStoreFake, Harness, make_client, make_services
from tests.serve.helpers import auth


def _harness(tmp_path: Path, max_attempts: int) -> Iterator[Harness]:
    from serve_app.db.database import Database

    url = f"sqlite:///{tmp_path / 'heimdex.db'}"
    upgrade_database(url)
    settings = Settings(data_dir=tmp_path, database_url=url, relay_max_attempts=max_attempts,
                        relay_backoff_base_s=0.05, relay_backoff_max_s=0.2, relay_lease_s=5, relay_batch_size=16)
    store = FailingStoreFake(down=True)
    db = Database(url)
    client = make_client(make_services(settings, store=store, db=db))
    relay = RelayCore(settings, client.app.state.services.embedders, store)  # type: ignore[attr-defined]
    try:
        yield Harness(settings, store, client, relay)
    finally:
        client.close()
        db.dispose()
        relay.db.dispose()


@pytest.fixture
def harness5(tmp_path: Path) -> Iterator[Harness]:
    yield from _harness(tmp_path, max_attempts=5)


@pytest.fixture
def harness2(tmp_path: Path) -> Iterator[Harness]:
    yield from _harness(tmp_path, max_attempts=2)


def _submit(h: Harness, org: str, n: int) -> list[str]:
    response = h.client.post("/vectors/embed:batch", json={"segments": segments("asset-1", n)}, headers=auth(org))
    assert response.status_code == 202, response.text
    return [j["job_id"] for j in response.json()["jobs"]]


def _jobs(h: Harness, org: str, ids: list[str]) -> dict[str, dict]:
    out = {}
    for jid in ids:
        response = h.client.get(f"/jobs/{jid}", headers=auth(org))
        assert response.status_code == 200, response.text
        out[jid] = response.json()
    return out


def test_store_outage_retries_with_backoff_then_succeeds(harness5: Harness) -> None:
    h, org = harness5, "org-store-out"
    ids = _submit(h, org, 10)
    # Outage: every job fails at least twice and is sent back with a delay (stage "retrying").
    h.drive(lambda: all(j["attempts"] >= 2 for j in _jobs(h, org, ids).values()))
    jobs = _jobs(h, org, ids)
    assert {j["status"] for j in jobs.values()} <= {"queued", "running"}
    assert all(j["stage"] == "retrying" and "FailingStoreFake" in (j["error"] or "") for j in jobs.values())
    assert h.relay.queue.counts_by_state()["pending"] == 10 and h.store.count(org) == 0
    for job in jobs.values():
        retry_msgs = [e["message"] for e in job["events"] if e["stage"] == "retrying"]
        assert retry_msgs and all("retrying in" in m for m in retry_msgs), job["events"]
    # The store comes back: every job succeeds once, one point each.
    h.store.down = False
    h.drive(lambda: all(j["status"] == "succeeded" for j in _jobs(h, org, ids).values()))
    assert h.store.count(org) == 10
    assert h.relay.dead_letters == 0 and h.relay.failed_attempts >= 20


def test_past_max_attempts_dead_letter_then_retry_endpoint_recovers(harness2: Harness) -> None:
    h, org = harness2, "org-dead"
    ids = _submit(h, org, 6)
    h.drive(lambda: all(j["status"] == "dead_letter" for j in _jobs(h, org, ids).values()))
    jobs = _jobs(h, org, ids)
    assert all(j["attempts"] == 2 and "FailingStoreFake" in j["error"] for j in jobs.values())
    assert h.relay.queue.counts_by_state()["dead"] == 6 and h.store.count(org) == 0
    # Nothing runs a dead letter by itself, even with the store back.
    h.store.down = False
    h.drive(lambda: True)
    assert {j["status"] for j in _jobs(h, org, ids).values()} == {"dead_letter"}
    # Another tenant cannot retry them; the owner can.
    assert h.client.post(f"/jobs/{ids[0]}/retry", headers=auth("org-intruder")).status_code == 404
    for jid in ids:
        response = h.client.post(f"/jobs/{jid}/retry", headers=auth(org))
        assert response.status_code == 200 and response.json()["status"] == "queued", response.text
    h.drive(lambda: all(j["status"] == "succeeded" for j in _jobs(h, org, ids).values()))
    assert h.store.count(org) == 6
    assert all(j["attempts"] == 1 for j in _jobs(h, org, ids).values())  # attempts reset by the retry
    assert h.client.post(f"/jobs/{ids[0]}/retry", headers=auth(org)).status_code == 409


@pytest.mark.serve
@pytest.mark.slow
def test_store_actor_killed_and_restarted_by_ray(serve_app: ServeApp) -> None:
    """The real store actor (max_restarts=-1) dies mid-stream: Ray restarts it from disk, nothing is lost."""
    import ray

    from serve_app.settings import get_settings

    org, asset = unique("org-fk-store"), unique("asset")
    before = submit(serve_app, org, segments(asset, 10))
    assert_exactly_once(serve_app.url, org, before, 10, timeout_s=60)  # durable before the crash
    job_ids = before + submit(serve_app, org, segments(asset, 30, 10))
    store = ray.get_actor(get_settings().store_actor_name, namespace="heimdex")
    ray.kill(store, no_restart=False)
    job_ids += submit(serve_app, org, segments(asset, 10, 40))
    assert_exactly_once(serve_app.url, org, job_ids, 50, timeout_s=120)
