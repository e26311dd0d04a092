"""The write path: embed requests become jobs + outbox rows in ONE transaction; the relay does the rest."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Header
from starlette.responses import Response

from deployments.mock_vectors import MOCK_MODEL, MOCK_VERSION
from deployments.point_ids import point_id_for
from deployments.vector_store import parse_collection_name
from serve_app.db import CreatedJob, EmbedSegment, IdempotencyConflictError, JobRepository, request_hash
from serve_app.deps import PrincipalDep, ServicesDep
from serve_app.errors import ApiError, json_response
from serve_app.models_check import resolve_model
from serve_app.routes.openai_compat import ERROR_RESPONSES
from serve_app.schemas import (
    EmbedBatchAccepted,
    EmbedBatchRequest,
    EmbedJobAccepted,
    EmbedRequest,
    MockEmbedRequest,
)
from serve_app.services import Services
from serve_app.switches import require_real_embeddings

router = APIRouter(prefix="/vectors", tags=["vectors"])

# Visible ASCII only: no spaces, no CR/LF (header injection), at most the column's 255 characters.
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
MOCK_SUNSET = "Wed, 30 Jun 2027 00:00:00 GMT"

IdempotencyKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", description="Replay-safe request key.")]


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not IDEMPOTENCY_KEY_RE.match(key):
        raise ApiError(422, "invalid_idempotency_key",
                       "Idempotency-Key must be 1-255 visible ASCII characters", field="Idempotency-Key")


def _segment(services: Services, item: EmbedRequest, field_prefix: str) -> EmbedSegment:
    if len(item.text) > services.settings.max_text_chars:
        raise ApiError(422, "text_too_long",
                       f"text has {len(item.text)} characters; at most {services.settings.max_text_chars}",
                       field=f"{field_prefix}text")
    if not item.text.strip():
        raise ApiError(422, "empty_text", "text is blank", field=f"{field_prefix}text")
    spec = resolve_model(item.model, services.settings.default_model, services.embedders.served_models(),
                         services.model_paths, field=f"{field_prefix}model")
    return EmbedSegment(asset_id=item.asset_id, segment_id=item.segment_id, text=item.text, model=spec.name,
                        model_version=spec.version)


async def _live_versions(services: Services, org_id: str,
                         segments: list[EmbedSegment]) -> tuple[list[EmbedSegment], dict[str, str]]:
    """The segments with the version of the tenant's live collection of their model (a migrated tenant
    writes, and is answered, in its new version), and each named model's live-collection model (another
    model after a cross-model migration); unchanged without a route resolver."""
    if services.routes is None:
        return segments, {s.model: s.model for s in segments}
    versions: dict[str, str] = {}
    live_models: dict[str, str] = {}
    for model in {s.model for s in segments}:
        live_models[model], versions[model] = await live_collection(services, org_id, model, "")
    return [replace(s, model_version=versions[s.model]) for s in segments], live_models


async def live_collection(services: Services, org_id: str, model: str, version: str) -> tuple[str, str]:
    """(model, version) of the tenant's live collection for writes naming ``model``; 503 when a collection
    its writes reach needs a model this deployment does not serve. Without a route resolver: ``model`` and
    ``version`` as given."""
    if services.routes is None:
        return model, version
    route = await services.routes.aresolve(org_id, model)
    served = services.embedders.served_models()
    # A write reaches every write target, each embedded by its own model: refuse now, not in the relay.
    missing = [m for m in route.write_models if m not in served and m != MOCK_MODEL]
    if missing:
        raise ApiError(503, "live_model_not_served",
                       f"this tenant's {model!r} writes go to {', '.join(route.write_targets)}, which need "
                       f"{', '.join(missing)}; this deployment serves {', '.join(served)}: deploy it or roll "
                       f"the tenant back", field="model", headers={"Retry-After": "30"})
    return parse_collection_name(route.live)


async def _create(services: Services, org_id: str, sub: str, segments: list[EmbedSegment],
                  idempotency_key: str | None, body_hash: str) -> list[CreatedJob]:
    db = services.require_db()

    def work() -> list[CreatedJob]:
        with db.sessions() as session:
            return JobRepository(session).create_embed_jobs(org_id, sub, segments, idempotency_key,
                                                            request_hash=body_hash)
    try:
        return await asyncio.to_thread(work)
    except IdempotencyConflictError:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was used with a different request body", field="Idempotency-Key") from None


def _accepted(org_id: str, segment: EmbedSegment, created: CreatedJob,
              embedding_model: str | None = None) -> EmbedJobAccepted:
    """``embedding_model``: the model of the live collection (point IDs are per collection model and version)."""
    embedding_model = embedding_model or segment.model
    return EmbedJobAccepted(
        job_id=created.job.id, status=str(created.job.status), created=created.created, asset_id=segment.asset_id,
        segment_id=segment.segment_id, model=segment.model, model_version=segment.model_version,
        embedding_model=embedding_model,
        point_id=point_id_for(org_id, segment.asset_id, segment.segment_id, embedding_model, segment.model_version))


@router.post("/embed", status_code=202, response_model=EmbedJobAccepted, responses=ERROR_RESPONSES)
async def embed(body: EmbedRequest, services: ServicesDep, principal: PrincipalDep,
                idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Accept one segment: the job, its first event and its outbox row are written in one transaction."""
    check_idempotency_key(idempotency_key)
    await require_real_embeddings(services)
    found, live_models = await _live_versions(services, principal.org_id, [_segment(services, body, "")])
    segment = found[0]
    created = await _create(services, principal.org_id, principal.sub, [segment], idempotency_key,
                            request_hash(body.model_dump()))
    accepted = _accepted(principal.org_id, segment, created[0], live_models[segment.model])
    return json_response(accepted.model_dump(), 202)


