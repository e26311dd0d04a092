"""Start (or attach to) what the bench measures: one local Ray cluster with Heimdex deployed on it.

:func:`local_stack` sets up what ``tests/conftest.py`` sets up for a test session, in the same order:

1. set the environment *before* Ray is imported (token auth with a freshly generated token file,
   no usage stats, offline model hub, development env, a temporary data dir, a unique store actor
   name, and a tenant rate limit far above anything the bench sends);
2. ``ray.init(address="local", include_dashboard=True)`` on a free loopback dashboard port, with the
   machine's real CPU count, as ``ray start --head`` in ``heimdex up`` has (the Ray processes stay
   this driver's children, so bench.memory can sum their RSS);
3. deploy ``serve_config.yaml`` (optionally with the Embedder's ``num_replicas``, ``user_config`` or
   the app's ``args.threads`` overridden) through the dashboard REST API, as ``serve deploy`` does;
4. wait for ``/readyz``; yield a :class:`Stack`; shut Serve and Ray down and delete the temp dir at exit.

:func:`remote_stack` attaches to a service that is already running (``--url``); it can optionally
connect to that service's Ray cluster (``--ray-address``) so the store can be seeded for the search
figure. :func:`open_stack` picks one of the two.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.load import check_loopback
from cluster.local import free_port, free_port_block, wait_port_free

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.yaml"
APP_NAME = "heimdex"
EMBEDDER = "Embedder"
# High enough that the per-tenant token bucket never throttles the bench.
BENCH_TENANT_RATE = "1000000"
BENCH_TENANT_BURST = "1000000"

log = logging.getLogger("bench.stack")


def wait_ready(url: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers 200; raise with the last answer on timeout."""
    deadline = time.monotonic() + timeout_s
    last: object = "no answer yet"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
            last = f"{response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"service at {url} not ready after {timeout_s:.0f}s; last answer: {last}")


