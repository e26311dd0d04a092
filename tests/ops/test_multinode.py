"""Scale-out on one machine: a second Ray node joins the session cluster and serves Embedder traffic.

Another shape on purpose: spreading replicas over nodes needs a second node, which a user's
single-node `heimdex up` cluster does not have. The second node is a real raylet started with
``ray start --address <session GCS> --block`` in its own process session (so the test can stop
exactly that node and nothing else), with the environment the head was started with (auth,
HEIMDEX_*, the ingress flags, this checkout on PYTHONPATH) and one CPU: room for the second Embedder
replica. The app is redeployed with two Embedder replicas and ``max_replicas_per_node: 1``, so Serve
must place one replica on each node; requests through the HTTP API and through the Embedder handle
then show replicas on both nodes embedding texts. At the end the node is stopped and the original
config is redeployed, so later tests see the usual app.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, RayCluster, ServeApp, free_port, wait_ready
from tests.serve.helpers import auth

pytestmark = [pytest.mark.serve, pytest.mark.slow]

MODEL = "minilm-l6-v2"
SECOND_NODE_RESOURCE = "second_node"
START_ATTEMPTS = 3


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def _wait(predicate: Any, what: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what} not reached in {timeout_s:.0f}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop one `ray start --block` and everything in its process session (only that node)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops the processes it started
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def second_node(ray_cluster: RayCluster, serve_app: ServeApp, tmp_path: Path) -> Iterator[str]:
    gcs = ray_cluster.address
    ray_bin = str(Path(sys.executable).parent / "ray")
    # What the head got: replicas on both nodes must run the same Serve flags (direct ingress).
    env = dict(ray_cluster.env)
    node: dict[str, Any] | None = None
    proc: subprocess.Popen[bytes] | None = None
    # Ray gives a raylet a fixed 30 s to register; on a loaded 2-core machine that can pass, so retry.
    for attempt in range(START_ATTEMPTS):
        cmd = [ray_bin, "start", "--address", gcs, "--num-cpus", "1",
               "--resources", f'{{"{SECOND_NODE_RESOURCE}": 1}}', "--block", "--disable-usage-stats",
               # Fixed defaults would clash with the head's agents on this same machine.
               "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
               "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port())]
        with (tmp_path / f"second-node-{attempt}.log").open("w") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        deadline = time.monotonic() + 60
        while node is None and proc.poll() is None and time.monotonic() < deadline:
            node = next((n for n in _alive_nodes() if SECOND_NODE_RESOURCE in n["Resources"]), None)
            time.sleep(0.5)
        if node is not None:
            break
        _stop(proc)
    if node is None or proc is None:
        pytest.fail(f"second node did not start in {START_ATTEMPTS} attempts; logs in {tmp_path}")
    node_id = str(node["NodeID"])
    try:
        yield node_id
    finally:
        _stop(proc)
        _wait(lambda: all(n["NodeID"] != node_id for n in _alive_nodes()), "second node gone", 60)
        # Scaling back to one replica may have kept the one on the node just stopped: wait until Serve
        # has replaced it, so the tests after this one find the usual, ready app.
        _wait(lambda: _embedder_replicas_running(1), "one running Embedder replica after the node left", 180)
        wait_ready(serve_app.url, timeout_s=180)


def _embedder_replicas_running(count: int) -> bool:
    from ray import serve

    app = serve.status().applications.get("heimdex")
    if app is None or app.status != "RUNNING":
        return False
    embedder = app.deployments["Embedder"]
    return bool(embedder.status == "HEALTHY" and embedder.replica_states.get("RUNNING", 0) == count)


def test_embedder_replicas_on_two_nodes_both_serve(serve_app: ServeApp, second_node: str) -> None:
    import ray
    from ray import serve

    head_node = ray.get_runtime_context().get_node_id()
    original = copy.deepcopy(serve_app.config)
    spread = copy.deepcopy(original)
    embedder = next(d for d in spread["applications"][0]["deployments"] if d["name"] == "Embedder")
    embedder["num_replicas"] = 2
    embedder["max_replicas_per_node"] = 1  # Serve must put the two replicas on different nodes
    try:
        serve_app.redeploy(spread)
        _wait(lambda: _embedder_replicas_running(2), "two running Embedder replicas", 120)

        texts = [f"scale-out text number {i}" for i in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda _: httpx.post(
                f"{serve_app.url}/v1/embeddings", json={"input": texts, "model": MODEL},
                headers=auth("org-multinode"), timeout=60), range(24)))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]

        handle = serve.get_deployment_handle("Embedder", app_name="heimdex")
        # The router spreads calls over replicas; concurrent calls reach both within a few rounds.
        texts_by_node: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while len([n for n, t in texts_by_node.items() if t > 0]) < 2 and time.monotonic() < deadline:
            calls = [handle.embed.remote([f"handle call {i}"]) for i in range(16)]
            for call in calls:
                call.result(timeout_s=60)
            for _ in range(8):
                snap = handle.metrics_snapshot.remote().result(timeout_s=30)
                texts_by_node[snap["node_id"]] = snap["texts"]
        assert set(texts_by_node) == {head_node, second_node}, texts_by_node
        assert all(t > 0 for t in texts_by_node.values()), texts_by_node
    finally:
        serve_app.redeploy(original)
    _wait(lambda: _embedder_replicas_running(1), "the original single Embedder replica", 120)
    wait_ready(serve_app.url, timeout_s=120)
