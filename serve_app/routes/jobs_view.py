"""Turning job rows into API views (kept apart so every route renders jobs the same way)."""

from __future__ import annotations

from datetime import datetime

from serve_app.db.models import Job, JobEvent
from serve_app.schemas import JobEventView, JobView


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_view(job: Job, events: list[JobEvent] | None = None) -> JobView:
    return JobView(
        id=job.id, type=job.type, status=str(job.status), stage=job.stage, progress=job.progress,
        attempts=job.attempts, result=job.result, error=job.error, requested_by=job.requested_by,
        created_at=job.created_at.isoformat(), updated_at=job.updated_at.isoformat(),
        started_at=_iso(job.started_at), finished_at=_iso(job.finished_at),
        events=None if events is None else [
            JobEventView(prev_status=e.prev_status, next_status=e.next_status, stage=e.stage, message=e.message,
                         created_at=e.created_at.isoformat()) for e in events],
    )
