"""Where a process finds its vector store: the part of the settings the store layer needs.

``serve_app.settings.Settings.store_config()`` builds one; it is a plain picklable value, so Ray Data
tasks and job drivers receive it and open the store in their own process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class SearchTuning:
    """How searches trade speed for exactness and how hybrid fuses (``HEIMDEX_SEARCH_*`` settings).

    * ``exact_max_points``: a tenant (or asset) holding at most this many points is searched exactly (a full
      scan of its points, recall 1.0); above it the HNSW graph answers with beam width ``hnsw_ef``.
    * ``hnsw_ef``: HNSW beam width of approximate dense searches (Qdrant's default is the index's ef_construct).
    * ``acorn``: let Qdrant use ACORN for a filtered HNSW search when the tenant is a small share of the
      collection (the engine decides by the filter's selectivity): a plain filtered graph walk loses recall
      there (0.70 recall@10 for a tenant holding 25% of 100,000 points at ef 128, docs/retrieval.md).
    * ``prefetch_limit``: candidates each side (dense, sparse) hands to the fusion, at least the asked limit.
    * ``fusion``: how hybrid merges the two lists inside Qdrant: ``rrf`` (reciprocal rank fusion, score =
      sum of weight / (k + rank) over the (dense, sparse) lists, ``rrf_k`` / ``rrf_weights``) or ``dbsf``
      (distribution-based score fusion: each list's scores normalised by their mean +/- 3 standard
      deviations, then summed; no parameters).
    """

    exact_max_points: int = 50_000
    hnsw_ef: int = 128
    acorn: bool = True
    prefetch_limit: int = 50
    fusion: Literal["rrf", "dbsf"] = "rrf"
    # k=2 (not the customary 60) lets a first place in either list count for much more than a tenth place, and
    # the BM25 list weighs 1.2: the best measured trade-off, docs/retrieval.md.
    rrf_k: int = 2
    rrf_weights: tuple[float, float] = (1.0, 1.2)


@dataclass(frozen=True)
class StoreConfig:
    data_dir: Path  # the embedded store lives in data_dir / "qdrant"
    qdrant_url: str | None = None  # a Qdrant server: every process talks to it directly
    qdrant_api_key: str | None = None
    actor_name: str = "heimdex-vector-store"  # the Ray actor that owns the embedded store
    optimize_after_writes: int = 2000
    search: SearchTuning = field(default_factory=SearchTuning)

    @property
    def embedded(self) -> bool:
        return not self.qdrant_url
