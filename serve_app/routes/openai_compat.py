"""OpenAI-compatible routes: the official ``openai`` client works against these unchanged."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter
from starlette.responses import Response

from deployments.registry import MODELS
from serve_app.deps import EmbeddingsPrincipalDep, ServicesDep
from serve_app.errors import ApiError, json_response
from serve_app.models_check import resolve_model
from serve_app.schemas import EmbeddingsRequest, EmbeddingsResponse, ModelCard, ModelList
from serve_app.settings import Settings
from serve_app.switches import require_real_embeddings

router = APIRouter(tags=["openai"])

ERROR_RESPONSES: dict[int | str, dict[str, str]] = {
    400: {"description": "Invalid request"},
    401: {"description": "Missing or invalid token"},
    404: {"description": "Unknown model"},
    413: {"description": "Payload too large"},
    422: {"description": "Invalid field"},
    429: {"description": "Tenant rate limit (Retry-After)"},
    503: {"description": "Overloaded or switched off (Retry-After)"},
}


def checked_inputs(settings: Settings, inputs: str | list[str], field: str) -> list[str]:
    """The texts of an embedding request (one string or a list), within the request limits every embedding
    route shares (items per request, characters per text, no blank text); 422 naming ``field`` otherwise."""
    texts = [inputs] if isinstance(inputs, str) else inputs
    if len(texts) > settings.max_items_per_request:
        raise ApiError(422, "too_many_items",
                       f"{field} has {len(texts)} items; at most {settings.max_items_per_request} are allowed",
                       field=field)
    for index, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            raise ApiError(422, "text_too_long",
                           f"{field}[{index}] has {len(text)} characters; at most {settings.max_text_chars}",
                           field=f"{field}.{index}")
        if not text.strip():
            raise ApiError(422, "empty_text", f"{field}[{index}] is blank", field=f"{field}.{index}")
    return texts


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERROR_RESPONSES)
async def create_embeddings(
    body: EmbeddingsRequest, services: ServicesDep, principal: EmbeddingsPrincipalDep
) -> Response:
    """Embed a string or a list of strings, as OpenAI's embeddings API does."""
    settings = services.settings
    await require_real_embeddings(services)
    texts = checked_inputs(settings, body.input, "input")
    spec = resolve_model(body.model, settings.default_model, services.embedders.served_models(),
                         services.model_paths)
    if body.dimensions is not None and body.dimensions != spec.dimension:
        raise ApiError(422, "dimensions_mismatch",
                       f"model {spec.name!r} produces {spec.dimension} dimensions; got dimensions={body.dimensions}",
                       field="dimensions")

    output = await services.embedders.embed(spec.name, texts, tenant=principal.org_id)
    vectors = output.vectors
    if body.encoding_format == "base64":
        little_endian = vectors.astype("<f4", copy=False)
        encoded: list[str] | np.ndarray = [base64.b64encode(row.tobytes()).decode("ascii") for row in little_endian]
    else:
        encoded = vectors
    tokens = int(sum(output.token_counts))
    truncated = [i for i, cut in enumerate(output.truncated) if cut]
    content = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encoded[i]} for i in range(len(texts))],
        "model": spec.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "truncated_inputs": truncated,
    }
    headers = {"X-Heimdex-Truncated-Inputs": str(len(truncated))}
    return json_response(content, headers=headers)


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(services: ServicesDep, _principal: EmbeddingsPrincipalDep) -> ModelList:
    """Every registered model, whether its weights are installed and whether this deployment serves it."""
    served = set(services.embedders.served_models())
    return ModelList(data=[
        ModelCard(id=spec.name, version=spec.version, dimension=spec.dimension, max_tokens=spec.max_tokens,
                  normalized=spec.normalize, installed=spec.is_installed(services.model_paths),
                  served=spec.name in served, backends=list(spec.backends))
        for spec in MODELS.values()
    ])
