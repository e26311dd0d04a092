"""`heimdex snapshot create|list|restore` against the session's real store actor, and `heimdex evaluate` wiring.

The CLI normally connects to the cluster `heimdex up` started; here `_local_store` is pointed at the
test session's store actor. A collection of its own keeps the restore from touching other tests' data.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from serve_app import cli
from tests.conftest import ServeApp

pytestmark = pytest.mark.serve


def test_snapshot_create_list_restore_roundtrip(serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    from deployments.vector_store import PointRecord
    from deployments.vector_store.actor import NAMESPACE
    from deployments.vector_store.proxies import actor_store
    from serve_app.settings import get_settings

    store = actor_store(ray.get_actor(get_settings().store_actor_name, namespace=NAMESPACE))
    monkeypatch.setattr(cli, "_local_store", lambda: store)
    collection = store.ensure_collection(f"opssnap{uuid.uuid4().hex[:6]}", "v1", 4)
    keep, extra = str(uuid.uuid4()), str(uuid.uuid4())
    store.upsert(collection, "org-snap", [PointRecord(keep, [1.0, 0.0, 0.0, 0.0], {"asset_id": "a"})])

    assert cli.main(["snapshot", "create", collection]) == 0
    name = capsys.readouterr().out.strip()
    assert name.startswith(collection)
    assert cli.main(["snapshot", "list"]) == 0
    assert name in capsys.readouterr().out

    store.upsert(collection, "org-snap", [PointRecord(extra, [0.0, 1.0, 0.0, 0.0], {"asset_id": "b"})])
    assert store.count(collection, "org-snap") == 2
    assert cli.main(["snapshot", "restore", name]) == 0
    assert f"restored {name}" in capsys.readouterr().out
    assert store.count(collection, "org-snap") == 1  # back to the snapshot's content


def test_evaluate_and_snapshot_parse() -> None:
    parser = cli.build_parser()
    args: Any = parser.parse_args(["evaluate", "--runs", "3"])
    assert args.func is cli.cmd_evaluate and args.runs == 3
    args = parser.parse_args(["snapshot", "restore", "x@1.tar.gz"])
    assert args.func is cli.cmd_snapshot and args.name == "x@1.tar.gz"
