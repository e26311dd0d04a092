"""Row preparation (validation, deterministic point IDs, skip-if-written) and the Qdrant Datasink.

* :func:`prepare_batch` runs before embedding: it marks rows with unusable text ``failed`` (column
  ``error`` says why), computes each row's point ID for the TARGET model version, and marks rows
  whose point already exists in the target collection ``skip`` — so a rerun re-embeds nothing that
  was written before it stopped.
* :class:`QdrantDatasink` upserts the embedded rows through the store actor in per-tenant batches
  of ``flush_size`` points (one ``upsert(wait=...)`` — so at most one flush — per batch), counts
  embedded / skipped / failed rows per tenant, and reports progress to a :class:`ProgressCounter`
  actor so the driver can publish it while the pipeline streams.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

from deployments.point_ids import point_id_for
from deployments.vector_store import PointRecord, StoreConfig, open_store
from deployments.vector_store.payloads import segment_payload, segment_point
from jobs.embed_udf import STATUS_FAILED, STATUS_SKIP, STATUS_TODO
from jobs.texts import validate_text

if TYPE_CHECKING:
    from ray.actor import ActorHandle
    from ray.data._internal.execution.interfaces import TaskContext

MAX_FAILED_EXAMPLES = 20
COUNT_KEYS = ("rows", "embedded", "skipped_existing", "failed")


def _clean_id(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def prepare_batch(
    batch: pd.DataFrame,
    store_config: StoreConfig | None,
    collection: str | None,
    model: str,
    version: str,
) -> pd.DataFrame:
    """Validate, assign point IDs, and mark rows already in ``collection`` (None: check nothing)."""
    n = len(batch)
    issues = batch["text_issue"].tolist() if "text_issue" in batch.columns else [""] * n
    created = batch["created_at"].tolist() if "created_at" in batch.columns else [""] * n
    chunks = batch["chunk"].tolist() if "chunk" in batch.columns else [""] * n
    out: dict[str, list[str]] = {c: [] for c in (
        "org_id", "asset_id", "segment_id", "text", "created_at", "chunk", "point_id", "status", "error")}
    for org, asset, segment, raw, issue, made, chunk in zip(
        batch["org_id"].tolist(), batch["asset_id"].tolist(), batch["segment_id"].tolist(),
        batch["text"].tolist(), issues, created, chunks, strict=True,
    ):
        org_id, asset_id, segment_id = _clean_id(org), _clean_id(asset), _clean_id(segment)
        text, error = validate_text(raw, _clean_id(issue))
        if not error and not (org_id and asset_id and segment_id):
            error = "missing org_id, asset_id or segment_id"
        out["org_id"].append(org_id)
        out["asset_id"].append(asset_id)
        out["segment_id"].append(segment_id)
        out["text"].append(text)
        out["created_at"].append(_clean_id(made))
        out["chunk"].append(_clean_id(chunk))
        out["point_id"].append(point_id_for(org_id, asset_id, segment_id, model, version) if not error else "")
        out["status"].append(STATUS_FAILED if error else STATUS_TODO)
        out["error"].append(error)

    if store_config is not None and collection is not None:
        store = open_store(store_config)
        by_tenant: dict[str, list[int]] = {}
        for i, status in enumerate(out["status"]):
            if status == STATUS_TODO:
                by_tenant.setdefault(out["org_id"][i], []).append(i)
        for tenant, rows in by_tenant.items():
            ids = [out["point_id"][i] for i in rows]
            existing = {p.point_id for p in store.retrieve(collection, tenant, ids, False)}
            for i in rows:
                if out["point_id"][i] in existing:
                    out["status"][i] = STATUS_SKIP
    return pd.DataFrame(out)


class ProgressCounter:
    """A tiny actor (wrap with ``ray.remote``) the sink reports to and the driver polls."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(COUNT_KEYS, 0)
        # When embedded rows first and last landed (wall clock, comparable across this host's processes).
        self.first_embedded_at: float | None = None
        self.first_embedded = 0
        self.last_embedded_at: float | None = None

    def add(self, delta: dict[str, int]) -> None:
        for key, value in delta.items():
            self.counts[key] = self.counts.get(key, 0) + int(value)
        embedded = int(delta.get("embedded", 0))
        if embedded > 0:
            now = time.time()
            if self.first_embedded_at is None:
                self.first_embedded_at, self.first_embedded = now, embedded
            self.last_embedded_at = now

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def steady_rate(self, started_at: float) -> dict[str, float | None]:
        """From ``started_at`` (wall clock) to the first embedded write (``startup_s``), then embedded
        rows/s from the first write to the last: the pipeline's throughput once it runs (actor start-up
        and model load excluded; the first write's rows excluded with them)."""
        first, last = self.first_embedded_at, self.last_embedded_at
        rows = self.counts.get("embedded", 0) - self.first_embedded
        span = None if first is None or last is None else last - first
        return {"startup_s": None if first is None else first - started_at,
                "steady_embedded_per_s": rows / span if span and span > 0 else None,
                "steady_span_s": span, "steady_rows": float(rows)}


