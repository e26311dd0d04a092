"""Hugging Face text-embeddings-inference (TEI) compatible routes: a TEI client works against these unchanged.

``POST /embed``, ``POST /tokenize`` and ``GET /info`` take and answer TEI's shapes. Auth, tenant rate limits,
body limits, the real-embeddings switch and the request limits are those of ``/v1/embeddings`` (the same
dependencies and :func:`~serve_app.routes.openai_compat.checked_inputs`). Errors these routes raise come in
TEI's body, ``{"error": "<message>", "error_type": "Validation"}``, which TEI clients parse, with Heimdex's
``code`` and ``field`` added; an input longer than the model's max length with ``truncate`` off is TEI's 413.
Refusals made before a route runs (body too large, replica overloaded) keep the API's usual body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from importlib import metadata
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from deployments.backends import l2_normalize
from deployments.backends.base import DEFAULT_TOKEN_BUDGET
from deployments.model_paths import ModelPaths
from deployments.registry import ModelSpec
from serve_app.deps import EmbeddingsPrincipalDep, ServicesDep
from serve_app.errors import ApiError, json_response, validation_error_body
from serve_app.models_check import resolve_model
from serve_app.routes.openai_compat import ERROR_RESPONSES, checked_inputs
from serve_app.schemas import (
    TeiEmbeddingModel,
    TeiEmbedRequest,
    TeiInfo,
    TeiModelType,
    TeiToken,
    TeiTokenizeRequest,
)
from serve_app.switches import require_real_embeddings
from serve_app.tokenization import ModelTokenizer, model_tokenizer

# TEI's error_type per status (its ErrorType: Validation 413, Tokenizer 422, Overloaded 429, Unhealthy 503, ...).
_ERROR_TYPES = {401: "Unauthorized", 403: "Unauthorized", 429: "Overloaded", 503: "Overloaded"}
_DTYPES = {"onnx-fp32": "float32", "onnx-int8": "int8", "torch": "float32"}

TEI_ERROR_RESPONSES: dict[int | str, dict[str, str]] = {
    **ERROR_RESPONSES, 413: {"description": "Input longer than max_input_length with truncate off, or body too large"}}


def tei_error(status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """An API error body (``{"error": {...}}``) in TEI's shape, keeping its code and field."""
    error_type = _ERROR_TYPES.get(status, "Backend" if status >= 500 else "Validation")
    body = {"error": error["message"], "error_type": error_type, "code": error["code"], "field": error["field"]}
    return json_response(body, status, headers)


