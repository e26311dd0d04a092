"""Session-wide fixtures: ONE real Ray cluster (with dashboard and token auth) and ONE Heimdex
Serve app deployed from serve_config.yaml through the dashboard's REST API, as `serve deploy` does.

Environment variables are set before Ray starts so every worker (replica, actor, job) inherits them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.local import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RayCluster:
    dashboard_url: str
    data_dir: Path
    token_path: Path


@dataclass
class ServeApp:
    url: str
    cluster: RayCluster
    config: dict[str, Any]

    def redeploy(self, config: dict[str, Any]) -> None:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        ServeSubmissionClient(self.cluster.dashboard_url).deploy_applications(config)
        self.config = config


_SESSION_STATE: dict[str, Path] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Set the environment before anything imports Ray: Ray reads its auth mode once per process."""
    import tempfile

    from cluster.local import prepare_inprocess_env

    state = Path(tempfile.mkdtemp(prefix="heimdex-test-"))
    prepare_inprocess_env(state, "heimdex-store-test", {
        # Short leases so reclaim-after-crash tests finish quickly; batches take far less.
        "HEIMDEX_RELAY_LEASE_S": "8",
        "HEIMDEX_RELAY_BACKOFF_BASE_S": "0.2",
        "HEIMDEX_RELAY_BACKOFF_MAX_S": "2",
    })
    _SESSION_STATE.update(state=state, token_path=state / "ray_auth_token", data_dir=state / "data")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    import ray

    data_dir = _SESSION_STATE["data_dir"]
    token_path = _SESSION_STATE["token_path"]
    dashboard_port = free_port()
    os.environ["HEIMDEX_DASHBOARD_URL"] = f"http://127.0.0.1:{dashboard_port}"  # the relay submits Ray Jobs here
    # Our own temp dir: job drivers and `ray` CLIs resolve "the current cluster" from it, so another
    # Ray cluster on the machine (a `make run`, a benchmark) is never mistaken for this one.
    ray.init(address="local", num_cpus=4, namespace="heimdex", include_dashboard=True,
             dashboard_host="127.0.0.1", dashboard_port=dashboard_port, log_to_driver=False,
             _temp_dir=str(_SESSION_STATE["state"] / "ray"))
    os.environ["HEIMDEX_RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    try:
        yield RayCluster(f"http://127.0.0.1:{dashboard_port}", data_dir, token_path)
    finally:
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()


def wait_ready(url: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"app not ready: {last}")


@pytest.fixture(scope="session")
def serve_app(ray_cluster: RayCluster) -> ServeApp:
    from cluster.local import render_serve_config

    port = free_port()
    config = render_serve_config(ROOT / "serve_config.yaml", "127.0.0.1", port)
    app = ServeApp(f"http://127.0.0.1:{port}", ray_cluster, config)
    app.redeploy(config)
    wait_ready(app.url)
    return app


@pytest.fixture(scope="session")
def dev_token(serve_app: ServeApp) -> str:
    from serve_app.auth import mint_token
    from serve_app.settings import Settings

    return mint_token(Settings(), org_id="org-a", sub="tester")
