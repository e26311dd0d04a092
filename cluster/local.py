"""Start, deploy to and stop a local single-node Ray cluster with token auth.

Used by ``heimdex up`` / ``heimdex down`` (and so by ``make run`` / ``make stop``). The Ray auth
token lives in a file under the state directory and is handed to Ray through
``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH``, so the dashboard and the job API refuse callers
without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DASHBOARD_HOST = "127.0.0.1"
# Defaults of a LocalCluster (what `heimdex up` uses); a test session gives its cluster free ports.
DASHBOARD_PORT = 8265
# Not Ray's default 6379: Redis often owns that port on the same machine.
GCS_PORT = 6385  # `heimdex up` passes settings.ray_gcs_port (HEIMDEX_RAY_GCS_PORT)


# Environment every Heimdex Ray process gets: offline model loading, no usage stats, room for a
# loaded 2-core machine to register a raylet (Ray's default wait is 30 s), and workers at niceness 0.
# Ray starts its workers at niceness 15 by default while its own daemons (raylet, GCS, dashboard) and
# any client run at 0: on a small machine the Gateway and Embedder replicas, which are the service,
# then lose the CPU to Ray's bookkeeping and to the load itself (measured: 32 single-text clients).
BASE_ENV = {
    "RAY_worker_niceness": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_raylet_start_wait_time_s": "180",
}


def prepare_inprocess_env(state_dir: Path, store_prefix: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Set up the environment of an in-process Ray cluster (test sessions, benchmarks): a fresh Ray
    auth token, a data dir and a store actor name of its own. Call it before Ray is imported: Ray
    reads its auth mode once per process, and every worker inherits this environment."""
    token_path = state_dir / "ray_auth_token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    data_dir = state_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **BASE_ENV,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "HEIMDEX_ENV": "development",
        "HEIMDEX_DATA_DIR": str(data_dir),
        "HEIMDEX_STORE_ACTOR_NAME": f"{store_prefix}-{secrets.token_hex(4)}",
        **(extra or {}),
    }
    os.environ.update(env)
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    return env


@dataclass(frozen=True)
class LocalCluster:
    """Where a local Heimdex cluster keeps its state, and the fixed ports its head listens on.

    The defaults are `heimdex up`'s. Two clusters on one machine (a test session beside a
    `make run`) need their own state dirs and ports: every other port of the head is Ray's choice.
    """

    state_dir: Path
    dashboard_port: int = DASHBOARD_PORT
    gcs_port: int = GCS_PORT
    # None: Ray's default (10001), which a second head on the machine must not take too.
    client_server_port: int | None = None

    @property
    def token_path(self) -> Path:
        return self.state_dir / "ray_auth_token"

    @property
    def ray_temp_dir(self) -> Path:
        """This cluster's own Ray temp dir, so stopping it never touches other Ray clusters."""
        return self.state_dir / "ray"

    @property
    def address(self) -> str:
        return f"{DASHBOARD_HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{DASHBOARD_HOST}:{self.dashboard_port}"

    def ensure_token(self) -> str:
        """The Ray auth token, generated once (mode 0600)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.token_path.exists():
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return self.token_path.read_text().strip()

    def ray_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for Ray processes and clients of this cluster.

        This interpreter's bin directory (the venv's, not resolved through its symlink) comes first
        on ``PATH``, so a Ray Job entrypoint ``python -m jobs.reembed ...`` submitted with a plain
        ``ray job submit`` runs the venv's Python, which has Ray and Heimdex installed.
        ``HEIMDEX_RAY_ADDRESS`` and ``HEIMDEX_DASHBOARD_URL`` name this cluster, so a job driver
        joins it and the relay submits to it even when the machine runs several Ray clusters.
        """
        env = dict(os.environ)
        env.update({**BASE_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path.resolve()),
                    "HEIMDEX_RAY_ADDRESS": self.address, "HEIMDEX_DASHBOARD_URL": self.dashboard_url})
        env.pop("RAY_AUTH_TOKEN", None)
        venv_bin = str(Path(sys.executable).parent)
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
        env["PATH"] = os.pathsep.join([venv_bin, *path])
        env.update(extra or {})
        return env


def free_port() -> int:
    """A loopback port free now (the OS's choice, from its ephemeral range)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_port_free(port: int, timeout_s: float = 60.0) -> None:
    """Until nothing holds ``port`` on loopback (a stopped replica's process may outlive its controller)."""
    deadline = time.monotonic() + timeout_s
    while not port_free(port):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"port {port} still taken {timeout_s:.0f}s after the app was shut down")
        time.sleep(0.2)


