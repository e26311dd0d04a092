"""A tenant's migration as users run it, on the session's real cluster: writes before, during and after
a re-embed are all found by search; the other tenant is untouched; delete reaches every version;
rollback is instant and loses nothing; a mock → real fill is verified before its mock points may go.

The re-embed is submitted the way `heimdex reembed` submits it, with no --num-cpus and no
--to-version: the plan must fit what the Serve app leaves free on this machine.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from bench.texts import short_texts
from deployments.vector_store import collection_name
from tests.conftest import ServeApp
from tests.serve.helpers import JOB_TIMEOUT_S, auth, finished, found, heimdex, route, submit, until, wait_job, write

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"
V1 = collection_name(MODEL, "v1")


def test_migration_finds_every_write_and_spares_the_other_tenant(serve_app: ServeApp) -> None:
    from deployments.vector_store import open_store
    from serve_app.settings import Settings

    url = serve_app.url
    org, other = f"mig-{uuid.uuid4().hex[:6]}", f"mig-other-{uuid.uuid4().hex[:6]}"
    texts = iter(short_texts(40))
    before = [(f"doc-{k}", str(i), next(texts)) for k in range(3) for i in range(4)]
    during = [("during", str(i), next(texts)) for i in range(6)]
    after = [("after", str(i), next(texts)) for i in range(6)]
    theirs = [("theirs", str(i), next(texts)) for i in range(5)]
    write(url, org, before)
    write(url, other, theirs)
    other_route = route(url, other)

    submission = submit(serve_app, ["--source", f"collection:{MODEL}", "--model", MODEL, "--org", org])
    migrating = until(lambda: (r := route(url, org))["state"] == "migrating" and r, JOB_TIMEOUT_S, "migrating")
    assert migrating["live"] == V1 and migrating["pending"] not in (None, V1)
    target = migrating["pending"]
    write(url, org, during)  # accepted while the re-embed runs
    result = finished(serve_app, submission)
    assert result["switched"] == [org] and result["target_collection"] == target
    assert result["resources"]["concurrency"] >= 1 and result["reconciled"][org]["missing"] == 0

    switched = until(lambda: (r := route(url, org))["live"] == target and r, 10, "switch seen by the Gateway")
    assert switched["state"] == "switched" and switched["previous"] == V1
    write(url, org, after)
    assert found(url, org, before) == len(before)
    assert found(url, org, during) == len(during), "writes accepted during the re-embed are in the new version"
    assert found(url, org, after) == len(after), "writes after the switch are searchable at once"
    assert found(url, other, theirs) == len(theirs)
    assert route(url, other) == other_route, "another tenant's route moved"

    # The directly submitted job tracked itself under the tenant it moved.
    jobs = httpx.get(f"{url}/jobs", headers=auth(org), params={"limit": 50}, timeout=30).json()["jobs"]
    assert any(j["type"] == "reembed" and j["status"] == "succeeded" for j in jobs), jobs

    # Delete reaches every version: no rollback can bring the asset back.
    store = open_store(Settings().store_config())
    deleted = httpx.delete(f"{url}/vectors/assets/doc-0", headers=auth(org), timeout=30).json()
    assert deleted["deleted"] == 8  # 4 segments in v1 and 4 in the target
    assert store.count(V1, org, "doc-0") == 0 and store.count(target, org, "doc-0") == 0

    rolled = heimdex("reembed", "--rollback", "--model", MODEL, "--org", org)
    assert rolled.returncode == 0, rolled.stderr
    until(lambda: route(url, org)["live"] == V1, 10, "rollback seen by the Gateway")
    assert found(url, org, after) == len(after), "rollback lost writes made after the switch"
    assert found(url, org, during) == len(during)
    assert found(url, org, before[4:]) == len(before) - 4
    assert found(url, org, before[:4]) == 0, "rollback brought a deleted asset back"
    assert found(url, other, theirs) == len(theirs)


def test_mock_points_are_dropped_only_after_a_verified_fill(serve_app: ServeApp) -> None:
    from deployments.vector_store import open_store
    from jobs.reembed import route_command
    from serve_app.db import RouteConflictError
    from serve_app.reembed_args import ReembedArgs
    from serve_app.settings import Settings

    url, org = serve_app.url, f"mock-{uuid.uuid4().hex[:6]}"
    texts = short_texts(46)[40:]
    for i, text in enumerate(texts):
        response = httpx.post(f"{url}/vectors/mock", headers=auth(org), json={"asset_id": "m", "segment_id": str(i),
                                                                               "text": text}, timeout=30)
        assert response.status_code == 202
        wait_job(url, org, response.json()["job_id"])
    store = open_store(Settings().store_config())
    mock = collection_name("mock", "v1")
    finalize = heimdex("reembed", "--finalize", "--model", MODEL, "--org", org)
    assert finalize.returncode == 2 and "no verified re-embed" in finalize.stderr
    assert store.count(mock, org) == len(texts)

    result = finished(serve_app, submit(serve_app, ["--source", "collection:mock", "--model", MODEL, "--org", org]))
    assert result["tenants"][org]["mode"] == "fill" and result["target_collection"] == V1 and result["switched"] == []
    assert route(url, org)["verified_at"] is not None and route(url, org)["source"] == mock
    assert found(url, org, [("m", str(i), t) for i, t in enumerate(texts)]) == len(texts)

    done = route_command(ReembedArgs(model=MODEL, org=[org], finalize=True), Settings())
    assert done["tenants"][org]["points_removed"] == {mock: len(texts)}
    assert store.count(mock, org) == 0 and store.count(V1, org) == len(texts)
    with pytest.raises(RouteConflictError):
        route_command(ReembedArgs(model=MODEL, org=[org], rollback=True), Settings())
