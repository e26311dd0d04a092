"""Session-wide fixtures: ONE Ray cluster started the way `heimdex up` (so `make run`) starts it, and
ONE Heimdex app deployed on it from serve_config.yaml as shipped.

The cluster is cluster/local.py's: ``ray start --head`` with the machine's real CPU count (no
``--num-cpus``), token auth, and the Serve flags of the ingress mode `heimdex up` uses (direct by
default); the app is ``serve deploy`` of serve_config.yaml rendered as `heimdex up` renders it. So the
tests see what a user's cluster has: on a 2-core machine the app holds 1.35 of 2 CPUs. Only where it
lives differs from `make run`: a temp state dir and free ports (dashboard, GCS, Ray Client, the public
port block), so a session never collides with a `make run` or another session on the same machine.
The pytest process joins it as a driver (``ray.init(address=...)``). A test that needs another shape
(tests/ops/test_multinode.py adds a node) says why.

The environment is set before Ray is imported (Ray reads its auth mode once per process) and handed
to ``ray start``, so every Ray process (replica, actor, job driver) inherits it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.local import LocalCluster, free_port

ROOT = Path(__file__).resolve().parents[1]
APP_NAME = "heimdex"
START_ATTEMPTS = 3


@dataclass
class RayCluster:
    dashboard_url: str
    data_dir: Path
    token_path: Path
    address: str = ""  # GCS address (host:port)
    serve_port: int = 0  # the public port `heimdex up` would call HEIMDEX_PORT
    ingress: str = "direct"
    env: dict[str, str] = field(default_factory=dict, repr=False)  # what `ray start` got (for more nodes)
    local: LocalCluster | None = None


@dataclass
class ServeApp:
    url: str
    cluster: RayCluster
    config: dict[str, Any]

    def redeploy(self, config: dict[str, Any]) -> None:
        """Deploy ``config`` through the dashboard, as ``serve deploy`` does. Under direct ingress
        an app whose code changed is replaced, and a deleted app is deployed only once the old
        Gateway let go of the public port, as `heimdex up` does (see
        :func:`cluster.local.redeploy_replaces_app`)."""
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        from cluster.local import code_update, redeploy_replaces_app, wait_port_free

        client = ServeSubmissionClient(self.cluster.dashboard_url)
        if redeploy_replaces_app(self.cluster.ingress):
            deployed = APP_NAME in (client.get_serve_details().get("applications") or {})
            if deployed and code_update(self.config, config):
                from ray import serve

                serve.delete(APP_NAME)
                deployed = False
            if not deployed:
                wait_port_free(self.cluster.serve_port, timeout_s=120)
        client.deploy_applications(config)
        self.config = config


_SESSION_STATE: dict[str, Path] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Set the environment before anything imports Ray: Ray reads its auth mode once per process."""
    import tempfile

    from cluster.local import prepare_inprocess_env

    # Short: Ray's socket paths under <state>/ray/session_*/sockets must stay under 107 bytes.
    state = Path(tempfile.mkdtemp(prefix="hx-test-", dir="/tmp"))
    app_db = _app_database()
    prepare_inprocess_env(state, "heimdex-store-test", {
        # Short leases so reclaim-after-crash tests finish quickly; batches take far less.
        "HEIMDEX_RELAY_LEASE_S": "8",
        "HEIMDEX_RELAY_BACKOFF_BASE_S": "0.2",
        "HEIMDEX_RELAY_BACKOFF_MAX_S": "2",
        **({"HEIMDEX_DATABASE_URL": app_db} if app_db else {}),
    })
    _SESSION_STATE.update(state=state, token_path=state / "ray_auth_token", data_dir=state / "data")


# HEIMDEX_TEST_APP_DB=postgresql runs the session's app (Gateway, relay, re-embed jobs) on a fresh
# PostgreSQL database (from HEIMDEX_TEST_PG_URL) instead of the SQLite file; `make test` does so for
# the app suites when HEIMDEX_TEST_PG_URL is set, as CI does.
APP_DB_ENV = "HEIMDEX_TEST_APP_DB"
_APP_DB: dict[str, str] = {}