def port_block_free(port: int, span: int, also: int) -> bool:
    """Whether ``port .. port+span`` and ``port+also`` are all free (direct ingress and the proxy)."""
    return port + also < 65535 and all(port_free(p) for p in (*range(port, port + span + 1), port + also))


def free_port_block(span: int, also: int) -> int:
    """A port ``p`` from the OS's ephemeral range with :func:`port_block_free` ``(p, span, also)``."""
    for _ in range(200):
        port = free_port()
        if port_block_free(port, span, also):
            return port
    raise RuntimeError("no free block of loopback ports found")


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (so Ray runs our venv's Python)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def _run(cmd: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, check=check, text=True, capture_output=True)


def is_running(cluster: LocalCluster) -> bool:
    result = _run([_bin("ray"), "status", "--address", cluster.address], cluster.ray_env(), check=False)
    return result.returncode == 0


def start_head(cluster: LocalCluster, env: dict[str, str], num_cpus: int | None = None) -> None:
    """``ray start --head`` with the dashboard on 127.0.0.1 (port 8265 by default) and token auth.
    Without ``num_cpus`` Ray counts the machine's CPUs, as a user's cluster does."""
    cmd = [_bin("ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(cluster.gcs_port),
           "--dashboard-host", DASHBOARD_HOST, "--dashboard-port", str(cluster.dashboard_port),
           "--disable-usage-stats", "--include-dashboard", "true",
           "--temp-dir", str(cluster.ray_temp_dir.resolve()),
           # Not the default 52365 that every `ray.init()` takes: a test session or benchmark started
           # beside the running service would otherwise hand its Ray Jobs to this cluster's agent.
           "--dashboard-agent-listen-port", str(free_port())]
    if cluster.client_server_port is not None:
        cmd += ["--ray-client-server-port", str(cluster.client_server_port)]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    result = _run(cmd, env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ray start failed:\n{result.stdout}\n{result.stderr}")


# Direct ingress: ports the Gateway replicas of one node take, from the public port upwards.
DIRECT_INGRESS_PORTS = 8
# Where Ray's own proxy goes when the Gateway serves the public port itself.
PROXY_PORT_OFFSET = 100


def ingress_env(mode: str, port: int) -> dict[str, str]:
    """Ray Serve flags for an ingress mode (they must be in the environment of every Ray process).

    ``direct``: Ray Serve's throughput profile (``RAY_SERVE_THROUGHPUT_OPTIMIZED``): each Gateway
    replica runs its own HTTP server (direct ingress), handles speak gRPC, user code runs on the
    replica's main event loop and request-path logs are buffered. Replica ports start at the public
    port and a freed port is reusable at once (no load balancer here that needs a quarantine), so a
    restarted single Gateway replica comes back on the same port (a code update is another matter:
    see :func:`redeploy_replaces_app`). Measured on 2 cores, 32 clients of
    one text each: 311.9 texts/s direct vs 150.2 through the proxy in one bench run (docs/benchmarks.md).
    ``proxy``: Ray's defaults.
    """
    if mode == "proxy":
        return {}
    if mode != "direct":
        raise ValueError(f"unknown ingress mode {mode!r}; expected 'direct' or 'proxy'")
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + DIRECT_INGRESS_PORTS),
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        # No external load balancer must deregister a draining replica on one machine.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }


# Names besides the HEIMDEX_ prefix that Settings reads (serve_app/settings.py), handed to replicas too.
# XDG_CACHE_HOME: where the model cache defaults (Settings.model_paths()), so the Gateway finds what build_app saw.
SETTINGS_ENV_NAMES = frozenset({"ENABLE_REAL_EMBEDDINGS", "XDG_CACHE_HOME"})


def heimdex_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The Heimdex settings in ``environ``: every ``HEIMDEX_*`` variable and the unprefixed names Settings accepts."""
    return {k: v for k, v in environ.items() if k.upper().startswith("HEIMDEX_") or k.upper() in SETTINGS_ENV_NAMES}


def render_serve_config(path: Path, host: str, port: int, ingress: str = "proxy",
                        env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """The Serve config with the HTTP address filled in; in ``direct`` mode the proxy steps aside to
    ``port + PROXY_PORT_OFFSET`` and the Gateway replica serves ``port`` (see :func:`ingress_env`).

    ``env_vars`` go into every application's ``runtime_env.env_vars`` (over the file's own), so each
    replica of each deploy starts with them: a running Ray head keeps the environment it was started
    with, and without this a ``HEIMDEX_X=... heimdex up`` against it would never reach the replicas.
    They are part of the app's config, which the token-protected dashboard shows.
    """
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    proxy_port = port + PROXY_PORT_OFFSET if ingress == "direct" else port
    config.setdefault("http_options", {}).update({"host": host, "port": proxy_port})
    if env_vars:
        for app in config.get("applications", []):
            runtime_env = app.setdefault("runtime_env", {})
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **{k: str(v) for k, v in env_vars.items()}}
    return config


def shutdown_serve(cluster: LocalCluster, env: dict[str, str]) -> None:
    """Delete every Serve application and the controller (the detached store actor stays)."""
    _run([_bin("serve"), "shutdown", "-y", "--address", cluster.dashboard_url], env, check=False)


def redeploy_replaces_app(ingress: str) -> bool:
    """Whether a redeploy must replace the app instead of rolling it.

    Under direct ingress, Serve starts a code update's new Gateway replica while the old one still
    holds the public port, so the new one takes the next port of the range and the public port goes
    dark once the old one drains. Replacing the app (shutdown, wait until the old Gateway's process
    let go of the port, then deploy) keeps it, at the cost of the time the replicas take to start.
    Through Ray's proxy a rolling update is safe.
    """
    return ingress == "direct"


def code_update(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether going from Serve config ``old`` to ``new`` restarts every replica: an app-level change
    (args, import path, runtime env) rather than a deployment's replicas, options or ``user_config``."""
    def app_level(config: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in app.items() if k != "deployments"} for app in config.get("applications", [])]

    return app_level(old) != app_level(new)


