"""``POST /vectors/documents``: a whole document in, one tracked embed job per token-aware chunk.

The model's own tokenizer cuts the document (serve_app/chunking.py) on a worker thread, then one
transaction records the document, its chunk jobs and outbox rows, and the cleanup of the version it
replaces (serve_app/db/documents.py says why no stale chunk survives, whatever crashes). The relay
writes the chunks as it writes any segment, with their place in the document in the point payload.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import Response

from deployments.point_ids import point_id_for
from serve_app.chunking import chunk_document
from serve_app.db import ChunkSpan, DocumentConflictError, DocumentRepository, DocumentSubmission
from serve_app.db.documents import content_hash
from serve_app.deps import PrincipalDep, ServicesDep
from serve_app.errors import ApiError, json_response
from serve_app.models_check import resolve_model
from serve_app.routes.openai_compat import ERROR_RESPONSES
from serve_app.routes.vectors_write import live_collection
from serve_app.schemas import DocumentAccepted, DocumentChunkAccepted, DocumentRequest
from serve_app.services import Services
from serve_app.switches import require_real_embeddings
from serve_app.tokenization import model_tokenizer

router = APIRouter(prefix="/vectors", tags=["vectors"])

# Submissions of one asset racing each other: the loser retries this often before answering 409.
SUBMIT_ATTEMPTS = 3


@router.post("/documents", status_code=202, response_model=DocumentAccepted, responses=ERROR_RESPONSES)
async def submit_document(body: DocumentRequest, services: ServicesDep, principal: PrincipalDep) -> Response:
    """Cut ``text`` into chunks of the model's max sequence length and accept one embed job per chunk.

    The same document again creates nothing (``created: false``, the same jobs); a changed one replaces
    the previous version's chunks, none left behind once the relay ran. ``DELETE /vectors/assets/{id}``
    removes every chunk.
    """
    settings = services.settings
    await require_real_embeddings(services)
    size = len(body.text.encode("utf-8"))
    if size > settings.max_document_bytes:
        raise ApiError(422, "document_too_large",
                       f"text has {size} bytes of UTF-8; at most {settings.max_document_bytes}", field="text")
    spec = resolve_model(body.model, settings.default_model, services.embedders.served_models(),
                         services.model_paths)
    # Loads once per process, from disk.
    tokenizer = await asyncio.to_thread(model_tokenizer, spec, services.model_paths)
    window = tokenizer.window
    chunk_tokens = window if body.chunk_tokens is None else body.chunk_tokens
    if chunk_tokens > window:
        raise ApiError(422, "chunk_tokens_too_large",
                       f"chunk_tokens={chunk_tokens}; model {spec.name!r} takes at most {window} tokens of text "
                       f"({spec.max_tokens} minus {tokenizer.special_tokens} special tokens)", field="chunk_tokens")
    overlap = min(settings.document_overlap_tokens, chunk_tokens // 2) if body.overlap_tokens is None \
        else body.overlap_tokens
    if overlap > chunk_tokens // 2:
        raise ApiError(422, "overlap_too_large",
                       f"overlap_tokens={overlap}; at most half of chunk_tokens ({chunk_tokens // 2})",
                       field="overlap_tokens")
    chunks = await asyncio.to_thread(chunk_document, tokenizer.tokenizer, body.text, chunk_tokens, overlap)
    if not chunks:
        raise ApiError(422, "empty_text", "text holds no tokens", field="text")
    if len(chunks) > settings.max_document_chunks:
        raise ApiError(422, "too_many_chunks",
                       f"the document makes {len(chunks)} chunks of {chunk_tokens} tokens; at most "
                       f"{settings.max_document_chunks}: send a larger chunk_tokens or a shorter text",
                       field="chunk_tokens")
    live_model, version = await live_collection(services, principal.org_id, spec.name, spec.version)
    digest = content_hash(body.text, spec.name, chunk_tokens, overlap)
    submitted = await _submit(services, principal.org_id, principal.sub, body.asset_id, spec.name, version, digest,
                              chunks)
    accepted = DocumentAccepted(
        asset_id=body.asset_id, doc_version=submitted.doc_version, created=submitted.changed,
        replaced_version=submitted.replaced,
        cleanup_job_id=None if submitted.cleanup is None else submitted.cleanup.job.id,
        model=spec.name, model_version=version, embedding_model=live_model, chunk_tokens=chunk_tokens,
        overlap_tokens=overlap,
        chunks=[DocumentChunkAccepted(
            chunk_index=chunk.index, char_start=chunk.char_start, char_end=chunk.char_end,
            segment_id=segment.segment_id, job_id=job.job.id, status=str(job.job.status), created=job.created,
            point_id=point_id_for(principal.org_id, body.asset_id, segment.segment_id, live_model, version))
            for chunk, segment, job in zip(chunks, submitted.segments, submitted.jobs, strict=True)])
    return json_response(accepted.model_dump(), 202)


async def _submit(services: Services, org_id: str, sub: str, asset_id: str, model: str, version: str, digest: str,
                  chunks: list[ChunkSpan]) -> DocumentSubmission:
    db = services.require_db()

    def work() -> DocumentSubmission:
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            with db.sessions() as session:
                try:
                    return DocumentRepository(session).submit(org_id, sub, asset_id, model, version, digest, chunks)
                except DocumentConflictError:
                    if attempt == SUBMIT_ATTEMPTS:
                        raise
        raise AssertionError("unreachable")

    try:
        return await asyncio.to_thread(work)
    except DocumentConflictError:
        raise ApiError(409, "document_changed_concurrently",
                       f"asset {asset_id!r} was being changed by another request; retry", field="asset_id",
                       headers={"Retry-After": "1"}) from None


async def forget_document(services: Services, org_id: str, asset_id: str) -> None:
    """``DELETE /vectors/assets/{id}``: the asset's document (if any) has no current version any more, so a
    chunk of it still in flight deletes itself once written; sending the document again makes new chunks."""
    if services.db is None:
        return
    db = services.db

    def work() -> None:
        with db.sessions() as session:
            DocumentRepository(session).forget(org_id, asset_id)

    await asyncio.to_thread(work)
