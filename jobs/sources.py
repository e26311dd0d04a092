"""Where a re-embedding job reads its rows from, as a Ray Dataset of {org_id, asset_id, segment_id, text}.

Sources are named by a URI-ish string:

* ``collection:<model>`` — each tenant's live collection of the model (its route, see
  ``serve_app.db.routes``), e.g. ``collection:mock`` for the mock → real migration;
  ``collection:<model>@<version>`` names one physical collection for every tenant. Points are
  scrolled tenant by tenant through the store actor, one Ray task per tenant, page by page
  (nothing is gathered on the driver); the text comes from payload ``text``.
* ``jsonl:<path>`` / ``parquet:<path>`` — files with those four columns, local or any fsspec path,
  read with ``ray.data.read_json`` / ``ray.data.read_parquet``.

Every source also yields ``text_issue`` (empty unless the source already knows the text is unusable,
e.g. a non-string payload value); :func:`jobs.qdrant_sink.prepare_batch` turns it into ``error``.
Nothing here starts Ray or touches the store at import time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from deployments.vector_store import StoreConfig, VectorStore, open_store
from deployments.vector_store.payloads import chunk_of
from jobs.texts import validate_text

if TYPE_CHECKING:
    from ray.data import Dataset

SourceKind = Literal["collection", "jsonl", "parquet"]
ROW_COLUMNS = ("org_id", "asset_id", "segment_id", "text")
SCROLL_PAGE = 512


class SourceError(ValueError):
    """A source string that cannot be parsed or resolved."""


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    # collection: the model and optional version; files: the path.
    model: str | None = None
    version: str | None = None
    path: str | None = None

    def describe(self) -> str:
        if self.kind == "collection":
            return f"collection:{self.model}" + (f"@{self.version}" if self.version else "")
        return f"{self.kind}:{self.path}"


def parse_source(source: str) -> SourceSpec:
    """``collection:<model>[@<version>]``, ``jsonl:<path>`` or ``parquet:<path>``."""
    kind, sep, rest = source.partition(":")
    if not sep or not rest:
        raise SourceError(f"source {source!r} must look like collection:<model>, jsonl:<path> or parquet:<path>")
    if kind == "collection":
        model, _, version = rest.partition("@")
        if not model:
            raise SourceError(f"source {source!r} names no model")
        return SourceSpec("collection", model=model, version=version or None)
    if kind in ("jsonl", "parquet"):
        return SourceSpec(kind, path=rest)  # type: ignore[arg-type]
    raise SourceError(f"unknown source kind {kind!r}; use collection, jsonl or parquet")


def scroll_tenant_pages(
    batch: dict[str, Any], store_config: StoreConfig, collections: dict[str, str], page_size: int = SCROLL_PAGE
) -> Iterator[pd.DataFrame]:
    """Ray Data generator UDF: for each tenant in ``batch``, yield its points (in ``collections[tenant]``,
    the tenant's own source collection) page by page."""
    store = open_store(store_config)
    for tenant in [str(t) for t in batch["org_id"]]:
        collection = collections[tenant]
        offset: str | None = None
        while True:
            points, offset = store.scroll(collection, tenant, page_size, offset, False)
            if points:
                rows: dict[str, list[Any]] = {c: [] for c in (*ROW_COLUMNS, "text_issue", "created_at", "chunk")}
                for point in points:
                    payload = point.payload or {}
                    text, issue = validate_text(payload.get("text"))
                    rows["org_id"].append(tenant)
                    rows["asset_id"].append(str(payload.get("asset_id", "")))
                    rows["segment_id"].append(str(payload.get("segment_id", "")))
                    rows["text"].append(text)
                    rows["text_issue"].append(issue)
                    created = payload.get("created_at")
                    rows["created_at"].append(created if isinstance(created, str) else "")
                    chunk = chunk_of(payload)  # a document chunk keeps its place in the document
                    rows["chunk"].append(json.dumps(chunk) if chunk else "")
                yield pd.DataFrame(rows)
            if offset is None:
                break


def model_tenants(store: VectorStore, model: str) -> set[str]:
    """Tenants holding points in any version of ``model``."""
    from deployments.vector_store.base import parse_collection_name

    found: set[str] = set()
    for name in store.list_collections():
        try:
            if parse_collection_name(name)[0] != model:
                continue
        except ValueError:
            continue
        found.update(store.tenants(name))
    return found


def count_collections(store: VectorStore, collections: dict[str, str]) -> dict[str, int]:
    """Each tenant's point count in its own collection (0 where that collection does not exist yet: a
    first import into a store the app never opened)."""
    existing = set(store.list_collections())
    return {t: int(store.count(c, t)) if c in existing else 0
            for t, c in collections.items()}


def _add_issue_column(batch: pd.DataFrame) -> pd.DataFrame:
    if "text_issue" not in batch.columns:
        batch["text_issue"] = ""
    if "created_at" not in batch.columns:
        batch["created_at"] = ""
    if "chunk" not in batch.columns:
        batch["chunk"] = ""
    return batch


def _keep_orgs(batch: pd.DataFrame, orgs: list[str]) -> pd.DataFrame:
    return batch[batch["org_id"].astype(str).isin(orgs)]


def build_dataset(
    spec: SourceSpec,
    store_config: StoreConfig | None = None,
    orgs: list[str] | None = None,
    collections: dict[str, str] | None = None,
    task_cpus: float = 0.05,
) -> Dataset:
    """The source as a Ray Dataset with columns org_id, asset_id, segment_id, text, text_issue, created_at.

    For a collection source ``collections`` maps each tenant to scroll to its source collection (a
    tenant's live collection differs from another's during migrations). Every task asks ``task_cpus``.
    """
    import ray

    if spec.kind == "collection":
        if store_config is None or collections is None:
            raise SourceError("a collection source needs the store actor and each tenant's collection")
        tenants = sorted(collections)
        seeds = ray.data.from_items([{"org_id": t} for t in tenants], override_num_blocks=max(1, len(tenants)))
        scroll: Any = scroll_tenant_pages
        return seeds.map_batches(
            scroll,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={"store_config": store_config, "collections": collections},
            num_cpus=task_cpus,
        )
    assert spec.path is not None
    remote = {"num_cpus": task_cpus}
    ds = (ray.data.read_json(spec.path, lines=True, ray_remote_args=remote) if spec.kind == "jsonl"
          else ray.data.read_parquet(spec.path, ray_remote_args=remote))
    missing = [c for c in ROW_COLUMNS if c not in (ds.columns() or [])]
    if missing:
        raise SourceError(f"source {spec.describe()} lacks column(s) {', '.join(missing)}")
    add_issue: Any = _add_issue_column
    keep_orgs: Any = _keep_orgs
    ds = ds.map_batches(add_issue, batch_format="pandas", num_cpus=task_cpus)
    if orgs:
        ds = ds.map_batches(keep_orgs, batch_format="pandas", fn_kwargs={"orgs": list(orgs)}, num_cpus=task_cpus)
    return ds
