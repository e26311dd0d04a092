"""A re-embed switches a tenant only when every embeddable source row is in the target: the check on a
real (in-process) edge store, with the pipeline pass replaced by a named fake that writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deployments.model_paths import ModelPaths
from deployments.point_ids import point_id_for
from deployments.vector_store import PointRecord, StoreConfig
from deployments.vector_store.edge import EdgeBackend
from jobs import migration, reembed, sources
from serve_app.reembed_args import ReembedArgs

MODEL, ORG = "toy", "org-v"
TEXTS = {"s0": "first sentence", "s1": "second sentence", "s2": "third sentence", "s3": "   "}


@pytest.fixture
def edge(tmp_path: Path) -> Any:
    store = EdgeBackend(tmp_path / "qdrant")
    yield store
    store.close()


def seed(store: EdgeBackend, version: str, segments: list[str]) -> str:
    collection = store.ensure_collection(MODEL, version, 4)
    store.upsert(collection, ORG, [
        PointRecord(point_id_for(ORG, "a", s, MODEL, version), [1.0, 0.0, 0.0, float(i)],
                    {"asset_id": "a", "segment_id": s, "text": TEXTS[s]}) for i, s in enumerate(segments)])
    return collection


def verify(store: EdgeBackend, source: str, target: str, passes: list[Any],
           monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    def write_pass_fake(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """A named fake for the Ray Data pass: records that a catch-up was asked for, writes nothing."""
        passes.append(args[1])
        return {"per_tenant": {}, "totals": {}, "failed_examples": []}, {}

    pipeline = reembed.Pipeline(store, StoreConfig(Path(".")), target, MODEL, target.rsplit("__", 1)[1],
                                sources.parse_source(f"collection:{MODEL}"), 64, 256, False, None,
                                ModelPaths.default())
    move = migration.TenantMove(ORG, source, "migrate", source)
    monkeypatch.setattr(reembed, "_write_pass", write_pass_fake)
    return reembed._verify(pipeline, [move], {ORG: source}, {"per_tenant": {}}, ReembedArgs(model=MODEL),
                           None, None, None)


def test_missing_rows_after_the_catch_up_pass_fail_verification(edge: EdgeBackend,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    source = seed(edge, "v1", ["s0", "s1", "s2", "s3"])
    target = seed(edge, "v2", ["s0", "s1"])
    passes: list[Any] = []
    with pytest.raises(reembed.VerificationError, match="still lacks"):
        verify(edge, source, target, passes, monkeypatch)
    assert passes == [{ORG: source}], "one catch-up pass for the tenant, then the verdict"


def test_complete_target_verifies_and_extras_are_removed(edge: EdgeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    source = seed(edge, "v1", ["s0", "s1", "s2", "s3"])  # s3 is blank: not expected in the target
    target = seed(edge, "v2", ["s0", "s1", "s2", "s3"])  # s3 stands for a point deleted from the source
    passes: list[Any] = []
    report = verify(edge, source, target, passes, monkeypatch)
    assert report[ORG]["missing"] == 0 and report[ORG]["extra_removed"] == 1 and passes == []
    assert edge.count(target, ORG) == 3


def test_a_first_import_counts_a_live_collection_that_does_not_exist_yet_as_empty(edge: EdgeBackend) -> None:
    """`heimdex reembed --source jsonl:...` into a store the app never opened: the tenants' live collection
    (v1) is not there yet; the plan counts it as empty instead of failing."""
    v1 = seed(edge, "v1", ["s0", "s1"])
    missing = v1.replace("__v1", "__v9")
    counts = sources.count_collections(edge, {ORG: v1, "org-new": missing})
    assert counts == {ORG: 2, "org-new": 0}
