"""The payload of a stored segment, and its point: the one shape the relay and the bulk sink both write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deployments.vector_store import bm25
from deployments.vector_store.base import PointRecord, Vector

# Characters of the text kept in ``text_preview`` (what search results show).
TEXT_PREVIEW_CHARS = 200


# A document chunk's place in its document (POST /vectors/documents): its point carries these too.
CHUNK_FIELDS = ("doc_version", "chunk_index", "char_start", "char_end")


def segment_payload(org_id: str, asset_id: str, segment_id: str, model: str, model_version: str, text: str,
                    created_at: str, job_id: str | None = None,
                    chunk: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Payload of one segment's point; ``job_id`` names the write-path job that wrote it (bulk: none);
    ``chunk`` (a document chunk's doc_version, chunk_index, char_start, char_end) adds those fields."""
    payload: dict[str, Any] = {
        "org_id": org_id, "asset_id": asset_id, "segment_id": segment_id, "model": model,
        "model_version": model_version, "text": text, "text_preview": text[:TEXT_PREVIEW_CHARS],
        "created_at": created_at,
    }
    if job_id is not None:
        payload["job_id"] = job_id
    if chunk:
        payload.update({name: chunk[name] for name in CHUNK_FIELDS if chunk.get(name) is not None})
    return payload


def chunk_of(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """A stored point's document-chunk fields (for ``segment_payload(chunk=...)`` when a re-embed rewrites the
    point elsewhere), or None for a segment that is no document chunk."""
    chunk = {name: payload[name] for name in CHUNK_FIELDS if payload.get(name) is not None}
    return chunk or None


def segment_point(point_id: str, vector: Vector, payload: dict[str, Any]) -> PointRecord:
    """A segment's point: the model's vector beside the BM25 terms of the payload's ``text`` (sparse search)."""
    return PointRecord(point_id, vector, payload, bm25.encode_document(str(payload.get("text") or "")))
