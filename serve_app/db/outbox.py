"""OutboxQueue: lease-based claiming of outbox messages by one or more relays.

Claiming is one transaction of SELECT-due-rows then UPDATE-to-LEASED. On PostgreSQL the SELECT
takes ``FOR UPDATE SKIP LOCKED`` row locks, so concurrent relays pick disjoint rows. SQLite has no
row locks; there every transaction starts with ``BEGIN IMMEDIATE`` (see ``engine.py``), which
holds the single write lock across the SELECT and the UPDATE, so claimers run one after another.
On both, the UPDATE repeats the "still due" condition, so a row is never leased twice at once.

A lease is fenced by (owner, attempts): ``attempts`` grows on every claim, so a relay whose lease
expired and was taken over, even by a relay with the same owner name, can no longer complete,
fail or heartbeat that message.

Claims are fair across tenants: one tenant's 100,000 queued jobs do not hold back another tenant's
few. A claim walks the tenants that have work (one index seek per tenant on ``(state, org_id,
next_attempt_at)``, at most ``limit`` tenants, starting after the last tenant the previous claim
reached and wrapping around), takes each one's oldest due rows, and interleaves them round-robin.
With ``fair=False`` it takes the oldest due rows whoever they belong to (the order before).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, func, insert, or_, select, text, union_all, update
from sqlalchemy.orm import Session, sessionmaker

from deployments.mock_vectors import MOCK_MODEL
from serve_app.db.jobs import EMBED_MOCK_TASK, EMBED_TASK
from serve_app.db.models import Job, JobEvent, JobStatus, Outbox, OutboxState, utcnow
from serve_app.db.transitions import ALLOWED_TRANSITIONS, UPDATABLE_IN_PLACE, apply_transition


@dataclass(frozen=True)
class ClaimedMessage:
    id: int
    job_id: str
    task: str
    payload: dict[str, Any]
    attempts: int
    owner: str
    lease_expires_at: datetime


def backoff_delay_s(
    attempts: int, base_s: float, max_s: float, rng: Callable[[], float] = random.random
) -> float:
    """``min(max, base * 2^(attempts-1))`` scaled by a jitter factor in [0.5, 1.5)."""
    exponent = min(max(attempts - 1, 0), 62)
    return min(max_s, base_s * 2.0**exponent) * (0.5 + rng())


class OutboxQueue:
    def __init__(
        self,
        sessionmaker: sessionmaker[Session],
        owner: str,
        lease_s: float,
        max_attempts: int,
        backoff_base_s: float,
        backoff_max_s: float,
        fair: bool = True,
    ) -> None:
        if lease_s <= 0 or max_attempts < 1 or backoff_base_s <= 0 or backoff_max_s <= 0:
            raise ValueError("lease_s, backoff times must be > 0 and max_attempts >= 1")
        self._sessionmaker = sessionmaker
        self.owner = owner
        self.lease = timedelta(seconds=lease_s)
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.fair = fair
        self._after_tenant = ""  # where the next claim's walk over the tenants starts

    # ---------------------------------------------------------------- claiming

    @staticmethod
    def _due(now: datetime) -> ColumnElement[bool]:
        return or_(
            and_(Outbox.state == OutboxState.PENDING, Outbox.next_attempt_at <= now),
            and_(Outbox.state == OutboxState.LEASED, Outbox.lease_expires_at < now),
        )

    @staticmethod
    def _of_tasks(tasks: Collection[str]) -> ColumnElement[bool]:
        """Messages of these tasks. ``embed_mock`` also covers the mock-model rows written before mock jobs had
        a task of their own (task ``embed``, payload model ``mock``)."""
        wanted: ColumnElement[bool] = Outbox.task.in_(sorted(tasks))
        if EMBED_MOCK_TASK in tasks and EMBED_TASK not in tasks:
            wanted = or_(wanted, and_(Outbox.task == EMBED_TASK, Outbox.payload["model"].as_string() == MOCK_MODEL))
        return wanted

    def claim(self, limit: int, tasks: Collection[str] | None = None) -> list[ClaimedMessage]:
        """Lease up to ``limit`` due messages (PENDING and due, or LEASED with an expired lease).

        ``tasks``: only messages of these outbox tasks (None: any). The others are left exactly as they
        are (not leased, attempts unchanged), e.g. real-model embed jobs while real embeddings are off.
        """
        if limit < 1 or (tasks is not None and not tasks):
            return []
        with self._sessionmaker.begin() as session:
            session.connection()  # take the transaction (SQLite: the write lock) before reading the clock
            now = utcnow()
            due = self._due(now) if tasks is None else and_(self._due(now), self._of_tasks(tasks))
            if self.fair:
                ids = self._fair_ids(session, now, tasks, limit)
            else:
                ids = list(session.scalars(
                    select(Outbox.id).where(due).order_by(Outbox.next_attempt_at, Outbox.id).limit(limit)
                    .with_for_update(skip_locked=True)))
            if not ids:
                return []
            expires = now + self.lease
            rows = session.execute(
                update(Outbox)
                .where(Outbox.id.in_(ids), due)
                .values(
                    state=OutboxState.LEASED,
                    lease_owner=self.owner,
                    lease_expires_at=expires,
                    attempts=Outbox.attempts + 1,
                    updated_at=now,
                )
                .returning(Outbox.id, Outbox.job_id, Outbox.task, Outbox.payload, Outbox.attempts)
                .execution_options(synchronize_session=False)
            ).all()
        messages = [
            ClaimedMessage(row.id, row.job_id, row.task, row.payload, row.attempts, self.owner, expires)
            for row in rows
        ]
        return sorted(messages, key=lambda m: m.id)

    def _fair_ids(self, session: Session, now: datetime, tasks: Collection[str] | None, limit: int) -> list[int]:
        """Up to ``limit`` due row ids, round-robin over the tenants with work, oldest first within each.

        Each tenant's rows are read with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL), so concurrent claimers
        take disjoint rows as the plain claim does: first an equal share each, then, if some tenants had
        fewer, more from those that filled their share."""
        tenants = self._tenants_with_work(session, limit)
        if not tenants:
            return []
        self._after_tenant = tenants[-1]
        share = -(-limit // len(tenants))
        rows = self._oldest_of(session, now, tasks, tenants, share, taken=())
        found = sum(len(r) for r in rows.values())
        filled = [t for t in tenants if len(rows[t]) == share]
        if found < limit and filled:
            more = self._oldest_of(session, now, tasks, filled, limit - found,
                                   taken=[i for r in rows.values() for _, i in r])
            for tenant, extra in more.items():
                rows[tenant] += extra
        return _round_robin([[i for _, i in sorted(rows[t])] for t in tenants], limit)

    def _oldest_of(self, session: Session, now: datetime, tasks: Collection[str] | None, tenants: list[str], n: int,
                   taken: Collection[int]) -> dict[str, list[tuple[datetime, int]]]:
        """The ``n`` oldest due rows of each tenant (not in ``taken``), locked; one statement for all.

        PENDING and expired LEASED rows are read apart: each part then follows the ``(state, org_id,
        next_attempt_at)`` index and stops after ``n`` rows, where one OR of both would sort every row."""
        pending = and_(Outbox.state == OutboxState.PENDING, Outbox.next_attempt_at <= now)
        expired = and_(Outbox.state == OutboxState.LEASED, Outbox.lease_expires_at < now)
        parts = []
        for tenant in tenants:
            for due, order in ((pending, Outbox.next_attempt_at), (expired, Outbox.lease_expires_at)):
                where = and_(due, Outbox.org_id == tenant)
                if tasks is not None:
                    where = and_(where, self._of_tasks(tasks))
                if taken:
                    where = and_(where, Outbox.id.not_in(list(taken)))
                oldest = (select(Outbox.id, Outbox.org_id, Outbox.next_attempt_at).where(where)
                          .order_by(order, Outbox.id).limit(n).with_for_update(skip_locked=True).subquery())
                parts.append(select(oldest.c.id, oldest.c.org_id, oldest.c.next_attempt_at))
        out: dict[str, list[tuple[datetime, int]]] = {tenant: [] for tenant in tenants}
        for row in session.execute(union_all(*parts)):
            out[row.org_id].append((row.next_attempt_at, row.id))
        return out

    def _tenants_with_work(self, session: Session, limit: int) -> list[str]:
        """Tenants with PENDING or LEASED rows, at most ``limit``, in org_id order after ``_after_tenant``
        and then from the start: one index seek each (a loose index scan), whatever the rows per tenant."""
        found: list[str] = []
        for after in (self._after_tenant, ""):
            for state in (OutboxState.PENDING, OutboxState.LEASED):
                found += [t for t in _walk_tenants(session, state.value, after, limit) if t not in found]
            if after == "" or len(found) >= limit:
                break
        ahead = sorted(t for t in found if t > self._after_tenant)
        behind = sorted(t for t in found if t <= self._after_tenant)
        return (ahead + behind)[:limit]

    # --------------------------------------------------------------- finishing

    def complete(self, msg: ClaimedMessage, result: dict[str, Any]) -> bool:
        """Outbox row DONE and job SUCCEEDED in one transaction. False (and no job change) when
        the lease is no longer ours or the job is no longer QUEUED/RUNNING."""
        return self.complete_many([(msg, result)])[0]

    def complete_many(self, items: list[tuple[ClaimedMessage, dict[str, Any]]]) -> list[bool]:
        """:meth:`complete` for a batch in ONE transaction, with set-based statements: one locking
        read, one fenced outbox update, one job update and one event insert for the whole batch."""
        if not items:
            return []
        msgs = [msg for msg, _ in items]
        with self._sessionmaker.begin() as session:
            session.connection()
            now = utcnow()
            statuses = self._lock_job_statuses(session, msgs)
            fenced = self._fenced_update_many(session, msgs, state=OutboxState.DONE, lease_expires_at=None,
                                              updated_at=now)
            done = [msg.id in fenced and statuses.get(msg.job_id) in UPDATABLE_IN_PLACE for msg in msgs]
            finishing = [(msg, result) for (msg, result), ok in zip(items, done, strict=True) if ok]
            if finishing:
                session.execute(update(Job), [
                    {"id": msg.job_id, "status": JobStatus.SUCCEEDED, "stage": "completed", "progress": 100,
                     "result": result, "attempts": msg.attempts, "updated_at": now, "finished_at": now}
                    for msg, result in finishing])
                session.execute(insert(JobEvent), [
                    {"job_id": msg.job_id, "prev_status": statuses[msg.job_id],
                     "next_status": JobStatus.SUCCEEDED.value, "stage": "completed", "message": None, "created_at": now}
                    for msg, _ in finishing])
            return done

    def hand_off(self, msg: ClaimedMessage, stage: str, result: dict[str, Any]) -> bool:
        """Outbox row DONE while the job stays RUNNING: the work now belongs to another system (a Ray
        Job), which finishes the job row itself. False when the lease is lost or the job finished."""
        with self._sessionmaker.begin() as session:
            session.connection()
            now = utcnow()
            job = self._locked_job(session, msg.job_id)
            if job is None or job.status not in UPDATABLE_IN_PLACE:
                return False
            if not self._fenced_update(session, msg, state=OutboxState.DONE, lease_expires_at=None, updated_at=now):
                return False
            apply_transition(session, job, JobStatus.RUNNING, stage=stage, result=result, now=now,
                             message=f"handed off: {result}")
            job.attempts = msg.attempts
            return True

    def mark_running(self, msg: ClaimedMessage, stage: str, progress: int) -> bool:
        """QUEUED → RUNNING (or a stage/progress update while RUNNING), and extend the lease.
        False when the lease is lost or the job was canceled/finished: stop working on it."""
        return self.mark_running_many([msg], stage, progress)[0]

    def mark_running_many(self, msgs: list[ClaimedMessage], stage: str, progress: int) -> list[bool]:
        """:meth:`mark_running` for a batch in ONE transaction, with set-based statements."""
        if not msgs:
            return []
        if not 0 <= progress <= 100:
            raise ValueError(f"progress must be within 0..100, got {progress}")
        with self._sessionmaker.begin() as session:
            session.connection()
            now = utcnow()
            statuses = self._lock_job_statuses(session, msgs)
            eligible = [m for m in msgs if statuses.get(m.job_id) in UPDATABLE_IN_PLACE]
            fenced = self._fenced_update_many(session, eligible, lease_expires_at=now + self.lease, updated_at=now)
            alive = [m for m in eligible if m.id in fenced]
            if alive:
                session.execute(update(Job), [
                    {"id": m.job_id, "status": JobStatus.RUNNING, "stage": stage, "progress": progress,
                     "attempts": m.attempts, "updated_at": now, "finished_at": None} for m in alive])
                session.execute(
                    update(Job)
                    .where(Job.id.in_([m.job_id for m in alive]), Job.started_at.is_(None))
                    .values(started_at=now)
                    .execution_options(synchronize_session=False))
                started = [m for m in alive if statuses[m.job_id] == JobStatus.QUEUED]
                if started:
                    session.execute(insert(JobEvent), [
                        {"job_id": m.job_id, "prev_status": JobStatus.QUEUED.value,
                         "next_status": JobStatus.RUNNING.value, "stage": stage, "message": None, "created_at": now}
                        for m in started])
            alive_ids = {m.id for m in alive}
            return [m.id in alive_ids for m in msgs]

    def fail(self, msg: ClaimedMessage, error: str) -> OutboxState | None:
        """Record a failed attempt. Below ``max_attempts`` the message goes back to PENDING with
        exponential backoff and the job gets stage "retrying"; at ``max_attempts`` the message is
        DEAD and the job DEAD_LETTER. Returns the new state, or None if the lease was lost."""
        with self._sessionmaker.begin() as session:
            session.connection()
            now = utcnow()
            job = self._locked_job(session, msg.job_id)
            if msg.attempts >= self.max_attempts:
                if not self._fenced_update(
                    session,
                    msg,
                    state=OutboxState.DEAD,
                    lease_expires_at=None,
                    last_error=error,
                    updated_at=now,
                ):
                    return None
                if job is not None and JobStatus.DEAD_LETTER in ALLOWED_TRANSITIONS[JobStatus(job.status)]:
                    apply_transition(
                        session,
                        job,
                        JobStatus.DEAD_LETTER,
                        error=error,
                        now=now,
                        message=f"attempt {msg.attempts} failed, giving up: {error}",
                    )
                    job.attempts = msg.attempts
                return OutboxState.DEAD
            delay = backoff_delay_s(msg.attempts, self.backoff_base_s, self.backoff_max_s)
            if not self._fenced_update(
                session,
                msg,
                state=OutboxState.PENDING,
                next_attempt_at=now + timedelta(seconds=delay),
                lease_owner=None,
                lease_expires_at=None,
                last_error=error,
                updated_at=now,
            ):
                return None
            if job is not None and job.status in UPDATABLE_IN_PLACE:
                apply_transition(
                    session,
                    job,
                    JobStatus(job.status),
                    stage="retrying",
                    error=error,
                    now=now,
                    message=f"attempt {msg.attempts} failed, retrying in {delay:.2f}s: {error}",
                )
                job.attempts = msg.attempts
            return OutboxState.PENDING

    # ----------------------------------------------------------------- metrics

    def oldest_due_age_s(self) -> float | None:
        """Seconds the oldest due message has been waiting (the relay's lag), None if none is due."""
        with self._sessionmaker() as session:
            now = utcnow()
            pending = session.scalar(
                select(func.min(Outbox.next_attempt_at)).where(
                    Outbox.state == OutboxState.PENDING, Outbox.next_attempt_at <= now
                )
            )
            expired = session.scalar(
                select(func.min(Outbox.lease_expires_at)).where(
                    Outbox.state == OutboxState.LEASED, Outbox.lease_expires_at < now
                )
            )
        oldest = min((t for t in (pending, expired) if t is not None), default=None)
        return None if oldest is None else max(0.0, (now - oldest).total_seconds())

    def counts_by_state(self) -> dict[str, int]:
        with self._sessionmaker() as session:
            rows = session.execute(select(Outbox.state, func.count()).group_by(Outbox.state)).all()
        counts = {state.value: 0 for state in OutboxState}
        counts.update({str(state): int(n) for state, n in rows})
        return counts

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _locked_job(session: Session, job_id: str) -> Job | None:
        # Job row first, outbox row second: the same lock order as JobRepository.cancel/retry.
        return session.get(Job, job_id, with_for_update=True, populate_existing=True)

    @staticmethod
    def _lock_job_statuses(session: Session, msgs: list[ClaimedMessage]) -> dict[str, JobStatus]:
        """Lock the batch's job rows (in id order, the lock order every writer uses) and read their status."""
        job_ids = sorted({m.job_id for m in msgs})
        rows = session.execute(
            select(Job.id, Job.status).where(Job.id.in_(job_ids)).order_by(Job.id).with_for_update()
        ).all()
        return {row.id: JobStatus(row.status) for row in rows}

    def _fenced_update_many(self, session: Session, msgs: list[ClaimedMessage], **values: Any) -> set[int]:
        """Update the messages whose claim still holds its lease; returns the ids updated."""
        if not msgs:
            return set()
        held = or_(*(and_(Outbox.id == m.id, Outbox.attempts == m.attempts) for m in msgs))
        rows = session.execute(
            update(Outbox)
            .where(held, Outbox.state == OutboxState.LEASED, Outbox.lease_owner == self.owner)
            .values(**values)
            .returning(Outbox.id)
            .execution_options(synchronize_session=False)
        ).all()
        return {row.id for row in rows}

    def _fenced_update(self, session: Session, msg: ClaimedMessage, **values: Any) -> bool:
        """Update the message only while this claim still holds its lease."""
        result = session.execute(
            update(Outbox)
            .where(
                Outbox.id == msg.id,
                Outbox.state == OutboxState.LEASED,
                Outbox.lease_owner == msg.owner,
                Outbox.attempts == msg.attempts,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return cast(CursorResult[Any], result).rowcount == 1


# A loose index scan: the next org_id after the last one found, one index seek per step (SQLite and
# PostgreSQL alike; the casts keep PostgreSQL's recursive-term types identical).
_WALK_TENANTS = text("""
WITH RECURSIVE walk(org_id, n) AS (
    SELECT CAST((SELECT MIN(org_id) FROM outbox WHERE state = :state AND org_id > :after) AS TEXT), 1
    UNION ALL
    SELECT CAST((SELECT MIN(o.org_id) FROM outbox o WHERE o.state = :state AND o.org_id > walk.org_id) AS TEXT),
           walk.n + 1
    FROM walk WHERE walk.org_id IS NOT NULL AND walk.n < :cap
)
SELECT org_id FROM walk WHERE org_id IS NOT NULL
""")


def _walk_tenants(session: Session, state: str, after: str, cap: int) -> list[str]:
    return [str(t) for t in session.scalars(_WALK_TENANTS, {"state": state, "after": after, "cap": cap})]


def _round_robin(queues: Sequence[list[int]], limit: int) -> list[int]:
    """The first of each queue in turn, then the second of each, ... up to ``limit`` items."""
    out: list[int] = []
    depth = 0
    while len(out) < limit and any(depth < len(q) for q in queues):
        out += [q[depth] for q in queues if depth < len(q)][: limit - len(out)]
        depth += 1
    return out
