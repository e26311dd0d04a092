"""The real-embeddings switch on SQLite and PostgreSQL: the claim filter that holds real-model jobs queued
while mock jobs flow, mock jobs' own outbox task, and the cached switch reader."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from serve_app.db import (
    REAL_EMBEDDINGS,
    EmbedSegment,
    Job,
    JobRepository,
    JobStatus,
    Outbox,
    OutboxQueue,
    OutboxState,
    ServiceSwitch,
    SwitchRepository,
)
from serve_app.db.jobs import EMBED_MOCK_TASK, EMBED_TASK
from serve_app.db.models import new_uuid, utcnow
from serve_app.relay import SWITCHED_OFF_TASKS
from serve_app.switches import SwitchReader

ORG = "org-switch"


def _queue(factory: sessionmaker[Session]) -> OutboxQueue:
    return OutboxQueue(factory, "relay", lease_s=30, max_attempts=3, backoff_base_s=0.5, backoff_max_s=10)


def _jobs(factory: sessionmaker[Session], model: str, version: str, n: int, prefix: str) -> list[str]:
    segments = [EmbedSegment("asset", f"{prefix}-{i}", f"text {prefix} {i}", model, version) for i in range(n)]
    with factory() as session:
        return [c.job.id for c in JobRepository(session).create_embed_jobs(ORG, "u", segments)]


def _legacy_mock_job(factory: sessionmaker[Session]) -> str:
    """A mock job as written before mock jobs had a task of their own: outbox task ``embed``."""
    job_id, now = new_uuid(), utcnow()
    with factory.begin() as session:
        session.add(Job(id=job_id, org_id=ORG, type="embed", status=JobStatus.QUEUED, stage="queued", progress=0,
                        job_key=f"legacy-{job_id}", attempts=0, created_at=now, updated_at=now))
        session.flush()
        session.execute(insert(Outbox).values(
            job_id=job_id, org_id=ORG, task=EMBED_TASK, state=OutboxState.PENDING, attempts=0, next_attempt_at=now,
            created_at=now, updated_at=now,
            payload={"org_id": ORG, "asset_id": "old", "segment_id": "s", "text": "", "model": "mock",
                     "model_version": "v1", "job_id": job_id}))
    return job_id


def _outbox(factory: sessionmaker[Session], job_ids: list[str]) -> dict[str, tuple[str, int, str | None]]:
    with factory() as session:
        rows = session.execute(select(Outbox.job_id, Outbox.state, Outbox.attempts, Outbox.lease_owner)
                               .where(Outbox.job_id.in_(job_ids))).all()
    return {r.job_id: (str(r.state), r.attempts, r.lease_owner) for r in rows}


def test_mock_jobs_get_their_own_outbox_task(session_factory: sessionmaker[Session]) -> None:
    [real] = _jobs(session_factory, "minilm-l6-v2", "v1", 1, "real")
    mock = _jobs(session_factory, "mock", "v1", 2, "mock")  # the batch insert path
    [single] = _jobs(session_factory, "mock", "v1", 1, "one")  # the one-by-one path
    with session_factory() as session:
        tasks = dict(session.execute(select(Outbox.job_id, Outbox.task)).tuples().all())
    assert tasks[real] == EMBED_TASK
    assert {tasks[j] for j in [*mock, single]} == {EMBED_MOCK_TASK}


def test_switched_off_claim_takes_mock_jobs_and_leaves_real_ones_untouched(
    session_factory: sessionmaker[Session],
) -> None:
    real = _jobs(session_factory, "minilm-l6-v2", "v1", 5, "real")
    mock = _jobs(session_factory, "mock", "v1", 3, "mock")
    legacy = _legacy_mock_job(session_factory)
    queue = _queue(session_factory)

    claimed = queue.claim(100, tasks=SWITCHED_OFF_TASKS)
    assert sorted(m.job_id for m in claimed) == sorted([*mock, legacy])
    assert queue.claim(100, tasks=SWITCHED_OFF_TASKS) == []  # real rows are due, but not taken
    assert _outbox(session_factory, real) == {j: ("pending", 0, None) for j in real}
    for msg in claimed:
        assert queue.complete(msg, {"ok": True})

    # Switched on again: the held jobs go on, each on its first attempt.
    again = queue.claim(100)
    assert sorted(m.job_id for m in again) == sorted(real)
    assert all(m.attempts == 1 and m.task == EMBED_TASK for m in again)


def test_switched_off_claim_does_not_take_back_expired_real_leases(session_factory: sessionmaker[Session]) -> None:
    [real] = _jobs(session_factory, "minilm-l6-v2", "v1", 1, "real")
    crashed = OutboxQueue(session_factory, "crashed", lease_s=30, max_attempts=3, backoff_base_s=0.5,
                          backoff_max_s=10)
    [msg] = crashed.claim(1)
    assert _outbox(session_factory, [real])[real] == ("leased", 1, "crashed")
    with session_factory.begin() as session:  # the crashed relay's lease runs out
        session.execute(update(Outbox).values(lease_expires_at=utcnow() - timedelta(seconds=5)))
    queue = _queue(session_factory)
    # A switched-off relay does not take the expired real lease over; a switched-on one does.
    assert queue.claim(10, tasks=SWITCHED_OFF_TASKS) == []
    assert _outbox(session_factory, [real])[real] == ("leased", 1, "crashed")
    [taken] = queue.claim(10)
    assert (taken.id, taken.attempts) == (msg.id, 2)


@pytest.mark.parametrize("tasks", [frozenset(), frozenset({"no-such-task"})])
def test_claim_of_no_matching_task_takes_nothing(session_factory: sessionmaker[Session], tasks: Any) -> None:
    _jobs(session_factory, "mock", "v1", 2, "mock")
    assert _queue(session_factory).claim(10, tasks=tasks) == []


def test_switch_repository_row_wins_over_default(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        repo = SwitchRepository(session)
        assert repo.get(REAL_EMBEDDINGS, True) is True
        repo.set(REAL_EMBEDDINGS, False, changed_by="test")
        assert repo.get(REAL_EMBEDDINGS, True) is False
        repo.set(REAL_EMBEDDINGS, True, changed_by="test again")
    with session_factory() as session:
        row = session.get_one(ServiceSwitch, REAL_EMBEDDINGS)
        assert (row.enabled, row.changed_by) == (True, "test again")
        with pytest.raises(ValueError, match="unknown switch"):
            SwitchRepository(session).set("bogus", True)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _set(factory: sessionmaker[Session], enabled: bool) -> None:
    with factory() as session:
        SwitchRepository(session).set(REAL_EMBEDDINGS, enabled, changed_by="test")


def test_reader_caches_for_the_ttl_then_follows_the_row(session_factory: sessionmaker[Session]) -> None:
    clock = FakeClock()
    reader = SwitchReader(session_factory, REAL_EMBEDDINGS, default=True, ttl_s=2.0, clock=clock)
    assert reader.get() is True  # no row: the default
    _set(session_factory, False)
    clock.now += 1.9
    assert reader.get() is True  # still cached
    clock.now += 0.2
    assert reader.get() is False  # past the TTL: read again
    _set(session_factory, True)
    clock.now += 2.1
    assert asyncio.run(reader.aget()) is True


def test_reader_keeps_its_last_value_when_the_database_fails(session_factory: sessionmaker[Session]) -> None:
    clock = FakeClock()
    _set(session_factory, False)
    failing = {"on": False}

    def sessions() -> Session:
        if failing["on"]:
            raise ConnectionError("database down")
        return session_factory()

    reader = SwitchReader(sessions, REAL_EMBEDDINGS, default=True, ttl_s=1.0, clock=clock)  # type: ignore[arg-type]
    assert reader.get() is False
    failing["on"] = True
    clock.now += 5
    assert reader.get() is False, "a database outage must not turn real embeddings back on"
    failing["on"] = False
    _set(session_factory, True)
    clock.now += 5
    assert reader.get() is True


def test_concurrent_async_readers_share_one_read(session_factory: sessionmaker[Session]) -> None:
    reads = {"n": 0}

    def sessions() -> Session:
        reads["n"] += 1
        return session_factory()

    reader = SwitchReader(sessions, REAL_EMBEDDINGS, default=True)  # type: ignore[arg-type]

    async def many() -> list[bool]:
        return await asyncio.gather(*(reader.aget() for _ in range(50)))

    assert asyncio.run(many()) == [True] * 50
    assert reads["n"] == 1


def test_a_hanging_read_holds_callers_for_at_most_wait_s(session_factory: sessionmaker[Session]) -> None:
    _set(session_factory, False)
    release = threading.Event()
    hang = {"on": False}

    def sessions() -> Session:
        if hang["on"]:
            release.wait(30)  # a database that stopped answering
        return session_factory()

    reader = SwitchReader(sessions, REAL_EMBEDDINGS, default=True, ttl_s=0.0, wait_s=0.3)  # type: ignore[arg-type]

    async def scenario() -> tuple[bool, float, bool, float]:
        assert await reader.aget() is False
        hang["on"] = True
        started = time.monotonic()
        first = await reader.aget()  # waits for the hanging read, at most wait_s
        waited = time.monotonic() - started
        started = time.monotonic()
        second = await reader.aget()  # the read still hangs: the last value at once
        again = time.monotonic() - started
        release.set()  # the database answers again (asyncio.run waits for the reading thread)
        return first, waited, second, again

    try:
        first, waited, second, again = asyncio.run(scenario())
    finally:
        release.set()
    assert (first, second) == (False, False)
    assert 0.25 <= waited < 2.0 and again < 0.25
