"""JobRepository: tenant-scoped job creation, lookup, listing and state changes.

Write methods (``create_*``, ``transition``, ``retry``, ``cancel``) run in one transaction and
commit it; on any error they roll back and re-raise. Reads leave the session's transaction open
for the caller to close.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deployments.mock_vectors import MOCK_MODEL
from serve_app.db import keys
from serve_app.db.models import (
    IdempotencyKey,
    Job,
    JobEvent,
    JobStatus,
    Outbox,
    OutboxState,
    new_uuid,
    utcnow,
)
from serve_app.db.transitions import InvalidTransitionError, apply_transition

EMBED_JOB_TYPE = "embed"
# Outbox tasks of embed jobs. Mock-model jobs (``POST /vectors/mock``) have a task of their own so the
# relay can keep taking them while the real-embeddings switch holds every real-model job queued
# (``OutboxQueue.claim(tasks=...)``). Rows written before that split carry ``embed`` + model ``mock``.
EMBED_TASK = "embed"
EMBED_MOCK_TASK = "embed_mock"
MAX_PAGE_SIZE = 500

_T = TypeVar("_T")


class JobNotFoundError(LookupError):
    """No such job in this organisation (unknown ids and other tenants' ids look the same)."""


class IdempotencyConflictError(ValueError):
    """The Idempotency-Key was already used with a different request body."""


class InvalidCursorError(ValueError):
    """The pagination cursor is not one this service issued."""


@dataclass(frozen=True)
class EmbedSegment:
    asset_id: str
    segment_id: str
    text: str
    model: str
    model_version: str
    # A document chunk's place in its document (doc_version, chunk_index, char_start, char_end); None otherwise.
    chunk: dict[str, Any] | None = None

    def as_payload(self) -> dict[str, Any]:
        """The segment's fields for its outbox payload (and request hash): ``chunk`` only when there is one."""
        fields = asdict(self)
        if self.chunk is None:
            del fields["chunk"]
        return fields


class CreatedJob(NamedTuple):
    job: Job
    created: bool


def encode_cursor(created_at: datetime, job_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def embed_task(model: str) -> str:
    """The outbox task of an embed job for ``model``."""
    return EMBED_MOCK_TASK if model == MOCK_MODEL else EMBED_TASK


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        parsed = datetime.fromisoformat(created_at)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursorError("invalid cursor") from exc
    if parsed.tzinfo is None or not isinstance(job_id, str):
        raise InvalidCursorError("invalid cursor")
    return parsed, job_id


class JobRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    # ---------------------------------------------------------------- creation

    def create_embed_jobs(
        self,
        org_id: str,
        requested_by: str | None,
        segments: list[EmbedSegment],
        idempotency_key: str | None = None,
        *,
        request_hash: str | None = None,
    ) -> list[CreatedJob]:
        """One job + first event + PENDING outbox row per new segment, all in one transaction.

        A segment whose job key already exists returns that job (``created=False``). With an
        ``idempotency_key``, a replay with the same ``request_hash`` (default: hash of the
        segments) returns the stored jobs; a different hash raises ``IdempotencyConflictError``.
        """
        req_hash = request_hash or keys.request_hash([s.as_payload() for s in segments])

        def work() -> list[CreatedJob]:
            if idempotency_key is not None:
                replay = self._idempotent_replay(org_id, idempotency_key, req_hash)
                if replay is not None:
                    return replay
            created = self._create_embed_many(org_id, requested_by, segments)
            if idempotency_key is not None:
                replay = self._store_idempotency_key(org_id, idempotency_key, req_hash, created)
                if replay is not None:
                    return replay
            return created

        return self._in_transaction(work)

    def add_embed_jobs(self, org_id: str, requested_by: str | None, segments: list[EmbedSegment]) -> list[CreatedJob]:
        """:meth:`create_embed_jobs` without an Idempotency-Key and WITHOUT committing: for a caller that
        writes more rows in the same transaction (a document's chunks and its document row)."""
        return self._create_embed_many(org_id, requested_by, segments)

    def add_job(self, org_id: str, job_type: str, job_key: str, requested_by: str | None, outbox_task: str,
                outbox_payload: dict[str, Any]) -> CreatedJob:
        """:meth:`create_job` WITHOUT committing (the caller's transaction holds it)."""
        return self._create_one(org_id, job_type, job_key, requested_by, outbox_task, lambda job_id: outbox_payload)

    def create_job(
        self,
        org_id: str,
        job_type: str,
        job_key: str,
        requested_by: str | None,
        outbox_task: str,
        outbox_payload: dict[str, Any],
    ) -> CreatedJob:
        """Create a job with its outbox message (``job_id`` is added to the payload), or return
        the existing job with this ``job_key``."""
        return self._in_transaction(
            lambda: self.add_job(org_id, job_type, job_key, requested_by, outbox_task, outbox_payload))

    def create_tracked_job(self, org_id: str, job_type: str, job_key: str, requested_by: str | None) -> CreatedJob:
        """Create a job row (and its first event) for work that already runs elsewhere, e.g. a re-embed
        submitted straight to Ray Jobs: no outbox message, so no relay starts it a second time."""
        return self._in_transaction(
            lambda: self._create_one(org_id, job_type, job_key, requested_by, None, lambda job_id: {}))

    def _create_embed_many(
        self, org_id: str, requested_by: str | None, segments: list[EmbedSegment]
    ) -> list[CreatedJob]:
        """The batch path: one lookup of existing keys and multi-row inserts of the new jobs, their
        events and outbox rows. If a concurrent request inserts one of the keys first, the batch
        falls back to the one-by-one path, which resolves each conflict on its own savepoint."""
        if len(segments) < 2:
            return [self._create_embed_one(org_id, requested_by, seg) for seg in segments]
        job_keys = [self._embed_job_key(org_id, seg) for seg in segments]
        existing = {j.job_key: j for j in self._session.scalars(select(Job).where(Job.job_key.in_(set(job_keys))))}
        now = utcnow()
        fresh: dict[str, tuple[Job, EmbedSegment]] = {}
        for seg, key in zip(segments, job_keys, strict=True):
            if key not in existing and key not in fresh:
                job = Job(id=new_uuid(), org_id=org_id, type=EMBED_JOB_TYPE, status=JobStatus.QUEUED, stage="queued",
                          progress=0, job_key=key, attempts=0, requested_by=requested_by, created_at=now,
                          updated_at=now)
                fresh[key] = (job, seg)
        if fresh:
            try:
                with self._session.begin_nested():
                    self._session.add_all(job for job, _ in fresh.values())
                    self._session.flush()
                    self._session.execute(insert(JobEvent), [
                        {"job_id": job.id, "prev_status": None, "next_status": JobStatus.QUEUED.value,
                         "stage": "queued", "message": None, "created_at": now} for job, _ in fresh.values()])
                    self._session.execute(insert(Outbox), [
                        {"job_id": job.id, "org_id": org_id, "task": embed_task(seg.model),
                         "payload": {"org_id": org_id, **seg.as_payload(), "job_id": job.id},
                         "state": OutboxState.PENDING, "attempts": 0, "next_attempt_at": now, "created_at": now,
                         "updated_at": now} for job, seg in fresh.values()])
            except IntegrityError:
                return [self._create_embed_one(org_id, requested_by, seg) for seg in segments]
        out: list[CreatedJob] = []
        returned: set[str] = set()
        for key in job_keys:
            if key in existing:
                out.append(CreatedJob(existing[key], False))
            else:
                out.append(CreatedJob(fresh[key][0], key not in returned))
                returned.add(key)
        return out

    @staticmethod
    def _embed_job_key(org_id: str, seg: EmbedSegment) -> str:
        return keys.make_job_key(org_id, EMBED_JOB_TYPE, seg.asset_id, seg.segment_id, seg.model, seg.text)

    def _create_embed_one(self, org_id: str, requested_by: str | None, seg: EmbedSegment) -> CreatedJob:
        job_key = self._embed_job_key(org_id, seg)

        def payload(job_id: str) -> dict[str, Any]:
            return {"org_id": org_id, **seg.as_payload()}

        return self._create_one(org_id, EMBED_JOB_TYPE, job_key, requested_by, embed_task(seg.model), payload)

    def _create_one(
        self,
        org_id: str,
        job_type: str,
        job_key: str,
        requested_by: str | None,
        task: str | None,
        payload: Callable[[str], dict[str, Any]],
    ) -> CreatedJob:
        existing = self._job_by_key(job_key)
        if existing is not None:
            return CreatedJob(existing, False)
        now = utcnow()
        job_id = new_uuid()
        try:
            # A savepoint, so a concurrent insert of the same job_key costs only this segment.
            with self._session.begin_nested():
                job = Job(
                    id=job_id,
                    org_id=org_id,
                    type=job_type,
                    status=JobStatus.QUEUED,
                    stage="queued",
                    progress=0,
                    job_key=job_key,
                    attempts=0,
                    requested_by=requested_by,
                    created_at=now,
                    updated_at=now,
                )
                self._session.add(job)
                self._session.flush()
                self._session.add(_first_event(job_id, now))
                if task is not None:
                    self._session.add(_new_outbox_row(job_id, org_id, task, {**payload(job_id), "job_id": job_id},
                                                      now))
                self._session.flush()
        except IntegrityError:
            winner = self._job_by_key(job_key)
            if winner is None:
                raise
            return CreatedJob(winner, False)
        return CreatedJob(job, True)

    def reembed_for_submission(self, submission_id: str, job_id: str | None = None) -> Job | None:
        """The re-embed job row behind a Ray submission: the row named in its metadata (runs the relay
        submitted), else the row the run created for itself (``reembed:<submission id>``)."""
        if job_id:
            return self._session.get(Job, job_id)
        return self._job_by_key(f"reembed:{submission_id}")

    def _job_by_key(self, job_key: str) -> Job | None:
        return self._session.scalars(select(Job).where(Job.job_key == job_key)).one_or_none()

    def _idempotent_replay(self, org_id: str, key: str, req_hash: str) -> list[CreatedJob] | None:
        row = self._session.get(IdempotencyKey, (org_id, key), populate_existing=True)
        if row is None:
            return None
        if row.request_hash != req_hash:
            raise IdempotencyConflictError(f"Idempotency-Key {key!r} was used with a different request")
        jobs = {j.id: j for j in self._session.scalars(select(Job).where(Job.id.in_(row.job_ids)))}
        return [CreatedJob(jobs[job_id], False) for job_id in row.job_ids]

    def _store_idempotency_key(
        self, org_id: str, key: str, req_hash: str, created: list[CreatedJob]
    ) -> list[CreatedJob] | None:
        try:
            with self._session.begin_nested():
                self._session.add(
                    IdempotencyKey(
                        org_id=org_id,
                        key=key,
                        request_hash=req_hash,
                        job_ids=[c.job.id for c in created],
                        created_at=utcnow(),
                    )
                )
                self._session.flush()
        except IntegrityError:
            # Another request stored the key first: answer as a replay of that request.
            replay = self._idempotent_replay(org_id, key, req_hash)
            if replay is None:
                raise
            return replay
        return None

    # ------------------------------------------------------------------- reads

    def get_job(self, org_id: str, job_id: str) -> Job | None:
        stmt = select(Job).where(Job.id == job_id, Job.org_id == org_id)
        return self._session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()

    def list_jobs(
        self,
        org_id: str,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """Newest first, keyset-paginated on (created_at, id); pass the returned cursor back."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        stmt = select(Job).where(Job.org_id == org_id)
        if status is not None:
            stmt = stmt.where(Job.status == status)
        if cursor is not None:
            created_at, job_id = decode_cursor(cursor)
            stmt = stmt.where(
                or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
            )
        stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        stmt = stmt.execution_options(populate_existing=True)
        jobs = list(self._session.scalars(stmt))
        if len(jobs) <= limit:
            return jobs, None
        jobs = jobs[:limit]
        return jobs, encode_cursor(jobs[-1].created_at, jobs[-1].id)

    def count_by_status(self, org_id: str) -> dict[str, int]:
        """This tenant's jobs per status (every status present, zeros included); one indexed GROUP BY."""
        rows = self._session.execute(
            select(Job.status, func.count()).where(Job.org_id == org_id).group_by(Job.status)
        ).all()
        counts = {status.value: 0 for status in JobStatus}
        counts.update({JobStatus(status).value: int(n) for status, n in rows})
        return counts

    def events(self, org_id: str, job_id: str) -> list[JobEvent]:
        """The job's events in the order they were written; ``JobNotFoundError`` if not this org's."""
        if self.get_job(org_id, job_id) is None:
            raise JobNotFoundError(job_id)
        return list(
            self._session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        )

    # ----------------------------------------------------------- state changes

    def transition(
        self,
        job_id: str,
        new_status: JobStatus,
        stage: str | None = None,
        progress: int | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        message: str | None = None,
    ) -> Job:
        """Apply one status change (writing its event) and commit; not tenant-scoped (internal)."""

        def work() -> Job:
            job = self._session.get(Job, job_id, with_for_update=True, populate_existing=True)
            if job is None:
                raise JobNotFoundError(job_id)
            apply_transition(
                self._session,
                job,
                new_status,
                stage=stage,
                progress=progress,
                result=result,
                error=error,
                message=message,
            )
            return job

        return self._in_transaction(work)

    def retry(self, org_id: str, job_id: str) -> Job:
        """FAILED / DEAD_LETTER → QUEUED with a fresh PENDING outbox message (attempts reset)."""

        def work() -> Job:
            job = self._locked_job(org_id, job_id)
            if job.status not in (JobStatus.FAILED, JobStatus.DEAD_LETTER):
                raise InvalidTransitionError(job.id, job.status, JobStatus.QUEUED)
            last = self._session.scalars(
                select(Outbox).where(Outbox.job_id == job.id).order_by(Outbox.id.desc()).limit(1)
            ).one_or_none()
            if last is None:
                raise InvalidTransitionError(job.id, job.status, JobStatus.QUEUED)
            now = utcnow()
            self._close_open_messages(job.id, now)
            apply_transition(
                self._session,
                job,
                JobStatus.QUEUED,
                stage="queued",
                progress=0,
                message="retry requested",
                now=now,
            )
            job.attempts = 0
            job.error = None
            job.result = None
            self._session.add(_new_outbox_row(job.id, job.org_id, last.task, dict(last.payload), now))
            return job

        return self._in_transaction(work)

    def cancel(self, org_id: str, job_id: str) -> Job:
        """QUEUED → CANCELED; its outbox message is marked DONE so no relay runs it."""

        def work() -> Job:
            job = self._locked_job(org_id, job_id)
            if job.status != JobStatus.QUEUED:
                raise InvalidTransitionError(job.id, job.status, JobStatus.CANCELED)
            now = utcnow()
            apply_transition(self._session, job, JobStatus.CANCELED, message="canceled", now=now)
            self._close_open_messages(job.id, now)
            return job

        return self._in_transaction(work)

    # ----------------------------------------------------------------- helpers

    def _locked_job(self, org_id: str, job_id: str) -> Job:
        job = self._session.scalars(
            select(Job)
            .where(Job.id == job_id, Job.org_id == org_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    def _close_open_messages(self, job_id: str, now: datetime) -> None:
        self._session.execute(
            update(Outbox)
            .where(Outbox.job_id == job_id, Outbox.state.in_([OutboxState.PENDING, OutboxState.LEASED]))
            .values(state=OutboxState.DONE, lease_expires_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )

    def _in_transaction(self, work: Callable[[], _T]) -> _T:
        try:
            outcome = work()
            self._session.commit()
        except BaseException:
            self._session.rollback()
            raise
        return outcome


def _first_event(job_id: str, now: datetime) -> JobEvent:
    return JobEvent(
        job_id=job_id, prev_status=None, next_status=JobStatus.QUEUED, stage="queued", created_at=now
    )


def _new_outbox_row(job_id: str, org_id: str, task: str, payload: dict[str, Any], now: datetime) -> Outbox:
    return Outbox(
        job_id=job_id,
        org_id=org_id,
        task=task,
        payload=payload,
        state=OutboxState.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
