"""The live rollback switch on the running app: flipped in the database, followed by the Gateway and the relay
within seconds, with no redeploy; real-model jobs queued before it stay queued until it is on again."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serve_app.db import REAL_EMBEDDINGS, SWITCH_CACHE_TTL_S, SwitchRepository
from serve_app.db.database import Database
from serve_app.settings import Settings
from tests.conftest import ServeApp
from tests.fault.helpers import pause_relay, poll, relay_call
from tests.serve.helpers import auth, wait_job

pytestmark = pytest.mark.serve

# The cache TTL plus room for a loaded 2-core machine (a request in flight, a replica's thread pool).
FOLLOW_S = SWITCH_CACHE_TTL_S + 8


@pytest.fixture
def switch_db(serve_app: ServeApp) -> Iterator[Database]:
    """The app's own database (tests/conftest.py points HEIMDEX_DATA_DIR of the session at it)."""
    db = Database(Settings().resolved_database_url)
    try:
        yield db
    finally:
        set_switch(db, True)  # whatever happened, leave the session's app switched on and its relay running
        relay_call("resume")
        db.dispose()


def set_switch(db: Database, enabled: bool) -> None:
    with db.sessions() as session:
        SwitchRepository(session).set(REAL_EMBEDDINGS, enabled, changed_by="tests/serve/test_real_embeddings_switch")


def job(app: ServeApp, org: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{app.url}/jobs/{job_id}", headers=auth(org), timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_switch_off_holds_real_jobs_and_refuses_real_routes_then_on_resumes(
        serve_app: ServeApp, switch_db: Database) -> None:
    url, org = serve_app.url, f"org-switch-{uuid.uuid4().hex[:8]}"
    headers = auth(org)
    segment = {"asset_id": "a", "segment_id": "s9", "text": "written while real embeddings are on"}
    first = httpx.post(f"{url}/vectors/embed", json=segment, headers=headers, timeout=60)
    assert first.status_code == 202, first.text
    assert wait_job(url, org, first.json()["job_id"])["status"] == "succeeded"

    # Real-model jobs queued while the relay is paused, so none is claimed before the switch goes off.
    pause_relay()
    segments = [{"asset_id": "a", "segment_id": f"s{i}", "text": f"held while switched off #{i}"} for i in range(5)]
    response = httpx.post(f"{url}/vectors/embed:batch", json={"segments": segments}, headers=headers, timeout=60)
    assert response.status_code == 202, response.text
    real_ids = [j["job_id"] for j in response.json()["jobs"]]

    set_switch(switch_db, False)
    flipped = time.monotonic()

    def refused() -> httpx.Response | None:
        answer = httpx.post(f"{url}/vectors/embed", json=segment, headers=headers, timeout=30)
        return answer if answer.status_code == 503 else None

    off = poll(refused, FOLLOW_S, "/vectors/embed to answer 503 after the switch went off", interval_s=0.1)
    assert time.monotonic() - flipped <= FOLLOW_S
    assert off.json()["error"]["code"] == "real_embeddings_disabled"
    assert int(off.headers["Retry-After"]) > 0
    assert httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, timeout=30).status_code == 503
    # The relay reads the same row; once it reports off, its next claims leave real-model jobs alone.
    poll(lambda: relay_call("status")["real_embeddings"] == "off", FOLLOW_S, "the relay to see the switch off")
    relay_call("resume")

    mock = httpx.post(f"{url}/vectors/mock", json={"asset_id": "m", "segment_id": "s", "text": "mock"},
                      headers=headers, timeout=30)
    assert mock.status_code == 202, mock.text
    assert wait_job(url, org, mock.json()["job_id"], timeout_s=60)["status"] == "succeeded"
    # The mock job came after the real ones and is done: the relay passed them over, untouched.
    for job_id in real_ids:
        held = job(serve_app, org, job_id)
        assert (held["status"], held["attempts"], held["stage"]) == ("queued", 0, "queued"), held

    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["real_embeddings"] == "off", ready.text
    stats = httpx.get(f"{url}/vectors/stats", headers=headers, timeout=30).json()
    assert stats["real_embeddings_enabled"] is False and stats["models"]["mock"] == 1

    set_switch(switch_db, True)
    poll(lambda: httpx.post(f"{url}/vectors/embed", json=segment, headers=headers, timeout=30).status_code == 202,
         FOLLOW_S, "/vectors/embed to accept again after the switch went on", interval_s=0.1)
    for job_id in real_ids:
        assert wait_job(url, org, job_id, timeout_s=120)["status"] == "succeeded"
    assert httpx.get(f"{url}/readyz", timeout=30).json()["real_embeddings"] == "on"
    stats = httpx.get(f"{url}/vectors/stats", headers=headers, timeout=30).json()
    assert stats["real_embeddings_enabled"] is True and stats["models"]["minilm-l6-v2"] == 6
