"""The whole service restarts mid-stream: queued jobs survive in the outbox and all finish succeeded.

``serve.delete`` tears down every replica of the app (Gateway, Embedder, relay); the app is then
deployed again from the same config, as an operator would. The module leaves the app deployed and
ready for the other modules that share it.
"""

from __future__ import annotations

import pytest

from tests.conftest import ServeApp, wait_ready
from tests.fault.helpers import assert_exactly_once, list_jobs, pause_relay, relay_call, segments, submit, unique

pytestmark = [pytest.mark.serve, pytest.mark.slow]


def test_service_restart_with_30_jobs_queued(serve_app: ServeApp) -> None:
    from ray import serve

    org, asset = unique("org-fk-restart"), unique("asset")
    pause_relay()
    try:
        job_ids = submit(serve_app, org, segments(asset, 30))
        assert {j["status"] for j in list_jobs(serve_app.url, org).values()} == {"queued"}
        serve.delete("heimdex")
    finally:
        # Whatever happened above, put the app back (a fresh relay replica is never paused).
        serve_app.redeploy(serve_app.config)
        wait_ready(serve_app.url, timeout_s=240)
    assert relay_call("status")["paused"] is False
    assert_exactly_once(serve_app.url, org, job_ids, 30, timeout_s=120)
