"""Deterministic keys: job keys (dedupe identical work) and request hashes (Idempotency-Key)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def text_hash(text: str) -> str:
    """SHA-256 hex digest of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_job_key(org_id: str, job_type: str, asset_id: str, segment_id: str, model: str, text: str) -> str:
    """SHA-256 over the request's identity and its text hash: same request, same key."""
    parts = [org_id, job_type, asset_id, segment_id, model, text_hash(text)]
    return request_hash(parts)  # a JSON list: no separator inside a field can make two keys collide


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def request_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON form (sorted keys, no whitespace) of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
