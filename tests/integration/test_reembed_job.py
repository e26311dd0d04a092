"""Bulk re-embedding as a real Ray Job: mock → minilm migration, kill + resume, dry run.

2,000 mock points (two tenants, real sentences) plus 3 blank-text points are seeded into
``embeddings__mock__v1``; jobs are submitted through JobSubmissionClient (``ray job submit``) to
the session's token-protected cluster. Every run uses its own ``--to-version`` so no other test's
``v1`` data is touched; the two tenants are this module's own, so their routes may move.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.texts import short_texts
from cluster import jobs_client
from deployments.mock_vectors import mock_vector
from deployments.point_ids import point_id_for
from deployments.vector_store import PointRecord, collection_name
from tests.conftest import ServeApp
from tests.serve.helpers import api_vectors, reembed_row

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"
ORG_A, ORG_B = "reembed-org-a", "reembed-org-b"
PER_ORG = 1000
BLANKS = ["", "   ", "\n\t "]  # seeded under ORG_A; must be reported failed, not fatal
EXPECTED = {ORG_A: PER_ORG, ORG_B: PER_ORG}
JOB_TIMEOUT_S = 300.0
CREATED = "2024-01-01T00:00:00+00:00"


def store() -> Any:
    from deployments.vector_store import open_store
    from serve_app.settings import Settings

    return open_store(Settings().store_config())


def seg(i: int) -> str:
    return f"seg-{i:05d}"


def common_args(version: str) -> list[str]:
    return ["--source", "collection:mock", "--model", MODEL, "--to-version", version,
            "--org", ORG_A, "--org", ORG_B, "--batch-size", "128", "--concurrency", "1"]


@pytest.fixture(scope="module")
def seeded(serve_app: ServeApp) -> dict[tuple[str, str], str]:
    """(org, segment_id) -> text for the 2,000 good points; blank ones are seeded too."""
    texts = short_texts(2 * PER_ORG)
    client = store()
    mock_collection = client.ensure_collection("mock", "v1", 384)
    truth: dict[tuple[str, str], str] = {}
    for k, org in enumerate((ORG_A, ORG_B)):
        rows = [(seg(i), texts[k * PER_ORG + i]) for i in range(PER_ORG)]
        truth.update({(org, s): t for s, t in rows})
        if org == ORG_A:
            rows += [(f"blank-{j}", text) for j, text in enumerate(BLANKS)]
        points = [
            PointRecord(point_id_for(org, f"asset-{i % 7}", s, "mock", "v1"), mock_vector(org, f"asset-{i % 7}", s),
                        {"org_id": org, "asset_id": f"asset-{i % 7}", "segment_id": s, "model": "mock",
                         "model_version": "v1", "text": t, "text_preview": t[:200], "created_at": CREATED})
            for i, (s, t) in enumerate(rows)
        ]
        for start in range(0, len(points), 256):
            client.upsert(mock_collection, org, points[start:start + 256], wait=start + 256 >= len(points))
    assert client.count(mock_collection, ORG_A) == PER_ORG + len(BLANKS)
    assert client.count(mock_collection, ORG_B) == PER_ORG
    return truth


def submit(dashboard: str, args: list[str], job_id: str | None = None,
           extra_env: dict[str, str] | None = None) -> str:
    import ray

    # Pin the driver to this session's cluster: Ray resolves a job driver's address from a host-wide
    # file that names the newest cluster, and this host may run several test sessions at once.
    env = {"HEIMDEX_RAY_ADDRESS": ray.get_runtime_context().gcs_address, **(extra_env or {})}
    return jobs_client.submit_reembed(dashboard, args, job_id, extra_env=env)


def settled(read: Any, timeout_s: float = 30.0) -> int:
    """The value once two reads 0.5 s apart agree (writers of a stopped job are gone), within a deadline."""
    deadline = time.monotonic() + timeout_s
    last = read()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now == last:
            return int(now)
        last = now
    raise AssertionError(f"count still moving after {timeout_s:.0f}s")


def run_job(dashboard: str, args: list[str], job_id: str | None = None,
            extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    submission = submit(dashboard, args, job_id, extra_env)
    status = jobs_client.wait(dashboard, submission, timeout_s=JOB_TIMEOUT_S)
    if status["status"] != "SUCCEEDED":
        logs = jobs_client.make_client(dashboard).get_job_logs(submission)
        pytest.fail(f"job {submission} ended {status['status']}: {status['message']}\n{logs[-4000:]}")
    row = reembed_row(submission, job_id, (extra_env or {}).get("HEIMDEX_DATABASE_URL"))
    assert row is not None and row.status == "succeeded", row
    return dict(row.result)


def test_mock_to_minilm_migration_matches_online_vectors(
    serve_app: ServeApp, seeded: dict[tuple[str, str], str], tmp_path: Path
) -> None:
    from serve_app.db import JobRepository, JobStatus, make_engine, make_sessionmaker, upgrade_database

    version = "reembed-test"
    target = collection_name(MODEL, version)
    # A private jobs database: the app's outbox relay must not see (and act on) this job row.
    db_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade_database(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        job = JobRepository(session).create_job("heimdex-admin", "reembed", f"reembed:{uuid.uuid4()}", "tester",
                                                "reembed", {"source": "collection:mock"}).job

    result = run_job(serve_app.cluster.dashboard_url, common_args(version), job.id,
                     extra_env={"HEIMDEX_DATABASE_URL": db_url})

    # Result: counts, failures (the blanks), both tenants verified and switched.
    assert result["target_collection"] == target
    assert result["rows_total"] == 2 * PER_ORG + len(BLANKS)
    assert result["embedded"] == 2 * PER_ORG and result["skipped_existing"] == 0
    assert result["failed"] == len(BLANKS)
    assert sorted(e["segment_id"] for e in result["failed_examples"]) == [f"blank-{j}" for j in range(len(BLANKS))]
    assert {e["reason"] for e in result["failed_examples"]} == {"blank text"}
    assert result["per_tenant"][ORG_A]["failed"] == len(BLANKS)
    assert result["verified"] and result["switched"] == [ORG_A, ORG_B]
    assert {t: r["live"] for t, r in result["routes"].items()} == {ORG_A: target, ORG_B: target}
    assert result["rows_per_s"] > 0

    client = store()
    for org, n in EXPECTED.items():
        assert client.count(target, org) == n
        assert result["reconciled"][org] == {"missing": 0, "extra_removed": 0, "catch_up_pass": 0}

    # Tenant isolation: ORG_A's stored points all say ORG_A; its ids are invisible to ORG_B.
    points, _ = client.scroll(target, ORG_A, 2000, None, False)
    assert len(points) == PER_ORG and {p.payload["org_id"] for p in points} == {ORG_A}
    a_ids = [p.point_id for p in points]
    assert client.retrieve(target, ORG_B, a_ids[:200]) == []

    # Vectors equal the online API's for the same text (sample of 240 over both tenants).
    sample = [(org, seg(i)) for org in (ORG_A, ORG_B) for i in range(0, PER_ORG, 8)][:240]
    stored: dict[tuple[str, str], Any] = {}
    for org in (ORG_A, ORG_B):
        keys = [k for k in sample if k[0] == org]
        ids = {point_id_for(org, f"asset-{int(s[4:]) % 7}", s, MODEL, version): (org, s) for _, s in keys}
        for point in client.retrieve(target, org, list(ids), True):
            key = ids[point.point_id]
            assert point.payload["text"] == seeded[key]
            assert point.payload["model"] == MODEL and point.payload["model_version"] == version
            stored[key] = point.vector
    assert len(stored) == len(sample)
    texts = [seeded[k] for k in sample]
    online = api_vectors(serve_app.url, texts)
    bulk = np.asarray([stored[k] for k in sample], dtype=np.float32)
    cosine = np.sum(online * bulk, axis=1) / (np.linalg.norm(online, axis=1) * np.linalg.norm(bulk, axis=1))
    assert float(cosine.min()) >= 0.9999, f"min cosine {cosine.min():.6f}"

    # The job row was kept up to date and ends SUCCEEDED with the result.
    with sessions() as session:
        row = JobRepository(session).get_job("heimdex-admin", job.id)
        assert row is not None
        assert row.status == JobStatus.SUCCEEDED and row.progress == 100
        assert row.result is not None and row.result["embedded"] == 2 * PER_ORG
        assert row.result["failed"] == len(BLANKS) and row.result["switched"] == [ORG_A, ORG_B]
    engine.dispose()


def test_killed_run_resumes_without_duplicates(serve_app: ServeApp, seeded: dict[tuple[str, str], str]) -> None:
    version = "reembed-kill"
    target = collection_name(MODEL, version)
    dashboard = serve_app.cluster.dashboard_url
    client = store()

    def written() -> int:
        if target not in client.list_collections():
            return 0
        return sum(int(client.count(target, org)) for org in EXPECTED)

    # Small batches and flushes so the first points land early; stop as soon as some have.
    first = submit(dashboard, [*common_args(version)[:-4], "--batch-size", "32", "--flush-size", "64",
                               "--concurrency", "1", "--no-switch"])
    ray_client = jobs_client.make_client(dashboard)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while written() == 0:
        assert time.monotonic() < deadline, "no points written in time"
        assert str(ray_client.get_job_status(first).value) not in jobs_client.TERMINAL, "job ended before any write"
        time.sleep(0.1)
    ray_client.stop_job(first)
    stopped = jobs_client.wait(dashboard, first, timeout_s=120)
    assert stopped["status"] == "STOPPED", stopped
    partial = settled(written)
    assert 0 < partial < 2 * PER_ORG, f"stop came too late to test resuming ({partial} written)"

    result = run_job(dashboard, [*common_args(version), "--no-switch"])
    assert result["skipped_existing"] > 0
    assert result["skipped_existing"] == partial
    assert result["embedded"] + result["skipped_existing"] == 2 * PER_ORG
    assert result["failed"] == len(BLANKS)
    assert result["switched"] == []
    for org, n in EXPECTED.items():
        assert client.count(target, org) == n, "a resumed run writes every point exactly once"


def test_dry_run_writes_nothing(serve_app: ServeApp, seeded: dict[tuple[str, str], str]) -> None:
    version = "reembed-dry"
    target = collection_name(MODEL, version)
    client = store()

    result = run_job(serve_app.cluster.dashboard_url, [*common_args(version), "--dry-run"])
    assert result["dry_run"] is True
    assert result["would_embed"] == 2 * PER_ORG and result["would_skip"] == 0
    assert result["failed"] == len(BLANKS)
    assert result["per_tenant"][ORG_A]["source_rows"] == PER_ORG + len(BLANKS)
    assert result["per_tenant"][ORG_B]["source_rows"] == PER_ORG
    assert result["would_switch"] == [ORG_A, ORG_B]
    assert target not in client.list_collections()
