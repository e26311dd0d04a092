"""The job state machine: which status changes are legal, and the one function that applies them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from serve_app.db.models import Job, JobEvent, JobStatus, utcnow


class InvalidTransitionError(ValueError):
    """The job's current status does not allow the requested change."""

    def __init__(self, job_id: str, current: str, requested: str) -> None:
        super().__init__(f"job {job_id}: cannot go from {current} to {requested}")
        self.job_id = job_id
        self.current = current
        self.requested = requested


ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.DEAD_LETTER}
    ),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD_LETTER}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.DEAD_LETTER}),
    JobStatus.DEAD_LETTER: frozenset({JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}
# Staying in these statuses is an update (stage, progress, error), not a transition.
UPDATABLE_IN_PLACE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.DEAD_LETTER})


def apply_transition(
    session: Session,
    job: Job,
    new_status: JobStatus,
    *,
    stage: str | None = None,
    progress: int | None = None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    message: str | None = None,
    now: datetime | None = None,
) -> JobEvent | None:
    """Change ``job`` in the session (no commit). A status change always writes a ``JobEvent``;
    an in-place update (same status) writes one only when ``message`` is given."""
    now = now or utcnow()
    current = JobStatus(job.status)
    same = new_status == current
    if same and current not in UPDATABLE_IN_PLACE:
        raise InvalidTransitionError(job.id, current, new_status)
    if not same and new_status not in ALLOWED_TRANSITIONS[current]:
        raise InvalidTransitionError(job.id, current, new_status)
    if progress is not None and not 0 <= progress <= 100:
        raise ValueError(f"progress must be within 0..100, got {progress}")

    job.status = new_status
    if stage is not None or not same:
        job.stage = stage if stage is not None else new_status.value
    if progress is not None:
        job.progress = progress
    if result is not None:
        job.result = result
    if error is not None:
        job.error = error
    job.updated_at = now
    if new_status == JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    if new_status in FINISHED:
        job.finished_at = now
    elif not same:
        job.finished_at = None

    if same and message is None:
        return None
    event = JobEvent(
        job_id=job.id,
        prev_status=current.value,
        next_status=new_status.value,
        stage=job.stage,
        message=message,
        created_at=now,
    )
    session.add(event)
    return event
