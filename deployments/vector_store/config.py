"""Where a process finds its vector store: the part of the settings the store layer needs.

``serve_app.settings.Settings.store_config()`` builds one; it is a plain picklable value, so Ray Data
tasks and job drivers receive it and open the store in their own process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoreConfig:
    data_dir: Path  # the embedded store lives in data_dir / "qdrant"
    qdrant_url: str | None = None  # a Qdrant server: every process talks to it directly
    qdrant_api_key: str | None = None
    actor_name: str = "heimdex-vector-store"  # the Ray actor that owns the embedded store
    optimize_after_writes: int = 2000

    @property
    def embedded(self) -> bool:
        return not self.qdrant_url