@router.post("/embed:batch", status_code=202, response_model=EmbedBatchAccepted, responses=ERROR_RESPONSES)
async def embed_batch(body: EmbedBatchRequest, services: ServicesDep, principal: PrincipalDep,
                      idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Accept up to ``max_batch_segments`` segments: one job each, all in one transaction."""
    check_idempotency_key(idempotency_key)
    limit = services.settings.max_batch_segments
    if len(body.segments) > limit:
        raise ApiError(422, "too_many_segments", f"{len(body.segments)} segments; at most {limit} per request",
                       field="segments")
    await require_real_embeddings(services)
    segments = [_segment(services, item, f"segments.{i}.") for i, item in enumerate(body.segments)]
    segments, live_models = await _live_versions(services, principal.org_id, segments)
    created = await _create(services, principal.org_id, principal.sub, segments, idempotency_key,
                            request_hash(body.model_dump()))
    jobs = [_accepted(principal.org_id, s, c, live_models[s.model]) for s, c in zip(segments, created, strict=True)]
    return json_response(EmbedBatchAccepted(jobs=jobs).model_dump(), 202)


@router.post("/mock", status_code=202, response_model=EmbedJobAccepted, responses=ERROR_RESPONSES, deprecated=True)
async def mock(body: MockEmbedRequest, services: ServicesDep, principal: PrincipalDep,
               idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """DEPRECATED: use ``POST /vectors/embed``. Stores a deterministic random unit vector (model ``mock``).

    Kept for the mock → real migration; it keeps working when real embeddings are switched off.
    """
    check_idempotency_key(idempotency_key)
    text = body.text or ""
    if len(text) > services.settings.max_text_chars:
        raise ApiError(422, "text_too_long", f"text has {len(text)} characters", field="text")
    segment = EmbedSegment(asset_id=body.asset_id, segment_id=body.segment_id, text=text, model=MOCK_MODEL,
                           model_version=MOCK_VERSION)
    created = await _create(services, principal.org_id, principal.sub, [segment], idempotency_key,
                            request_hash(body.model_dump()))
    headers = {"Deprecation": "true", "Sunset": MOCK_SUNSET,
               "Link": '</vectors/embed>; rel="successor-version"'}
    return json_response(_accepted(principal.org_id, segment, created[0]).model_dump(), 202, headers)
