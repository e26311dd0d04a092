"""Ingest throughput: segments/s from ``POST /vectors/embed:batch`` to every job ``succeeded``.

The clock starts before the first submit and stops when the last job is seen terminal, so it covers
the whole write path (request, job rows, outbox relay, embedding, upsert). Each run uses a tenant of
its own and follows it with ``GET /jobs/counts`` (one request per poll, whatever the job count), so
the measuring adds almost no load. Against a service without that route, jobs are polled one by one,
oldest first, a round stopping at the first job still running.

The route is new: if the first submit answers 404 (or 405) the figure is skipped with the reason.
Bounded by a segment count and a duration.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx

from bench.stack import Stack
from bench.texts import text_set

MODEL = "minilm-l6-v2"
SUBMIT_BATCH = 256  # segments per POST (the service's default max_batch_segments)
POLL_INTERVAL_S = 0.1
SUCCEEDED = "succeeded"
FAILED = {"failed", "dead_letter", "canceled", "cancelled"}  # finished without a vector (retry is manual)


def _segments(count: int, texts: str, run_id: str) -> list[dict[str, str]]:
    pool = text_set(texts)
    return [{"asset_id": f"bench-{run_id}-asset-{i // 100}", "segment_id": f"seg-{i}", "text": pool[i % len(pool)],
             "model": MODEL} for i in range(count)]


def _job_ids(body: Any) -> list[str]:
    jobs = body.get("jobs", []) if isinstance(body, dict) else []
    return [str(j["job_id"]) for j in jobs if isinstance(j, dict) and "job_id" in j]


def measure_ingest(stack: Stack, segments: int, max_seconds: float, texts: str = "short",
                   org_id: str | None = None) -> dict[str, Any]:
    """Submit ``segments`` segments in batches of ``SUBMIT_BATCH`` and wait for every job.

    Returns ``{"skipped": reason}`` when the route is not there, else the timing and job counts.
    """
    from serve_app.auth import mint_token
    from serve_app.settings import Settings

    run_id = secrets.token_hex(4)
    token = mint_token(Settings(), org_id=org_id or f"bench-ingest-{run_id}", sub="bench")
    headers = {"Authorization": f"Bearer {token}"}
    items = _segments(segments, texts, run_id)
    pending: list[str] = []
    submitted_segments = 0
    submit_errors: dict[str, int] = {}
    polls = 0
    succeeded = 0
    failed: dict[str, int] = {}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=60.0) as client:
        start = time.perf_counter()
        deadline = start + max_seconds
        for offset in range(0, len(items), SUBMIT_BATCH):
            if time.perf_counter() >= deadline:
                break
            response = client.post("/vectors/embed:batch", json={"segments": items[offset:offset + SUBMIT_BATCH]})
            if offset == 0 and response.status_code in (404, 405):
                return {"skipped": f"POST /vectors/embed:batch answered {response.status_code}: {response.text[:200]}"}
            if response.status_code >= 300:
                submit_errors[str(response.status_code)] = submit_errors.get(str(response.status_code), 0) + 1
                continue
            pending.extend(_job_ids(response.json()))
            submitted_segments += len(items[offset:offset + SUBMIT_BATCH])
        submitted = len(pending)
        submit_s = time.perf_counter() - start
        counts_route = org_id is None and client.get("/jobs/counts").status_code == 200
        while counts_route and pending and time.perf_counter() < deadline:
            polls += 1
            counts = client.get("/jobs/counts").json()["counts"]
            finished = {k: int(v) for k, v in counts.items() if k == SUCCEEDED or k in FAILED}
            succeeded = finished.get(SUCCEEDED, 0)
            failed = {k: v for k, v in finished.items() if k in FAILED and v}
            if sum(finished.values()) >= submitted:
                pending = []
                break
            time.sleep(POLL_INTERVAL_S)
        if counts_route and pending:  # timed out: the unfinished ones are what the counts leave
            pending = pending[sum(finished.values()):]
            deadline = 0.0
        while pending and time.perf_counter() < deadline:
            while pending and time.perf_counter() < deadline:
                polls += 1
                answer = client.get(f"/jobs/{pending[0]}")
                status = str(answer.json().get("status", "")).lower() if answer.status_code == 200 else ""
                if status == SUCCEEDED:
                    succeeded += 1
                elif status in FAILED:
                    failed[status] = failed.get(status, 0) + 1
                else:
                    break
                pending.pop(0)
            if pending:
                time.sleep(POLL_INTERVAL_S)
        elapsed = time.perf_counter() - start
    # Segments behind succeeded jobs (jobs may each carry one segment or a whole batch).
    per_job = submitted_segments / submitted if submitted else 0.0
    done_segments = succeeded * per_job
    return {
        "segments": segments, "submitted_segments": submitted_segments, "texts": texts, "jobs": submitted,
        "succeeded_jobs": succeeded, "failed_jobs": failed,
        "unfinished_jobs": len(pending), "submit_errors": submit_errors, "submit_s": submit_s, "elapsed_s": elapsed,
        "polls": polls, "timed_out": bool(pending),
        "segments_per_s": done_segments / elapsed if elapsed > 0 and not pending and not failed
        and submitted_segments == segments else None,
        "segments_per_s_partial": done_segments / elapsed if elapsed > 0 else None,
    }