def deploy(cluster: LocalCluster, config: dict[str, Any], env: dict[str, str]) -> None:
    """``serve deploy`` of a rendered config through the token-protected dashboard."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(config, handle)
        rendered = handle.name
    try:
        result = _run([_bin("serve"), "deploy", rendered, "--address", cluster.dashboard_url], env, check=False)
    finally:
        os.unlink(rendered)
    if result.returncode != 0:
        raise RuntimeError(f"serve deploy failed:\n{result.stdout}\n{result.stderr}")


def wait_ready(url: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers 200; raise with the last answer on timeout."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                body: dict[str, Any] = json.loads(response.read())
                if response.status == 200:
                    return body
        except urllib.error.HTTPError as exc:
            last = f"{exc.code}: {exc.read()[:300]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(1.0)
    raise TimeoutError(f"service not ready after {timeout_s:.0f}s; last answer: {last}")


def _client_server_of(args: list[str], gcs_port: int) -> bool:
    """Whether a command line is the Ray Client server of the head whose GCS listens on ``gcs_port``:
    ``ray start`` leaves it running on its own (no temp dir in its command line, not a raylet child)."""
    return "ray.util.client.server" in args and any(
        a.startswith("--address=") and a.rsplit(":", 1)[-1] == str(gcs_port) for a in args)


def cluster_processes(cluster: LocalCluster) -> list[Any]:
    """Processes of this cluster only: those whose command line names its temp dir, their
    children, and the head's Ray Client server (named by the cluster's GCS port)."""
    import psutil

    marker = str(cluster.ray_temp_dir.resolve())
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        args = proc.info.get("cmdline") or []
        cmdline = " ".join(args)
        if (marker in cmdline or _client_server_of(args, cluster.gcs_port)) and proc.pid != os.getpid():
            found[proc.pid] = proc
            # Ray's agents rename themselves (ray::DashboardAgent, ...): their command line no longer
            # names the temp dir, but they are the raylet's children.
            with contextlib.suppress(psutil.Error):
                for child in proc.children(recursive=True):
                    if child.pid != os.getpid():
                        found[child.pid] = child
    return list(found.values())


def stop(cluster: LocalCluster, grace_s: float = 15.0) -> int:
    """Shut the app down, then end this cluster's processes (never `ray stop`, which ends every
    Ray cluster of the user on the machine). Returns how many processes were ended."""
    import psutil

    env = cluster.ray_env()
    if is_running(cluster):
        shutdown_serve(cluster, env)
    procs = cluster_processes(cluster)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(procs)
