"""Shared helpers for tests against the running app."""

from __future__ import annotations

import time
from typing import Any

import httpx

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
