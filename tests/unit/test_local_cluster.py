"""cluster.local's LocalCluster: ports of its own, the environment Ray gets, the `ray start` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import local


def test_defaults_are_heimdex_ups_ports(tmp_path: Path) -> None:
    cluster = local.LocalCluster(tmp_path)
    assert cluster.dashboard_url == f"http://127.0.0.1:{local.DASHBOARD_PORT}"
    assert cluster.address == f"127.0.0.1:{local.GCS_PORT}"


def test_ray_env_names_this_cluster_and_puts_the_venv_first_on_path(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", venv_bin, "/bin"]))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "must-not-leak")
    cluster = local.LocalCluster(tmp_path, dashboard_port=18265, gcs_port=16385)
    env = cluster.ray_env({"EXTRA": "1"})
    # A job entrypoint `python -m jobs.reembed` finds this venv's python, once.
    assert env["PATH"].split(os.pathsep) == [venv_bin, "/usr/bin", "/bin"]
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(cluster.token_path.resolve())
    assert "RAY_AUTH_TOKEN" not in env
    assert env["HEIMDEX_RAY_ADDRESS"] == "127.0.0.1:16385"
    assert env["HEIMDEX_DASHBOARD_URL"] == "http://127.0.0.1:18265"
    assert env["EXTRA"] == "1"


def test_start_head_uses_the_clusters_ports_and_the_real_cpu_count(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(local, "_run", fake_run)
    cluster = local.LocalCluster(tmp_path, dashboard_port=18265, gcs_port=16385, client_server_port=20001)
    local.start_head(cluster, {})
    cmd = seen[0]

    def value(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert value("--port") == "16385" and value("--dashboard-port") == "18265"
    assert value("--ray-client-server-port") == "20001"
    assert value("--temp-dir") == str(cluster.ray_temp_dir.resolve())
    assert "--num-cpus" not in cmd  # Ray counts the machine's CPUs, as on a user's cluster

    seen.clear()
    local.start_head(local.LocalCluster(tmp_path), {}, num_cpus=3)
    assert "--ray-client-server-port" not in seen[0]  # Ray's default for `heimdex up`
    assert seen[0][seen[0].index("--num-cpus") + 1] == "3"
