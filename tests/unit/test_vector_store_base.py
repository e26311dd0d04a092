"""Pure helpers of the vector-store layer and the server backend's retry and batching rules."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

from deployments.vector_store import (
    PointRecord,
    StoreUnavailableError,
    TenantMismatchError,
    alias_name,
    collection_name,
)
from deployments.vector_store import server as server_mod
from deployments.vector_store.base import as_float_list, check_tenant, parse_collection_name, tenant_payload
from deployments.vector_store.server import ServerBackend


def _http_error(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status_code=status, reason_phrase="x", content=b"", headers=httpx.Headers())


def test_names() -> None:
    assert collection_name("minilm-l6-v2", "v1") == "embeddings__minilm-l6-v2__v1"
    assert alias_name("minilm-l6-v2") == "embeddings__minilm-l6-v2"


def test_tenant_payload_forces_and_validates_org() -> None:
    assert tenant_payload("org-a", {"asset_id": "x"}) == {"asset_id": "x", "org_id": "org-a"}
    assert tenant_payload("org-a", {"org_id": "org-a"}) == {"org_id": "org-a"}
    with pytest.raises(TenantMismatchError):
        tenant_payload("org-a", {"org_id": "org-b"})
    with pytest.raises(ValueError):
        check_tenant("")


def test_vector_and_collection_name_parsing() -> None:
    assert as_float_list(np.array([[1, 2]], dtype=np.float64)) == [1.0, 2.0]
    assert parse_collection_name("embeddings__minilm-l6-v2__v12") == ("minilm-l6-v2", "v12")
    assert parse_collection_name(collection_name("a__b", "v1")) == ("a__b", "v1")
    for bad in ("embeddings__minilm", "other__m__v1", "embeddings____v1"):
        with pytest.raises(ValueError, match="not a collection name"):
            parse_collection_name(bad)


def test_server_retries_transient_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    # The server module's own view of time, not the global time.sleep: another test's daemon thread (the log
    # flusher of test_log_flush.py sleeps in a loop forever) would otherwise land its sleeps in this list.
    monkeypatch.setattr(server_mod, "time", SimpleNamespace(sleep=sleeps.append, monotonic=time.monotonic))
    backend = ServerBackend(QdrantClient(":memory:"))
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise _http_error(503) if calls["n"] == 1 else httpx.ConnectError("down")
        return "ok"

    assert backend._call(flaky) == "ok"
    assert calls["n"] == 3 and sleeps == [0.2, 0.4]

    def always_429() -> None:
        raise _http_error(429)

    with pytest.raises(StoreUnavailableError):
        backend._call(always_429)

    def bad_request() -> None:
        calls["n"] += 1
        raise _http_error(400)

    calls["n"] = 0
    with pytest.raises(UnexpectedResponse):
        backend._call(bad_request)
    assert calls["n"] == 1, "4xx other than 429 is not retried"


def test_server_upserts_in_batches_of_128() -> None:
    backend = ServerBackend(QdrantClient(":memory:"))
    backend.ensure_collection("toy", "v1", 4)
    sizes: list[int] = []
    original = backend.client.upsert

    def spy(*args: Any, **kwargs: Any) -> Any:
        sizes.append(len(kwargs["points"]))
        assert kwargs["wait"] is True
        return original(*args, **kwargs)

    backend.client.upsert = spy  # type: ignore[method-assign]
    points = [PointRecord(str(uuid.uuid4()), [1.0, 0.0, float(i), 1.0], {}) for i in range(300)]
    assert backend.upsert(alias_name("toy"), "org-a", points) == 300
    assert sizes == [128, 128, 44]
    assert backend.count(alias_name("toy"), "org-a") == 300