class TeiRoute(APIRoute):
    """A route whose ApiErrors and validation errors answer in TEI's error body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def tei_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return tei_error(exc.status_code, exc.body()["error"], exc.headers)
            except RequestValidationError as exc:
                status, body = validation_error_body(exc)
                return tei_error(status, body["error"])

        return tei_handler


router = APIRouter(tags=["tei"], route_class=TeiRoute)


async def _tokenizer(spec: ModelSpec, paths: ModelPaths) -> ModelTokenizer:
    return await asyncio.to_thread(model_tokenizer, spec, paths)  # reads tokenizer.json once per process


def _prompted(tokenizer: ModelTokenizer, prompt_name: str | None, texts: list[str]) -> list[str]:
    try:
        prompt = tokenizer.prompt(prompt_name)
    except KeyError:
        known = ", ".join(sorted(tokenizer.prompts)) or "none"
        raise ApiError(422, "unknown_prompt_name",
                       f"prompt_name {prompt_name!r} is not a prompt of model {tokenizer.spec.name!r} (its prompts: "
                       f"{known})", field="prompt_name") from None
    return [prompt + text for text in texts] if prompt else texts


def _keep_tail(tokenizer: ModelTokenizer, texts: list[str]) -> list[str]:
    """Left truncation: each text longer than the model takes loses its head, cut where a word starts."""
    out = []
    for text, encoding in zip(texts, tokenizer.encode(texts), strict=True):
        n = len(encoding.ids)
        if n <= tokenizer.window:
            out.append(text)
            continue
        first = n - tokenizer.window
        words = encoding.word_ids
        while first < n - 1 and words[first] is not None and words[first] == words[first - 1]:
            first += 1  # a word cut in two would tokenize differently: start at the next whole word
        out.append(text[encoding.offsets[first][0]:])
    return out


def _scale(spec: ModelSpec, vectors: Any, norms: Any, normalize: bool) -> Any:
    """The vectors as asked: unit length (normalize) or the raw mean-pooled ones."""
    if spec.normalize and not normalize:
        if norms is None:
            raise ApiError(503, "norms_unavailable", "this Embedder does not report raw vector norms; redeploy it",
                           field="normalize", headers={"Retry-After": "30"})
        return vectors * np.asarray(norms, dtype=np.float32)[:, None]
    return l2_normalize(vectors) if normalize and not spec.normalize else vectors


@router.post("/embed", response_model=list[list[float]], responses=TEI_ERROR_RESPONSES)
async def embed(body: TeiEmbedRequest, services: ServicesDep, principal: EmbeddingsPrincipalDep) -> Response:
    """TEI's ``/embed``: a JSON array of vectors, one per input, in input order."""
    settings = services.settings
    await require_real_embeddings(services)
    texts = checked_inputs(settings, body.inputs, "inputs")
    spec = resolve_model(body.model, settings.default_model, services.embedders.served_models(),
                         services.model_paths)
    left = bool(body.truncate) and body.truncation_direction.lower() == "left"
    if body.prompt_name is not None or left:
        tokenizer = await _tokenizer(spec, services.model_paths)
        texts = _prompted(tokenizer, body.prompt_name, texts)
        if left:
            texts = await asyncio.to_thread(_keep_tail, tokenizer, texts)
    output = await services.embedders.embed(spec.name, texts, tenant=principal.org_id)
    if not body.truncate and any(output.truncated):
        index = output.truncated.index(True)
        tokenizer = await _tokenizer(spec, services.model_paths)
        given = len((await asyncio.to_thread(tokenizer.encode, [texts[index]], True))[0].ids)
        raise ApiError(413, "input_too_long",
                       f"`inputs` must have less than {spec.max_tokens} tokens. Given: {given} (inputs[{index}]); "
                       f"send truncate=true to cut it", field=f"inputs.{index}")
    return json_response(_scale(spec, output.vectors, output.norms, body.normalize))


@router.post("/tokenize", response_model=list[list[TeiToken]], responses=TEI_ERROR_RESPONSES)
async def tokenize(body: TeiTokenizeRequest, services: ServicesDep, _principal: EmbeddingsPrincipalDep) -> Response:
    """TEI's ``/tokenize``: the model's tokens of each input with character offsets (null for special tokens)."""
    texts = checked_inputs(services.settings, body.inputs, "inputs")
    spec = resolve_model(body.model, services.settings.default_model, services.embedders.served_models(),
                         services.model_paths)
    tokenizer = await _tokenizer(spec, services.model_paths)
    texts = _prompted(tokenizer, body.prompt_name, texts)
    encodings = await asyncio.to_thread(tokenizer.encode, texts, body.add_special_tokens)
    return json_response([
        [{"id": token_id, "text": token, "special": True, "start": None, "stop": None} if special else
         {"id": token_id, "text": text[start:stop], "special": False, "start": start, "stop": stop}
         for token_id, token, special, (start, stop) in zip(
             e.ids, e.tokens, e.special_tokens_mask, e.offsets, strict=True)]
        for text, e in zip(texts, encodings, strict=True)])


@router.get("/info", response_model=TeiInfo, responses=TEI_ERROR_RESPONSES)
async def info(services: ServicesDep, _principal: EmbeddingsPrincipalDep,
               model: str | None = Query(None, description="Heimdex extension: a registered model.")) -> TeiInfo:
    """TEI's ``/info`` for the default model (or ``model``)."""
    settings = services.settings
    spec = resolve_model(model, settings.default_model, services.embedders.served_models(),
                         services.model_paths)
    tokenizer = await _tokenizer(spec, services.model_paths)
    backend = str((await services.embedders.info(spec.name)).get("backend", ""))
    return TeiInfo(
        model_id=spec.name, model_sha=None, model_dtype=_DTYPES.get(backend, "float32"),
        model_type=TeiModelType(embedding=TeiEmbeddingModel(pooling=tokenizer.pooling)),
        max_concurrent_requests=settings.max_in_flight, max_input_length=spec.max_tokens,
        max_batch_tokens=DEFAULT_TOKEN_BUDGET, max_batch_requests=None,
        max_client_batch_size=settings.max_items_per_request, auto_truncate=False, tokenization_workers=1,
        version=_version())


def _version() -> str:
    try:
        return metadata.version("heimdex")
    except metadata.PackageNotFoundError:
        return "0.0.0"

