"""Deterministic point IDs: the same segment written by any path lands on the same point."""

from __future__ import annotations

import uuid

# Fixed namespace for Heimdex point IDs. Changing it would orphan every stored point.
POINT_NAMESPACE = uuid.UUID("6f1c1a52-3c1e-5d8e-9b5e-7a0f4e2d9c11")


def point_id_for(org_id: str, asset_id: str, segment_id: str, model: str, model_version: str) -> str:
    """uuid5 over (org, asset, segment, model, model version), as a canonical UUID string."""
    name = "\x1f".join((org_id, asset_id, segment_id, model, model_version))
    return str(uuid.uuid5(POINT_NAMESPACE, name))
