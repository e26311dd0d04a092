"""Semantic search over the tenant's vectors, asset deletion and per-tenant stats."""

from __future__ import annotations

import asyncio
import math

from fastapi import APIRouter, Path

from deployments.mock_vectors import MOCK_MODEL
from deployments.registry import get_model
from deployments.vector_store import parse_collection_name
from deployments.vector_store.base import SearchMode, SparseIndexMissingError
from serve_app.deps import PrincipalDep, ServicesDep
from serve_app.errors import ApiError
from serve_app.models_check import resolve_model
from serve_app.routes.openai_compat import ERROR_RESPONSES
from serve_app.routes.vectors_documents import forget_document
from serve_app.schemas import (
    DeleteAssetResponse,
    SearchRequest,
    SearchResponse,
    SearchResult,
    TenantRouteView,
    VectorStats,
    chunk_fields,
)
from serve_app.switches import real_embeddings_enabled, require_real_embeddings

router = APIRouter(prefix="/vectors", tags=["vectors"])

SEARCH_PAYLOAD_FIELDS = ["asset_id", "segment_id", "text_preview", "chunk_index", "char_start", "char_end"]


def _search_mode(body: SearchRequest, default: SearchMode) -> SearchMode:
    """The request's mode; omitted: dense for a vector or a cosine threshold (what they always meant), else
    the deployment's default."""
    if body.mode is not None:
        if body.mode != "dense" and body.query is None:
            raise ApiError(422, "mode_needs_query", f"mode {body.mode!r} searches the segment text: give 'query'",
                           field="mode")
        if body.mode != "dense" and body.score_threshold is not None:
            raise ApiError(422, "score_threshold_needs_dense", "score_threshold is a cosine similarity: it applies "
                           f"to mode 'dense' only, not {body.mode!r}", field="score_threshold")
        return body.mode
    if body.vector is not None or body.score_threshold is not None:
        return "dense"
    return default


def _sparse_missing(exc: BaseException) -> SparseIndexMissingError | None:
    """The store's SparseIndexMissingError, also when it comes wrapped by the store actor's RayTaskError."""
    for candidate in (exc, getattr(exc, "cause", None)):
        if isinstance(candidate, SparseIndexMissingError):
            return candidate
    return None


def _model_of(collection: str) -> str:
    try:
        return parse_collection_name(collection)[0]
    except ValueError:
        return collection