def _new_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0)


def merge_write_returns(returns: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-tenant counts of several write tasks; keep the first failed examples."""
    per_tenant: dict[str, dict[str, int]] = {}
    examples: list[dict[str, str]] = []
    for item in returns:
        for tenant, counts in item.get("per_tenant", {}).items():
            into = per_tenant.setdefault(tenant, _new_counts())
            for key, value in counts.items():
                into[key] = into.get(key, 0) + int(value)
        examples.extend(item.get("failed_examples", [])[: max(0, MAX_FAILED_EXAMPLES - len(examples))])
    totals = _new_counts()
    for counts in per_tenant.values():
        for key in COUNT_KEYS:
            totals[key] += counts.get(key, 0)
    return {"per_tenant": dict(sorted(per_tenant.items())), "totals": totals, "failed_examples": examples}


class QdrantDatasink(Datasink[dict[str, Any]]):
    """Upserts embedded rows through the store actor; ``dry_run`` counts without writing."""

    def __init__(
        self,
        store_config: StoreConfig,
        collection: str,
        model: str,
        version: str,
        flush_size: int = 256,
        wait: bool = True,
        dry_run: bool = False,
        progress: ActorHandle | None = None,
    ) -> None:
        if not 1 <= flush_size <= 4096:
            raise ValueError("flush_size must be within 1..4096")
        self.store_config = store_config
        self.collection = collection
        self.model = model
        self.version = version
        self.flush_size = flush_size
        self.wait = wait
        self.dry_run = dry_run
        self.progress = progress
        self.summary: dict[str, Any] | None = None

    @property
    def min_rows_per_write(self) -> int | None:
        return self.flush_size

    def get_name(self) -> str:
        return "QdrantUpsert"

    def _report(self, delta: dict[str, int]) -> None:
        if self.progress is not None and any(delta.values()):
            self.progress.add.remote(delta)

    def _flush(self, tenant: str, points: list[PointRecord]) -> int:
        if not points:
            return 0
        return int(open_store(self.store_config).upsert(self.collection, tenant, points, self.wait))

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> dict[str, Any]:
        per_tenant: dict[str, dict[str, int]] = {}
        examples: list[dict[str, str]] = []
        buffers: dict[str, list[PointRecord]] = {}
        now = datetime.now(UTC).isoformat()
        for block in blocks:
            cols: dict[str, Any] = BlockAccessor.for_block(block).to_batch_format("numpy")
            n = len(cols["status"])
            vectors = cols.get("vector")
            delta = _new_counts()
            for i in range(n):
                tenant = str(cols["org_id"][i])
                counts = per_tenant.setdefault(tenant, _new_counts())
                counts["rows"] += 1
                delta["rows"] += 1
                status = str(cols["status"][i])
                if status == STATUS_SKIP:
                    counts["skipped_existing"] += 1
                    delta["skipped_existing"] += 1
                elif status == STATUS_FAILED:
                    counts["failed"] += 1
                    delta["failed"] += 1
                    if len(examples) < MAX_FAILED_EXAMPLES:
                        examples.append({
                            "org_id": tenant,
                            "asset_id": str(cols["asset_id"][i]),
                            "segment_id": str(cols["segment_id"][i]),
                            "reason": str(cols["error"][i]),
                        })
                elif self.dry_run:
                    counts["embedded"] += 1  # would embed
                    delta["embedded"] += 1
                else:
                    assert vectors is not None, "embedded rows carry a vector column"
                    made = str(cols["created_at"][i]) if "created_at" in cols else ""
                    chunk = str(cols["chunk"][i]) if "chunk" in cols else ""
                    payload = segment_payload(tenant, str(cols["asset_id"][i]), str(cols["segment_id"][i]),
                                              self.model, self.version, str(cols["text"][i]), made or now,
                                              chunk=json.loads(chunk) if chunk else None)
                    buffer = buffers.setdefault(tenant, [])
                    buffer.append(segment_point(str(cols["point_id"][i]), np.asarray(vectors[i]), payload))
                    if len(buffer) >= self.flush_size:
                        written = self._flush(tenant, buffer)
                        counts["embedded"] += written
                        delta["embedded"] += written
                        buffers[tenant] = []
            self._report(delta)
        for tenant, buffer in buffers.items():
            written = self._flush(tenant, buffer)
            per_tenant[tenant]["embedded"] += written
            self._report({"embedded": written})
        return {"per_tenant": per_tenant, "failed_examples": examples, "finished_at": time.time()}

    def on_write_complete(self, write_result: WriteResult[dict[str, Any]]) -> None:
        self.summary = merge_write_returns(write_result.write_returns)