def _app_database() -> str | None:
    """A fresh PostgreSQL database for the app when HEIMDEX_TEST_APP_DB=postgresql, else None (SQLite)."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    wanted = os.environ.get(APP_DB_ENV, "sqlite")
    if wanted == "sqlite":
        return None
    if wanted != "postgresql":
        raise pytest.UsageError(f"{APP_DB_ENV} must be sqlite or postgresql, not {wanted!r}")
    admin_url = os.environ.get("HEIMDEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"heimdex_app_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    _APP_DB.update(admin=admin_url, name=name)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_app_database() -> None:
    from sqlalchemy import create_engine, text

    if not _APP_DB:
        return
    admin = create_engine(_APP_DB["admin"], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{_APP_DB["name"]}" WITH (FORCE)'))
    finally:
        admin.dispose()


def pytest_report_header(config: pytest.Config) -> str:
    app_db = f"PostgreSQL database {_APP_DB['name']}" if _APP_DB else "SQLite"
    return (f"heimdex test state (Ray logs, data; kept after a failing session): {_SESSION_STATE['state']}; "
            f"the app's database: {app_db}")


_EXIT: dict[str, int] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT["status"] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the state dir, unless a failing session left Ray logs in it to read; drop the app's database."""
    _drop_app_database()
    state = _SESSION_STATE.get("state")
    if state is not None and (_EXIT.get("status") == 0 or not (state / "ray").exists()):
        shutil.rmtree(state, ignore_errors=True)


def _start_head(state: Path) -> tuple[LocalCluster, int, dict[str, str]]:
    """`heimdex up`'s head on free ports; returns (LocalCluster, public port, the env Ray got).
    Ports are taken by a bind-and-release, so another process can take one before Ray does: retry."""
    from cluster import local
    from serve_app.settings import Settings

    ingress = Settings().ingress  # what `heimdex up` would use (its default: direct)
    last: Exception | None = None
    for _ in range(START_ATTEMPTS):
        cluster = LocalCluster(state, dashboard_port=free_port(), gcs_port=free_port(),
                               client_server_port=free_port())
        port = local.free_port_block(local.DIRECT_INGRESS_PORTS, local.PROXY_PORT_OFFSET)
        # The driver (this process) and the `ray`/`serve` CLIs get these too; the ingress flags go to
        # the Ray processes only: the throughput profile would run this driver's handle routers on
        # its (absent) event loop, and the tests call handles from plain threads.
        os.environ.update({"HEIMDEX_RAY_ADDRESS": cluster.address, "HEIMDEX_DASHBOARD_URL": cluster.dashboard_url,
                           "HEIMDEX_PORT": str(port)})
        pythonpath = [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
        env = cluster.ray_env({**local.ingress_env(ingress, port), "PYTHONPATH": os.pathsep.join(pythonpath)})
        try:
            local.start_head(cluster, env)
            return cluster, port, env
        except RuntimeError as exc:
            last = exc
            local.stop(cluster)  # whatever a half-started head left (only this state dir's processes)
    raise RuntimeError(f"ray start failed {START_ATTEMPTS} times") from last


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    import ray

    from cluster import local
    from serve_app.settings import Settings

    cluster, port, env = _start_head(_SESSION_STATE["state"])
    try:
        ray.init(address=cluster.address, namespace=APP_NAME, log_to_driver=False)
        yield RayCluster(cluster.dashboard_url, _SESSION_STATE["data_dir"], _SESSION_STATE["token_path"],
                         address=cluster.address, serve_port=port, ingress=Settings().ingress, env=env,
                         local=cluster)
    finally:
        ray.shutdown()
        local.stop(cluster)


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
    from cluster import local

    assert ray_cluster.local is not None
    config = local.render_serve_config(ROOT / "serve_config.yaml", "127.0.0.1", ray_cluster.serve_port,
                                       ray_cluster.ingress)
    local.deploy(ray_cluster.local, config, ray_cluster.local.ray_env())  # `serve deploy`, as `heimdex up`
    app = ServeApp(f"http://127.0.0.1:{ray_cluster.serve_port}", ray_cluster, config)
    wait_ready(app.url, timeout_s=300)
    return app


@pytest.fixture(scope="session")
def dev_token(serve_app: ServeApp) -> str:
    from serve_app.auth import mint_token
    from serve_app.settings import Settings

    return mint_token(Settings(), org_id="org-a", sub="tester")