@router.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES)
async def search(body: SearchRequest, services: ServicesDep, principal: PrincipalDep) -> SearchResponse:
    """Embed ``query`` (or take ``vector``) and return the tenant's best segments: nearest (dense), best BM25
    match of the text (sparse), or both fused by reciprocal rank (hybrid)."""
    if (body.query is None) == (body.vector is None):
        raise ApiError(422, "query_or_vector", "give exactly one of 'query' and 'vector'",
                       field="query" if body.query is None else "vector")
    if body.query is not None and not body.query.strip():
        raise ApiError(422, "empty_query", "query is blank", field="query")
    mode = _search_mode(body, services.settings.search_mode)
    spec = resolve_model(body.model, services.settings.default_model, services.embedders.served_models(),
                         services.model_paths)
    # The tenant's route for the model it names; the query is embedded with the model its LIVE collection was
    # built with (another one after a cross-model migration), so the vector always fits the collection.
    route = await services.require_routes().aresolve(principal.org_id, spec.name)
    live = get_model(route.live_model) if route.live_model != spec.name else spec
    if body.vector is not None:
        if len(body.vector) != live.dimension:
            moved = "" if live is spec else f" (this tenant's {spec.name!r} route now lives in {route.live})"
            raise ApiError(422, "dimension_mismatch",
                           f"vector has {len(body.vector)} dimensions; model {live.name!r} uses {live.dimension}"
                           + moved, field="vector")
        if not all(math.isfinite(x) for x in body.vector):
            raise ApiError(422, "non_finite_vector", "vector holds NaN or infinite values", field="vector")
        vector: list[float] | None = body.vector
    elif mode == "sparse":
        vector = None  # BM25 over the text: no model call
    else:
        await require_real_embeddings(services)
        assert body.query is not None
        if live.name not in services.embedders.served_models():
            raise ApiError(503, "live_model_not_served",
                           f"this tenant's {spec.name!r} vectors live in {route.live}, embedded by {live.name!r}, "
                           f"which this deployment does not serve (served: "
                           f"{', '.join(services.embedders.served_models())}); deploy it or roll the tenant back",
                           field="model", headers={"Retry-After": "30"})
        output = await services.embedders.embed(live.name, [body.query], tenant=principal.org_id)
        vector = output.vectors[0].tolist()
    try:
        hits = await services.require_store().search(
            route.live, principal.org_id, vector, limit=body.limit, asset_id=body.asset_id,
            score_threshold=body.score_threshold, with_payload=SEARCH_PAYLOAD_FIELDS, mode=mode, text=body.query)
    except Exception as exc:
        missing = _sparse_missing(exc)
        if missing is None:
            raise
        raise ApiError(409, "sparse_index_missing",
                       f"this tenant's {spec.name!r} vectors live in {missing.collection}, created before hybrid "
                       f"retrieval: it holds no BM25 vectors, so mode {mode!r} cannot search it. Search with mode "
                       f"'dense', or re-embed it into a new version, which carries both (`heimdex reembed --source "
                       f"collection:{live.name} --model {live.name}`, or POST /jobs/reembed)", field="mode") from exc
    return SearchResponse(
        results=[SearchResult(point_id=h.point_id, score=h.score, asset_id=str(h.payload.get("asset_id", "")),
                              segment_id=str(h.payload.get("segment_id", "")),
                              text_preview=str(h.payload.get("text_preview", "")), **chunk_fields(h.payload))
                 for h in hits],
        query=body.query, limit=body.limit, mode=mode, model=spec.name, embedding_model=live.name)


@router.delete("/assets/{asset_id}", response_model=DeleteAssetResponse, responses=ERROR_RESPONSES)
async def delete_asset(
    services: ServicesDep, principal: PrincipalDep,
    asset_id: str = Path(..., min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$"),
) -> DeleteAssetResponse:
    """Delete this tenant's points of ``asset_id`` in every collection, every model and version (other
    tenants untouched): a rollback or a migration's target can never bring a deleted asset back."""
    store = services.require_store()
    await forget_document(services, principal.org_id, asset_id)  # first: chunks in flight then remove themselves
    collections = await store.list_collections()
    deleted = 0
    models: set[str] = set()
    for collection in collections:
        count = await store.delete_asset(collection, principal.org_id, asset_id)
        deleted += count
        if count:
            models.add(_model_of(collection))
    return DeleteAssetResponse(asset_id=asset_id, deleted=deleted, models=sorted(models))


@router.get("/stats", response_model=VectorStats, responses=ERROR_RESPONSES)
async def stats(services: ServicesDep, principal: PrincipalDep) -> VectorStats:
    """This tenant's point counts per model (live collection) and per collection, and each model's route:
    which collection is live and whether a migration is running or a rollback is possible."""
    store = services.require_store()
    per_collection: dict[str, int] = await store.stats(principal.org_id)
    models = sorted({*services.embedders.served_models(), MOCK_MODEL})
    routes = await asyncio.to_thread(services.require_routes().routes_of, principal.org_id, models)
    views = {model: TenantRouteView(**{**route.as_dict(), "live_points": per_collection.get(route.live, 0)})
             for model, route in routes.items()}
    return VectorStats(org_id=principal.org_id, models={m: v.live_points for m, v in views.items()},
                       collections=per_collection, routes=views,
                       real_embeddings_enabled=await real_embeddings_enabled(services))
