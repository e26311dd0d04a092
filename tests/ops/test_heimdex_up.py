"""`heimdex up` (what `make run` runs) on a fresh cluster, again on the running one, then `heimdex down`.

The second `up` deploys a config whose app args changed: a code update, which restarts every replica.
Under direct ingress (the default of `heimdex up`) a rolling update would start the new Gateway while
the old one still holds the public port, so the new one would land on the next port and the public
port would go dark; `up` must replace the app instead, and the public port must answer afterwards.

The cluster is a second Ray head of its own (own temp dir, GCS port, state dir), beside the test
session's; the dashboard port of `heimdex up` is fixed (8265), so the test is skipped where it is taken.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from cluster.local import (
    DASHBOARD_PORT,
    DIRECT_INGRESS_PORTS,
    PROXY_PORT_OFFSET,
    LocalCluster,
    cluster_processes,
    port_block_free,
    port_free,
)

REPO = Path(__file__).resolve().parents[2]
HEIMDEX = REPO / ".venv" / "bin" / "heimdex"


def _port_block(start: int) -> int:
    """A port p >= start with p .. p+DIRECT_INGRESS_PORTS and p+PROXY_PORT_OFFSET free. Fixed ranges:
    above Ray's worker ports (10002-19999, which `ray start` refuses to overlap) and below the OS's
    ephemeral range (32768+), where Ray's own randomly chosen ports could take one while it starts."""
    for base in range(start, start + 1000, 10):
        if port_block_free(base, DIRECT_INGRESS_PORTS, PROXY_PORT_OFFSET):
            return base
    pytest.skip("no free port block for the Gateway")


def _embed(port: int) -> list[float]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/embeddings", method="POST",
        data=json.dumps({"input": ["the public port answers"], "model": "minilm-l6-v2"}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        vector: list[float] = json.loads(response.read())["data"][0]["embedding"]
    return vector


@pytest.mark.skipif(not HEIMDEX.exists(), reason="the heimdex console script is not installed in .venv")
@pytest.mark.skipif(not port_free(DASHBOARD_PORT), reason=f"port {DASHBOARD_PORT} is taken (a `make run` is up?)")
def test_up_then_up_again_keeps_the_public_port_then_down_ends_everything() -> None:
    # Ray's socket paths live under the state dir and must stay under 107 bytes: a short temp dir.
    tmp_path = Path(tempfile.mkdtemp(prefix="hx-up-", dir="/tmp"))
    port = _port_block(21000)
    gcs_port = _port_block(23000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HEIMDEX_"))}
    env.update({"HEIMDEX_PORT": str(port), "HEIMDEX_RAY_GCS_PORT": str(gcs_port),
                "HEIMDEX_STATE_DIR": str(tmp_path / "state"), "HEIMDEX_DATA_DIR": str(tmp_path / "data"),
                "HEIMDEX_INGRESS": "direct", "RAY_USAGE_STATS_ENABLED": "0"})
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["threads"] = 2  # an app-args change: every replica restarts
    changed = tmp_path / "serve_config.changed.yaml"
    changed.write_text(yaml.safe_dump(config))

    def heimdex(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(HEIMDEX), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=420)

    try:
        first = heimdex("up", "--config", str(REPO / "serve_config.yaml"))
        assert first.returncode == 0, first.stdout + first.stderr
        before = _embed(port)
        assert len(before) == 384

        second = heimdex("up", "--config", str(changed))
        assert second.returncode == 0, second.stdout + second.stderr
        # Right after `up` returns an old Gateway replica may still be draining on the port: keep
        # asking past its graceful shutdown (20 s) so a new replica on port + 1 would show.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = _embed(port)
            assert sum(a * b for a, b in zip(before, after, strict=True)) > 0.9999
            time.sleep(2)
        assert "replacing the app" in second.stdout
    finally:
        down = heimdex("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "processes ended" in down.stdout
    cluster = LocalCluster((tmp_path / "state").resolve())
    left = [p for p in cluster_processes(cluster) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {[p.pid for p in left]}"
    shutil.rmtree(tmp_path, ignore_errors=True)
