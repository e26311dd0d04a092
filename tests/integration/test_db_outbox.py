"""OutboxQueue on SQLite and PostgreSQL: disjoint concurrent claims, lease expiry, backoff, dead letters."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from serve_app.db import (
    ClaimedMessage,
    EmbedSegment,
    Job,
    JobRepository,
    JobStatus,
    Outbox,
    OutboxQueue,
    OutboxState,
)
from serve_app.db.models import utcnow

ORG = "org-a"


def _queue(
    factory: sessionmaker[Session], owner: str, lease_s: float = 30.0, max_attempts: int = 3
) -> OutboxQueue:
    return OutboxQueue(
        factory, owner, lease_s=lease_s, max_attempts=max_attempts, backoff_base_s=0.5, backoff_max_s=10.0
    )


def _make_jobs(factory: sessionmaker[Session], n: int) -> list[str]:
    segments = [EmbedSegment("asset", f"seg-{i}", f"text {i}", "minilm-l6-v2", "1") for i in range(n)]
    with factory() as session:
        return [c.job.id for c in JobRepository(session).create_embed_jobs(ORG, "u", segments, None)]


def _job(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory() as session:
        job = JobRepository(session).get_job(ORG, job_id)
        assert job is not None
        return job


def _statuses(factory: sessionmaker[Session], job_id: str) -> list[tuple[str | None, str]]:
    with factory() as session:
        return [(e.prev_status, e.next_status) for e in JobRepository(session).events(ORG, job_id)]


def test_two_relays_claim_200_rows_disjointly_and_exactly_once(
    session_factory: sessionmaker[Session],
) -> None:
    job_ids = _make_jobs(session_factory, 200)
    holders: dict[int, str] = {}
    claims: list[tuple[str, int]] = []
    overlaps: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)
    first_claims = threading.Barrier(2, timeout=30)

    def relay(owner: str) -> None:
        queue = _queue(session_factory, owner)
        barrier.wait()
        first = True
        while batch := queue.claim(7):
            if first:
                # Both relays hold a batch at once before either finishes one: otherwise one fast relay
                # can drain all 200 rows while SQLite's busy handler keeps the other waiting.
                first_claims.wait()
                first = False
            with lock:
                for msg in batch:
                    if msg.id in holders:
                        overlaps.append(msg.id)
                    holders[msg.id] = owner
                    claims.append((owner, msg.id))
            for msg in batch:
                with lock:
                    del holders[msg.id]  # release our mark before the row stops being ours
                assert queue.complete(msg, {"owner": owner})

    threads = [threading.Thread(target=relay, args=(f"relay-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)

    assert overlaps == []
    assert len(claims) == 200
    assert len({msg_id for _, msg_id in claims}) == 200
    assert {owner for owner, _ in claims} == {"relay-0", "relay-1"}, "both relays should have worked"
    queue = _queue(session_factory, "observer")
    assert queue.counts_by_state() == {"pending": 0, "leased": 0, "done": 200, "dead": 0}
    assert queue.claim(10) == []
    with session_factory() as session:
        statuses = session.scalars(select(Job.status).where(Job.id.in_(job_ids))).all()
    assert set(statuses) == {JobStatus.SUCCEEDED}


def test_crashed_relays_lease_is_reclaimed_and_stale_complete_is_refused(
    session_factory: sessionmaker[Session],
) -> None:
    [job_id] = _make_jobs(session_factory, 1)
    crashed = _queue(session_factory, "relay-crashed", lease_s=0.5)
    survivor = _queue(session_factory, "relay-survivor", lease_s=30)

    [stale] = crashed.claim(10)
    assert stale.attempts == 1 and stale.owner == "relay-crashed"
    assert crashed.mark_running(stale, "embedding", 10)
    assert survivor.claim(10) == []  # lease still valid

    deadline = time.monotonic() + 10
    reclaimed: list[ClaimedMessage] = []
    while not reclaimed and time.monotonic() < deadline:
        time.sleep(0.1)
        reclaimed = survivor.claim(10)
    [fresh] = reclaimed
    assert (fresh.id, fresh.attempts, fresh.owner) == (stale.id, 2, "relay-survivor")

    assert not crashed.complete(stale, {"by": "crashed"})
    assert not crashed.mark_running(stale, "embedding", 50)
    assert crashed.fail(stale, "boom") is None
    assert survivor.complete(fresh, {"by": "survivor"})
    assert not survivor.complete(fresh, {"by": "survivor"})  # already done: no-op

    job = _job(session_factory, job_id)
    assert (job.status, job.progress, job.result) == (JobStatus.SUCCEEDED, 100, {"by": "survivor"})
    assert _statuses(session_factory, job_id) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_failures_back_off_then_dead_letter_then_retry(session_factory: sessionmaker[Session]) -> None:
    [job_id] = _make_jobs(session_factory, 1)
    queue = _queue(session_factory, "relay", max_attempts=3)

    for attempt in (1, 2):
        [msg] = queue.claim(1)
        assert msg.attempts == attempt
        assert queue.mark_running(msg, "embedding", 20)
        before = utcnow()
        assert queue.fail(msg, f"error {attempt}") == OutboxState.PENDING
        with session_factory() as session:
            row = session.get_one(Outbox, msg.id)
            assert row.state == OutboxState.PENDING and row.attempts == attempt
            assert row.next_attempt_at > before + timedelta(seconds=0.2)
            assert row.last_error == f"error {attempt}"
        assert queue.claim(1) == []  # not due yet
        assert (age := queue.oldest_due_age_s()) is None, age
        job = _job(session_factory, job_id)
        assert (job.status, job.stage, job.error) == (JobStatus.RUNNING, "retrying", f"error {attempt}")
        with session_factory.begin() as session:  # fast-forward the backoff
            session.execute(update(Outbox).values(next_attempt_at=utcnow() - timedelta(seconds=5)))
        assert (age := queue.oldest_due_age_s()) is not None and age >= 5

    [last] = queue.claim(1)
    assert last.attempts == 3
    assert queue.fail(last, "final error") == OutboxState.DEAD
    job = _job(session_factory, job_id)
    assert (job.status, job.error) == (JobStatus.DEAD_LETTER, "final error")
    assert queue.counts_by_state()["dead"] == 1
    assert queue.claim(1) == []

    with session_factory() as session:
        retried = JobRepository(session).retry(ORG, job_id)
        assert (retried.status, retried.attempts, retried.error) == (JobStatus.QUEUED, 0, None)
    [again] = queue.claim(1)
    assert again.id != last.id and again.attempts == 1 and again.payload["job_id"] == job_id
    assert queue.complete(again, {"ok": True})
    assert _job(session_factory, job_id).status == JobStatus.SUCCEEDED
    assert _statuses(session_factory, job_id)[-4:] == [
        ("running", "running"),
        ("running", "dead_letter"),
        ("dead_letter", "queued"),
        ("queued", "succeeded"),
    ]


def test_cancel_stops_a_claimed_message(session_factory: sessionmaker[Session]) -> None:
    [job_id] = _make_jobs(session_factory, 1)
    queue = _queue(session_factory, "relay")
    [msg] = queue.claim(1)
    with session_factory() as session:
        JobRepository(session).cancel(ORG, job_id)
    assert not queue.mark_running(msg, "embedding", 10)
    assert not queue.complete(msg, {"ok": True})
    assert _job(session_factory, job_id).status == JobStatus.CANCELED
    assert queue.counts_by_state()["done"] == 1


@pytest.mark.parametrize("limit", [0, 1, 50])
def test_claim_respects_limit(session_factory: sessionmaker[Session], limit: int) -> None:
    _make_jobs(session_factory, 3)
    claimed = _queue(session_factory, "relay").claim(limit)
    assert len(claimed) == min(limit, 3)
    assert all(m.task == "embed" and m.attempts == 1 for m in claimed)


def _tenant_jobs(factory: sessionmaker[Session], org: str, n: int) -> list[str]:
    segments = [EmbedSegment("asset", f"{org}-seg-{i}", f"text {org} {i}", "minilm-l6-v2", "1") for i in range(n)]
    with factory() as session:
        return [c.job.id for c in JobRepository(session).create_embed_jobs(org, "u", segments, None)]


@pytest.mark.parametrize("fair", [True, False], ids=["fair", "fifo-negative-control"])
def test_a_few_jobs_are_claimed_in_the_next_batch_while_another_tenant_drains_a_backlog(
    session_factory: sessionmaker[Session], fair: bool,
) -> None:
    backlog = set(_tenant_jobs(session_factory, "org-backlog", 600))
    queue = OutboxQueue(session_factory, "relay", lease_s=30, max_attempts=3, backoff_base_s=0.5,
                        backoff_max_s=10.0, fair=fair)
    first = queue.claim(64)
    assert {m.job_id for m in first} <= backlog and len(first) == 64
    few = set(_tenant_jobs(session_factory, "org-few", 5))  # arrive while the backlog drains
    batches: list[list[ClaimedMessage]] = [first]
    while batch := queue.claim(64):
        batches.append(batch)
        for msg in batch:
            assert queue.complete(msg, {})
    claimed = [m.job_id for batch in batches for m in batch]
    assert sorted(claimed) == sorted(backlog | few)  # every job claimed exactly once, nothing lost
    few_in = [i for i, batch in enumerate(batches) if any(m.job_id in few for m in batch)]
    if fair:
        assert few_in == [1], few_in  # all five in the very next batch, beside 59 of the backlog
        assert sum(m.job_id in backlog for m in batches[1]) == 59
    else:  # oldest first whoever they belong to: the few wait for the whole backlog
        assert min(few_in) >= 9, few_in


def test_claims_rotate_over_more_tenants_than_one_batch_holds(session_factory: sessionmaker[Session]) -> None:
    tenants = [f"org-{i:02d}" for i in range(10)]
    for org in tenants:
        _tenant_jobs(session_factory, org, 3)
    queue = _queue(session_factory, "relay")
    seen: list[set[str]] = []
    for _ in range(3):
        batch = queue.claim(4)
        assert len(batch) == 4
        seen.append({m.payload["org_id"] for m in batch})
        assert len(seen[-1]) == 4  # one row from each of four tenants, not four of one
    assert set().union(*seen) == set(tenants)  # within three claims every tenant had a turn
