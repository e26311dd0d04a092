"""The payload of a stored segment, and its point: the one shape the relay and the bulk sink both write."""

from __future__ import annotations

from typing import Any

from deployments.vector_store import bm25
from deployments.vector_store.base import PointRecord, Vector

# Characters of the text kept in ``text_preview`` (what search results show).
TEXT_PREVIEW_CHARS = 200


def segment_payload(org_id: str, asset_id: str, segment_id: str, model: str, model_version: str, text: str,
                    created_at: str, job_id: str | None = None) -> dict[str, Any]:
    """Payload of one segment's point; ``job_id`` names the write-path job that wrote it (bulk: none)."""
    payload: dict[str, Any] = {
        "org_id": org_id, "asset_id": asset_id, "segment_id": segment_id, "model": model,
        "model_version": model_version, "text": text, "text_preview": text[:TEXT_PREVIEW_CHARS],
        "created_at": created_at,
    }
    if job_id is not None:
        payload["job_id"] = job_id
    return payload


def segment_point(point_id: str, vector: Vector, payload: dict[str, Any]) -> PointRecord:
    """A segment's point: the model's vector beside the BM25 terms of the payload's ``text`` (sparse search)."""
    return PointRecord(point_id, vector, payload, bm25.encode_document(str(payload.get("text") or "")))
