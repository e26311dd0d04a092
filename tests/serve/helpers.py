"""Shared helpers for tests against the running app."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.conftest import ServeApp

Segment = tuple[str, str, str]  # (asset_id, segment_id, text)
DEFAULT_MODEL = "minilm-l6-v2"
JOB_TIMEOUT_S = 420.0

TERMINAL = {"succeeded", "failed", "canceled", "dead_letter"}


def token(org: str, sub: str = "tester", scopes: tuple[str, ...] = ()) -> str:
    from serve_app.auth import mint_token
    from serve_app.settings import Settings

    return mint_token(Settings(), org_id=org, sub=sub, scopes=scopes)


def auth(org: str, sub: str = "tester", scopes: tuple[str, ...] = ()) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(org, sub, scopes)}"}


def wait_job(url: str, org: str, job_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll GET /jobs/{id} until the job is terminal; fail with its last state on timeout."""
    deadline = time.monotonic() + timeout_s
    headers = auth(org)
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/jobs/{job_id}", headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not terminal after {timeout_s}s: {body}")


def api_vectors(url: str, texts: list[str], model: str = "minilm-l6-v2", chunk: int = 128) -> Any:
    """``texts`` embedded through ``POST /v1/embeddings`` in chunks, as a float32 array in input order."""
    import numpy as np

    out: list[list[float]] = []
    for start in range(0, len(texts), chunk):
        response = httpx.post(f"{url}/v1/embeddings", json={"input": texts[start:start + chunk], "model": model},
                              timeout=120)
        assert response.status_code == 200, response.text
        out.extend(item["embedding"] for item in response.json()["data"])
    return np.asarray(out, dtype=np.float32)


def reembed_row(submission_id: str, job_id: str | None = None, database_url: str | None = None) -> Any:
    """The re-embed's job row (where its result lives) in the session's database, or ``database_url``."""
    from serve_app.db import JobRepository, make_engine, make_sessionmaker
    from serve_app.settings import Settings

    engine = make_engine(database_url or Settings().resolved_database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return JobRepository(session).reembed_for_submission(submission_id, job_id)
    finally:
        engine.dispose()


def until(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s:.0f}s"
        time.sleep(0.2)


def write(url: str, org: str, segments: list[Segment], model: str | None = None) -> list[dict[str, Any]]:
    """Write ``segments`` through ``POST /vectors/embed:batch`` and wait until every job succeeded."""
    extra = {"model": model} if model else {}
    body = {"segments": [{"asset_id": a, "segment_id": s, "text": t, **extra} for a, s, t in segments]}
    response = httpx.post(f"{url}/vectors/embed:batch", headers=auth(org), json=body, timeout=60)
    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    for job in jobs:
        done = wait_job(url, org, job["job_id"])
        assert done["status"] == "succeeded", done
    return list(jobs)


def search(url: str, org: str, text: str, model: str | None = None, limit: int = 3) -> dict[str, Any]:
    body: dict[str, Any] = {"query": text, "limit": limit, **({"model": model} if model else {})}
    response = httpx.post(f"{url}/vectors/search", headers=auth(org), json=body, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def found(url: str, org: str, segments: list[Segment], model: str | None = None,
          embedded_by: str | None = None) -> int:
    """How many segments come back in the top 3 when searched by their own text (each query embedded by
    ``embedded_by`` when given)."""
    hits = 0
    for asset, seg, text in segments:
        body = search(url, org, text, model)
        if embedded_by is not None:
            assert body["embedding_model"] == embedded_by, body
        hits += any(h["asset_id"] == asset and h["segment_id"] == seg for h in body["results"])
    return hits


def stats(url: str, org: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/vectors/stats", headers=auth(org), timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def route(url: str, org: str, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """The tenant's route for ``model``: which collection is live, and any migration's state."""
    return dict(stats(url, org)["routes"][model])


def submit(serve_app: ServeApp, args: list[str]) -> str:
    """Submit a re-embed the way `heimdex reembed` does, pinned to the session's cluster."""
    import ray

    from cluster import jobs_client

    pin = {"HEIMDEX_RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return jobs_client.submit_reembed(serve_app.cluster.dashboard_url, args, None, extra_env=pin)


def finished(serve_app: ServeApp, submission: str) -> dict[str, Any]:
    """Wait for a re-embed to succeed (fail with its logs otherwise); its result, read from its job row."""
    import pytest

    from cluster import jobs_client

    status = jobs_client.wait(serve_app.cluster.dashboard_url, submission, timeout_s=JOB_TIMEOUT_S)
    if status["status"] != "SUCCEEDED":
        logs = jobs_client.make_client(serve_app.cluster.dashboard_url).get_job_logs(submission)
        pytest.fail(f"re-embed {submission} ended {status['status']}: {status['message']}\n{logs[-4000:]}")
    row = reembed_row(submission)
    assert row is not None and row.status == "succeeded", row
    return dict(row.result)


def heimdex(*args: str) -> subprocess.CompletedProcess[str]:
    """The `heimdex` command as a user runs it (same database: the session's HEIMDEX_* environment)."""
    return subprocess.run([str(Path(sys.executable).parent / "heimdex"), *args], capture_output=True, text=True,
                          timeout=120)
