"""JobRepository on SQLite and PostgreSQL: dedupe, idempotency, tenancy, pagination, state changes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from serve_app.db import (
    CreatedJob,
    EmbedSegment,
    IdempotencyConflictError,
    InvalidCursorError,
    InvalidTransitionError,
    Job,
    JobEvent,
    JobNotFoundError,
    JobRepository,
    JobStatus,
    Outbox,
    OutboxState,
)

ORG = "org-a"
OTHER_ORG = "org-b"


def _segment(text: str = "hello world", segment_id: str = "seg-1") -> EmbedSegment:
    return EmbedSegment("asset-1", segment_id, text, "minilm-l6-v2", "1")


def _create(
    factory: sessionmaker[Session], *segments: EmbedSegment, key: str | None = None
) -> list[CreatedJob]:
    with factory() as session:
        return JobRepository(session).create_embed_jobs(ORG, "user-1", list(segments), key)


def _count(factory: sessionmaker[Session], model: type[Job] | type[Outbox] | type[JobEvent]) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_create_writes_job_event_and_outbox_row(session_factory: sessionmaker[Session]) -> None:
    [(job, created)] = _create(session_factory, _segment())
    assert created
    with session_factory() as session:
        stored = session.get(Job, job.id)
        assert stored is not None
        assert (stored.org_id, stored.type, stored.status, stored.stage) == (ORG, "embed", "queued", "queued")
        assert stored.created_at.tzinfo is not None
        [event] = session.scalars(select(JobEvent)).all()
        assert (event.job_id, event.prev_status, event.next_status) == (job.id, None, JobStatus.QUEUED)
        [row] = session.scalars(select(Outbox)).all()
        assert (row.job_id, row.task, row.state, row.attempts) == (job.id, "embed", OutboxState.PENDING, 0)
        assert row.payload == {
            "job_id": job.id,
            "org_id": ORG,
            "asset_id": "asset-1",
            "segment_id": "seg-1",
            "text": "hello world",
            "model": "minilm-l6-v2",
            "model_version": "1",
        }


@pytest.mark.parametrize("key", [None, "idem-concurrent"])
def test_same_request_twenty_times_concurrently_makes_one_job(
    session_factory: sessionmaker[Session], key: str | None
) -> None:
    barrier = threading.Barrier(20)

    def send(_: int) -> CreatedJob:
        barrier.wait()
        [result] = _create(session_factory, _segment(), key=key)
        return result

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(send, range(20)))

    assert len({r.job.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert _count(session_factory, Job) == 1
    assert _count(session_factory, Outbox) == 1
    assert _count(session_factory, JobEvent) == 1


def test_changed_text_makes_a_new_job_and_same_text_reuses_it(session_factory: sessionmaker[Session]) -> None:
    [first] = _create(session_factory, _segment("one"))
    [again] = _create(session_factory, _segment("one"))
    [changed] = _create(session_factory, _segment("two"))
    assert first.created and not again.created and changed.created
    assert again.job.id == first.job.id
    assert changed.job.id != first.job.id
    assert _count(session_factory, Outbox) == 2


def test_idempotency_key_replays_same_body_and_rejects_a_different_one(
    session_factory: sessionmaker[Session],
) -> None:
    segments = [_segment("a", "s1"), _segment("b", "s2")]
    original = _create(session_factory, *segments, key="idem-1")
    replay = _create(session_factory, *segments, key="idem-1")
    assert [c.job.id for c in replay] == [c.job.id for c in original]
    assert [c.created for c in original] == [True, True]
    assert [c.created for c in replay] == [False, False]

    with pytest.raises(IdempotencyConflictError):
        _create(session_factory, _segment("a", "s1"), _segment("changed", "s2"), key="idem-1")
    assert _count(session_factory, Job) == 2  # the conflicting request rolled back entirely

    other_key = _create(session_factory, _segment("c", "s3"), key="idem-2")
    assert other_key[0].created


def test_tenant_scoping(session_factory: sessionmaker[Session]) -> None:
    [(job, _)] = _create(session_factory, _segment())
    with session_factory() as session:
        repo = JobRepository(session)
        assert repo.get_job(ORG, job.id) is not None
        assert repo.get_job(OTHER_ORG, job.id) is None
        assert repo.list_jobs(OTHER_ORG) == ([], None)
        with pytest.raises(JobNotFoundError):
            repo.events(OTHER_ORG, job.id)
        with pytest.raises(JobNotFoundError):
            repo.cancel(OTHER_ORG, job.id)
        with pytest.raises(JobNotFoundError):
            repo.retry(OTHER_ORG, job.id)
        with pytest.raises(JobNotFoundError):
            repo.cancel(ORG, "00000000-0000-0000-0000-000000000000")
        assert repo.get_job(ORG, job.id).status == JobStatus.QUEUED  # type: ignore[union-attr]


def test_keyset_pagination_returns_every_job_once(session_factory: sessionmaker[Session]) -> None:
    for batch in range(5):  # several transactions, so several created_at values, with ties inside
        _create(session_factory, *(_segment(f"t{batch}-{i}", f"s{batch}-{i}") for i in range(5)))
    with session_factory() as session:
        JobRepository(session).create_embed_jobs(OTHER_ORG, None, [_segment("foreign")])
        repo = JobRepository(session)
        seen: list[Job] = []
        cursor: str | None = None
        pages = 0
        while True:
            page, cursor = repo.list_jobs(ORG, limit=7, cursor=cursor)
            seen.extend(page)
            pages += 1
            if cursor is None:
                break
        assert pages == 4
        assert len(seen) == 25 and len({j.id for j in seen}) == 25
        assert all(j.org_id == ORG for j in seen)
        order = [(j.created_at, j.id) for j in seen]
        assert order == sorted(order, reverse=True)

        repo.cancel(ORG, seen[0].id)
        canceled, _ = repo.list_jobs(ORG, status=JobStatus.CANCELED)
        assert [j.id for j in canceled] == [seen[0].id]
        with pytest.raises(InvalidCursorError):
            repo.list_jobs(ORG, cursor="garbage")


def test_transitions_write_events_in_order_and_refuse_illegal_ones(
    session_factory: sessionmaker[Session],
) -> None:
    [(job, _)] = _create(session_factory, _segment())
    with session_factory() as session:
        repo = JobRepository(session)
        repo.transition(job.id, JobStatus.RUNNING, stage="embedding", progress=30)
        repo.transition(job.id, JobStatus.SUCCEEDED, stage="completed", progress=100, result={"ok": True})
        with pytest.raises(InvalidTransitionError):
            repo.transition(job.id, JobStatus.RUNNING)
        with pytest.raises(InvalidTransitionError):
            repo.cancel(ORG, job.id)
        with pytest.raises(InvalidTransitionError):
            repo.retry(ORG, job.id)
        events = repo.events(ORG, job.id)
        assert [(e.prev_status, e.next_status) for e in events] == [
            (None, "queued"),
            ("queued", "running"),
            ("running", "succeeded"),
        ]
        done = repo.get_job(ORG, job.id)
        assert done is not None
        assert (done.progress, done.result) == (100, {"ok": True})
        assert done.started_at is not None and done.finished_at is not None


def test_cancel_only_while_queued_and_closes_the_outbox_row(session_factory: sessionmaker[Session]) -> None:
    [(job, _)] = _create(session_factory, _segment())
    with session_factory() as session:
        repo = JobRepository(session)
        assert repo.cancel(ORG, job.id).status == JobStatus.CANCELED
        with pytest.raises(InvalidTransitionError):
            repo.cancel(ORG, job.id)
        [row] = session.scalars(select(Outbox)).all()
        assert row.state == OutboxState.DONE


def test_generic_create_job_dedupes_on_job_key(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        repo = JobRepository(session)
        first = repo.create_job(ORG, "reembed", "key-1", "admin", "reembed", {"collection": "c"})
        second = repo.create_job(ORG, "reembed", "key-1", "admin", "reembed", {"collection": "c"})
        assert first.created and not second.created and first.job.id == second.job.id
        [row] = session.scalars(select(Outbox)).all()
        assert row.payload == {"collection": "c", "job_id": first.job.id}
