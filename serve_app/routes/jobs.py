"""Job status, listing, retry and cancel. Tenant-scoped: another tenant's job id answers 404."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from deployments.registry import UnknownModelError, get_model
from serve_app.db import (
    InvalidCursorError,
    InvalidTransitionError,
    JobNotFoundError,
    JobRepository,
    JobStatus,
    request_hash,
)
from serve_app.deps import AdminDep, PrincipalDep, ServicesDep
from serve_app.errors import ApiError, json_response
from serve_app.reembed_args import ReembedArgs
from serve_app.routes.jobs_view import job_view
from serve_app.routes.openai_compat import ERROR_RESPONSES
from serve_app.routes.vectors_write import IdempotencyKeyHeader, check_idempotency_key
from serve_app.schemas import JobCounts, JobList, JobView, ReembedRequest
from serve_app.services import Services

router = APIRouter(prefix="/jobs", tags=["jobs"])

_T = TypeVar("_T")
JobIdPath = Annotated[str, Path(description="The job's UUID.", max_length=64)]


def _job_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(422, "invalid_job_id", "job id must be a UUID", field="job_id") from None


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"no job {job_id} for this tenant", field="job_id")


async def _with_repo(services: Services, work: Callable[[JobRepository], _T]) -> _T:
    db = services.require_db()

    def run() -> _T:
        with db.sessions() as session:
            return work(JobRepository(session))

    return await asyncio.to_thread(run)


@router.post("/reembed", status_code=202, response_model=JobView,
             responses={**ERROR_RESPONSES, 403: {"description": "Needs the admin scope"}})
async def reembed(body: ReembedRequest, services: ServicesDep, principal: AdminDep,
                  idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Re-embed THIS tenant's segments (e.g. ``collection:mock`` → a real model) as a Ray Job.

    The job and its outbox row are written in one transaction; the relay submits the Ray Job, so a
    request is never lost between the database and Ray. The run moves this tenant alone: it fills the
    target version (writes made meanwhile reach it too), verifies it against the source and switches
    this tenant's live collection (``switch: false`` only verifies). Other tenants are untouched.
    """
    check_idempotency_key(idempotency_key)
    try:
        spec = get_model(body.model)
    except UnknownModelError as exc:
        raise ApiError(404, "model_not_found", str(exc), field="model") from None
    args = ReembedArgs(source=body.source, model=spec.name, org=[principal.org_id], to_version=body.to_version,
                       dry_run=body.dry_run, no_switch=not body.switch).model_dump()
    job_key = request_hash({"org": principal.org_id, "args": args, "key": idempotency_key or str(uuid.uuid4())})

    def work(repo: JobRepository) -> JobView:
        created = repo.create_job(principal.org_id, "reembed", job_key, principal.sub, "reembed", {"args": args})
        return job_view(created.job, repo.events(principal.org_id, created.job.id))

    return json_response((await _with_repo(services, work)).model_dump(), 202)


@router.get("/counts", response_model=JobCounts, responses=ERROR_RESPONSES)
async def count_jobs(services: ServicesDep, principal: PrincipalDep) -> JobCounts:
    """How many of this tenant's jobs are in each status: one request to follow a large ingest."""
    counts = await _with_repo(services, lambda repo: repo.count_by_status(principal.org_id))
    return JobCounts(counts=counts, total=sum(counts.values()))


@router.get("/{job_id}", response_model=JobView, responses=ERROR_RESPONSES)
async def get_job(job_id: JobIdPath, services: ServicesDep, principal: PrincipalDep) -> JobView:
    """The job with every status transition it went through, in order."""
    jid = _job_id(job_id)

    def work(repo: JobRepository) -> JobView | None:
        job = repo.get_job(principal.org_id, jid)
        return None if job is None else job_view(job, repo.events(principal.org_id, jid))

    view = await _with_repo(services, work)
    if view is None:
        raise _not_found(jid)
    return view


@router.get("", response_model=JobList, responses=ERROR_RESPONSES)
async def list_jobs(
    services: ServicesDep, principal: PrincipalDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
) -> JobList:
    """This tenant's jobs, newest first, with keyset pagination."""
    def work(repo: JobRepository) -> JobList:
        jobs, next_cursor = repo.list_jobs(principal.org_id, status=status, limit=limit, cursor=cursor)
        return JobList(jobs=[job_view(j) for j in jobs], next_cursor=next_cursor)

    try:
        return await _with_repo(services, work)
    except InvalidCursorError:
        raise ApiError(422, "invalid_cursor", "cursor is not one this API returned", field="cursor") from None


async def _change(services: Services, org_id: str, job_id: str,
                  change: Callable[[JobRepository, str, str], object]) -> JobView:
    jid = _job_id(job_id)

    def work(repo: JobRepository) -> JobView:
        change(repo, org_id, jid)
        job = repo.get_job(org_id, jid)
        assert job is not None
        return job_view(job, repo.events(org_id, jid))

    try:
        return await _with_repo(services, work)
    except JobNotFoundError:
        raise _not_found(jid) from None
    except InvalidTransitionError as exc:
        raise ApiError(409, "invalid_transition", str(exc), field="status") from None


STATE_RESPONSES = {**ERROR_RESPONSES, 409: {"description": "Wrong state"}}


@router.post("/{job_id}/retry", response_model=JobView, responses=STATE_RESPONSES)
async def retry_job(job_id: JobIdPath, services: ServicesDep, principal: PrincipalDep) -> JobView:
    """Queue a FAILED or DEAD_LETTER job again (a fresh outbox message, attempts reset)."""
    return await _change(services, principal.org_id, job_id, JobRepository.retry)


@router.post("/{job_id}/cancel", response_model=JobView, responses=STATE_RESPONSES)
async def cancel_job(job_id: JobIdPath, services: ServicesDep, principal: PrincipalDep) -> JobView:
    """Cancel a job that is still QUEUED."""
    return await _change(services, principal.org_id, job_id, JobRepository.cancel)
