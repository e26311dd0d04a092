"""`heimdex down` finds every process of its own cluster, children that renamed themselves included."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from cluster.local import LocalCluster, cluster_processes

PARENT = "import subprocess, sys, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"


def test_children_of_a_cluster_process_are_found_and_other_clusters_are_not(tmp_path: Path) -> None:
    ours = LocalCluster(tmp_path / "ours")
    theirs = LocalCluster(tmp_path / "theirs")
    # The temp dir appears only in the parent's command line, as with the raylet; the child (like
    # ray::DashboardAgent) does not name it.
    mine = subprocess.Popen([sys.executable, "-c", PARENT, f"--temp-dir={ours.ray_temp_dir.resolve()}"])
    other = subprocess.Popen([sys.executable, "-c", PARENT, f"--temp-dir={theirs.ray_temp_dir.resolve()}"])
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(mine.pid).children() or not psutil.Process(other.pid).children():
            assert time.monotonic() < deadline, "the test processes did not start their children"
            time.sleep(0.05)
        found = {p.pid for p in cluster_processes(ours)}
        child = psutil.Process(mine.pid).children()[0].pid
        assert found == {mine.pid, child}
        assert other.pid not in found
    finally:
        for proc in (mine, other):
            for child_proc in psutil.Process(proc.pid).children(recursive=True):
                child_proc.kill()
            proc.kill()
            proc.wait()


def test_the_heads_ray_client_server_is_found_by_its_gcs_port(tmp_path: Path) -> None:
    """`ray start` leaves the Ray Client server on its own: no temp dir in its command line, not a
    child of the raylet; its --address names the head's GCS port."""
    ours = LocalCluster(tmp_path / "ours", gcs_port=41234)
    theirs = LocalCluster(tmp_path / "theirs", gcs_port=41235)
    sleeper = "import time; time.sleep(60)"
    server = subprocess.Popen([sys.executable, "-c", sleeper, "ray.util.client.server", "--address=192.0.2.2:41234",
                               "--port=10001"])
    try:
        deadline = time.monotonic() + 10
        while server.pid not in {p.pid for p in cluster_processes(ours)}:
            assert time.monotonic() < deadline, "the Ray Client server of our head was not found"
            time.sleep(0.05)
        assert server.pid not in {p.pid for p in cluster_processes(theirs)}
    finally:
        server.kill()
        server.wait()