def with_overrides(
    config: dict[str, Any],
    *,
    num_replicas: int | None = None,
    threads: int | None = None,
    user_config: dict[str, Any] | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """A copy of a rendered Serve config with the Embedder / app args changed for one experiment."""
    out = copy.deepcopy(config)
    app = next(a for a in out["applications"] if a.get("name") == APP_NAME)
    if threads is not None or backend is not None:
        args = app.setdefault("args", {})
        if threads is not None:
            args["threads"] = threads
        if backend is not None:
            args["backend"] = backend
    deployments = app.setdefault("deployments", [])
    embedder: dict[str, Any] | None = next((d for d in deployments if d.get("name") == EMBEDDER), None)
    if embedder is None:
        embedder = {"name": EMBEDDER}
        deployments.append(embedder)
    if num_replicas is not None:
        embedder.pop("autoscaling_config", None)
        embedder["num_replicas"] = num_replicas
    if user_config:
        embedder["user_config"] = {**embedder.get("user_config", {}), **user_config}
    return out


def embedder_settings(config: dict[str, Any]) -> dict[str, Any]:
    """num_replicas, threads and user_config the config gives the default Embedder."""
    app = next(a for a in config["applications"] if a.get("name") == APP_NAME)
    embedder: dict[str, Any] = next((d for d in app.get("deployments", []) if d.get("name") == EMBEDDER), {})
    return {
        "num_replicas": embedder.get("num_replicas"),
        "threads": app.get("args", {}).get("threads"),
        "user_config": dict(embedder.get("user_config", {})),
    }


@dataclass
class Stack:
    """What the bench talks to. ``local`` stacks own their Ray cluster; remote ones only have a URL."""

    url: str
    local: bool
    proxy_url: str | None = None  # Ray's HTTP proxy, where it is not ``url`` (direct ingress)
    dashboard_url: str | None = None
    config: dict[str, Any] | None = None
    data_dir: Path | None = None
    ray_connected: bool = False
    notes: list[str] = field(default_factory=list)
    ingress: str = "proxy"

    def redeploy(self, config: dict[str, Any], timeout_s: float = 300.0) -> None:
        """Deploy ``config`` through the dashboard and wait until the Embedder runs it."""
        if not self.local or self.dashboard_url is None:
            raise RuntimeError("redeploying needs a local stack (no --url)")
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        from cluster.local import code_update, redeploy_replaces_app

        client = ServeSubmissionClient(self.dashboard_url)
        if self.config is not None and redeploy_replaces_app(self.ingress) and code_update(self.config, config):
            client.delete_applications()  # see redeploy_replaces_app: the Gateway must keep the public port
            self._wait_no_app(client, timeout_s)
            port = urlsplit(self.url).port
            if port is not None:
                wait_port_free(port, timeout_s)
        client.deploy_applications(config)
        self.config = config
        self.wait_deployed(timeout_s)

    def _wait_no_app(self, client: Any, timeout_s: float) -> None:
        """Until the dashboard lists no Heimdex app (deleting shuts the Serve controller down, so ask
        the dashboard, not the controller)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the dashboard's Serve head may be restarting
                if APP_NAME not in (client.get_serve_details().get("applications") or {}):
                    # This driver's Serve client points at the controller that just went away; the
                    # next serve.status() / handle must find the new one by name.
                    from ray.serve import context

                    context._set_global_client(None)
                    return
            time.sleep(0.5)
        raise TimeoutError(f"the app was not deleted in {timeout_s:.0f}s")

    def wait_deployed(self, timeout_s: float = 300.0) -> None:
        """Until the app is RUNNING with exactly the configured Embedder replicas, all running the
        configured batch settings, for three polls in a row; then ``/readyz``."""
        from ray import serve

        assert self.config is not None
        want = embedder_settings(self.config)
        deadline = time.monotonic() + timeout_s
        stable = 0
        last: object = None
        time.sleep(1.0)  # let the controller take the new config before its status is trusted
        while time.monotonic() < deadline and stable < 3:
            try:
                status = serve.status()
                app = status.applications.get(APP_NAME)
                ok = app is not None and str(app.status).endswith("RUNNING")
                if ok and app is not None:
                    dep = app.deployments.get(EMBEDDER)
                    states = {str(k).split(".")[-1]: v for k, v in (dep.replica_states if dep else {}).items()}
                    replicas = want["num_replicas"]
                    ok = dep is not None and (replicas is None or states == {"RUNNING": replicas})
                    last = (app.status, states)
                if ok and want["user_config"]:
                    info = self.embedder_info()
                    ok = all(info.get(k) == v for k, v in want["user_config"].items())
                    last = info
            except Exception as exc:  # status calls race with the rollout; retry until the deadline
                ok, last = False, exc
            stable = stable + 1 if ok else 0
            time.sleep(0.5)
        if stable < 3:
            raise TimeoutError(f"deployment did not settle in {timeout_s:.0f}s; last: {last}")
        wait_ready(self.url, timeout_s)

    def embedder_info(self) -> dict[str, Any]:
        """``Embedder.info()`` of one replica (model, backend, batch settings, pid)."""
        from ray import serve

        handle = serve.get_deployment_handle(EMBEDDER, app_name=APP_NAME)
        info: dict[str, Any] = handle.info.remote().result(timeout_s=30)
        return info

    def batch_stats(self) -> dict[str, Any] | None:
        """Batch-size histogram of one Embedder replica (evidence batching formed), if reachable."""
        if not self.ray_connected:
            return None
        from ray import serve

        try:
            handle = serve.get_deployment_handle(EMBEDDER, app_name=APP_NAME)
            stats: dict[str, Any] = handle.batch_stats.remote().result(timeout_s=30)
            return stats
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}


def prepare_env(state_dir: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """Set the environment every Ray process of the bench stack inherits. Must run before Ray is
    imported: Ray reads its auth mode once per process."""
    if "ray" in sys.modules:
        log.warning("ray was imported before the bench set its environment; token auth may not apply")
    from cluster.local import prepare_inprocess_env

    return prepare_inprocess_env(state_dir, "heimdex-store-bench", {
        "HEIMDEX_TENANT_RATE_PER_S": BENCH_TENANT_RATE,
        "HEIMDEX_TENANT_BURST": BENCH_TENANT_BURST,
        **(extra_env or {}),
    })


@contextlib.contextmanager
def local_stack(
    config_path: Path = SERVE_CONFIG,
    *,
    num_replicas: int | None = None,
    threads: int | None = None,
    user_config: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
    num_cpus: int | None = None,
    ready_timeout_s: float = 300.0,
    ingress: str = "direct",
) -> Iterator[Stack]:
    """A fresh local Ray cluster with Heimdex deployed from ``config_path``; torn down at exit.
    ``ingress`` is what ``heimdex up`` uses by default (see :func:`cluster.local.ingress_env`).
    ``num_cpus``: None = the machine's CPUs, the shape of a user's cluster; a step that needs room
    beyond it (bench.tuning's replica layouts) passes its own and says why."""
    from cluster.local import DIRECT_INGRESS_PORTS, PROXY_PORT_OFFSET, ingress_env, render_serve_config

    state = Path(tempfile.mkdtemp(prefix="heimdex-bench-"))
    port = free_port_block(DIRECT_INGRESS_PORTS, PROXY_PORT_OFFSET)
    prepare_env(state, extra_env)
    # The Ray processes started below inherit the ingress flags; this driver reads Serve's constants
    # first, without them: the throughput profile runs handle routers on the caller's event loop, and
    # the bench calls handles from plain threads.
    import ray
    import ray.serve._private.constants

    os.environ.update(ingress_env(ingress, port))

    dashboard_port = 0
    attempts = 3
    for attempt in range(attempts):  # a loaded machine can time Ray's node startup (30 s, fixed) out
        dashboard_port = free_port()
        try:
            # num_cpus=None: Ray counts the machine's CPUs, as `ray start --head` does for `heimdex up`.
            ray.init(address="local", num_cpus=num_cpus, namespace=APP_NAME,
                     include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dashboard_port,
                     log_to_driver=False)
            break
        except Exception as exc:
            ray.shutdown()
            if attempt == attempts - 1:
                shutil.rmtree(state, ignore_errors=True)
                raise
            log.warning("ray.init failed (%s); retrying", exc)
            time.sleep(5.0)
    try:
        url = f"http://127.0.0.1:{port}"
        base = render_serve_config(config_path, "127.0.0.1", port, ingress)
        config = with_overrides(base, num_replicas=num_replicas, threads=threads, user_config=user_config)
        proxy_port = base["http_options"]["port"]
        stack = Stack(url=url, local=True, proxy_url=f"http://127.0.0.1:{proxy_port}" if proxy_port != port else None,
                      dashboard_url=f"http://127.0.0.1:{dashboard_port}", config=config,
                      data_dir=state / "data", ray_connected=True, ingress=ingress)
        stack.redeploy(config, timeout_s=ready_timeout_s)
        yield stack
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception as exc:  # shutting down must go on whatever failed
            log.warning("serve.shutdown failed: %s", exc)
        finally:
            ray.shutdown()
            shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def remote_stack(url: str, ray_address: str | None = None) -> Iterator[Stack]:
    """An already running service at ``url`` (loopback only). With ``ray_address`` the bench also
    joins that cluster (its ``RAY_AUTH_TOKEN_PATH`` and ``HEIMDEX_*`` settings must be in the
    environment) so it can seed the store and read batch statistics."""
    check_loopback(url)
    url = url.rstrip("/")
    wait_ready(url, timeout_s=60)
    stack = Stack(url=url, local=False)
    if ray_address is None:
        stack.notes.append("remote service without --ray-address: no store seeding, no batch statistics")
        yield stack
        return
    import ray

    ray.init(address=ray_address, namespace=APP_NAME, log_to_driver=False)
    stack.ray_connected = True
    try:
        yield stack
    finally:
        ray.shutdown()


def open_stack(url: str | None = None, ray_address: str | None = None, **local_kwargs: Any
               ) -> contextlib.AbstractContextManager[Stack]:
    """``remote_stack(url)`` when a URL is given, else a fresh ``local_stack``."""
    if url:
        return remote_stack(url, ray_address)
    return local_stack(**local_kwargs)
