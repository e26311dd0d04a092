"""The seed's mock embeddings: deterministic random unit vectors seeded by (org, asset, segment).

Kept (deprecated) so a mock → real migration can be exercised end to end: ``POST /vectors/mock``
writes these under model ``mock``, and ``jobs/reembed.py`` re-embeds them with a real model.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

MOCK_MODEL = "mock"
MOCK_VERSION = "v1"
MOCK_DIMENSION = 384


def mock_vector(
    org_id: str, asset_id: str, segment_id: str, dimension: int = MOCK_DIMENSION
) -> npt.NDArray[np.float32]:
    seed = int.from_bytes(hashlib.sha256(f"{org_id}\x1f{asset_id}\x1f{segment_id}".encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return vector / np.float32(np.linalg.norm(vector))
