"""`ray job submit` as the docs write it, run through Ray's own CLI against the session's cluster.

The command is read from docs/operations.md ("With Ray's own CLI"), so the test breaks when the docs
drift; only what names the user's cluster is replaced by the session's (the token file, the dashboard
URL) and the tenant by a fresh one; ``--no-wait`` is added so the test can poll. It runs from the
repository root, in an environment without any RAY_* / HEIMDEX_* variable of this process: the CLI
gets only what the command sets, as in a user's shell.

The job is not submitted through Heimdex, so nothing created a job row for it: jobs/reembed.py
creates its own ``reembed`` row under the ``--org`` tenant when no ``--job-id`` is given and keeps
it up to date. The tenant's ``GET /jobs`` must list that job, ending ``succeeded``, and the store
must hold the tenant's points in the target collection.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import jobs_client
from deployments.vector_store import collection_name
from tests.conftest import ROOT, ServeApp
from tests.serve.helpers import wait_job

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"
SENTENCES = ["A heron waited motionless at the edge of the pond.", "The ferry was delayed by fog.",
             "Fresh bread smells wonderful in the morning.", "The committee approved the new budget."]
JOB_TIMEOUT_S = 300.0


def documented_commands() -> dict[str, str]:
    """Each doc's ``ray job submit`` command, continuation lines joined."""
    found: dict[str, str] = {}
    for doc in ("docs/operations.md", "docs/migration.md"):
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), flags=re.S):
            if "ray job submit" in block:
                found[doc] = " ".join(block.replace("\\\n", " ").split())
    return found


def session_command(documented: str, org: str, token_path: Path,
                    dashboard_url: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, argv) of the documented command, pointed at the session's cluster."""
    words = shlex.split(documented)
    env: dict[str, str] = {}
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert env.get("RAY_AUTH_TOKEN_PATH") == ".heimdex/ray_auth_token", env
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    assert words[:3] == ["ray", "job", "submit"], words
    words[0] = str(Path(sys.executable).parent / "ray")  # the venv's, as with the venv active
    words.insert(3, "--no-wait")

    def replace(flag: str, expected: str, value: str) -> None:
        index = words.index(flag)
        assert words[index + 1] == expected, (flag, words[index + 1])
        words[index + 1] = value

    replace("--address", "http://127.0.0.1:8265", dashboard_url)
    replace("--org", "acme", org)
    return env, words


def tenant_jobs(url: str, org: str, bearer: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/jobs", params={"limit": 100}, headers={"Authorization": f"Bearer {bearer}"},
                         timeout=30)
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


def test_documented_ray_job_submit_is_tracked_in_jobs_and_fills_the_store(serve_app: ServeApp) -> None:
    from deployments.vector_store import open_store
    from serve_app.auth import mint_token
    from serve_app.settings import Settings

    commands = documented_commands()
    assert set(commands) == {"docs/operations.md", "docs/migration.md"}, commands
    assert len(set(commands.values())) == 1, f"the docs show different commands: {commands}"
    documented = commands["docs/operations.md"]

    org = f"org-raycli-{uuid.uuid4().hex[:6]}"
    bearer = mint_token(Settings(), org_id=org, sub="operator")
    for i, text in enumerate(SENTENCES):  # the tenant's points from the mock path, to migrate
        response = httpx.post(f"{serve_app.url}/vectors/mock", json={"asset_id": "doc", "segment_id": str(i),
                                                                     "text": text},
                              headers={"Authorization": f"Bearer {bearer}"}, timeout=30)
        assert response.status_code == 202, response.text
        assert wait_job(serve_app.url, org, response.json()["job_id"])["status"] == "succeeded"
    store = open_store(Settings().store_config())
    target = collection_name(MODEL, "v1")
    assert store.count(target, org) == 0

    assignments, argv = session_command(documented, org, serve_app.cluster.token_path, serve_app.cluster.dashboard_url)
    user_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HEIMDEX_")) and k != "PYTHONPATH"}
    submitted = subprocess.run(argv, cwd=ROOT, env={**user_env, **assignments}, capture_output=True, text=True,
                               timeout=180)
    assert submitted.returncode == 0, f"{shlex.join(argv)}\n{submitted.stdout}\n{submitted.stderr}"
    match = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr)
    assert match, submitted.stdout + submitted.stderr
    submission_id = match.group(0)

    client = jobs_client.make_client(serve_app.cluster.dashboard_url, serve_app.cluster.token_path.read_text())
    seen_running: list[dict[str, Any]] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = ""
    try:
        while time.monotonic() < deadline:
            status = str(getattr(client.get_job_status(submission_id), "value", ""))
            rows = [j for j in tenant_jobs(serve_app.url, org, bearer) if j["type"] == "reembed"]
            if rows and rows[0]["status"] not in ("succeeded", "failed"):
                seen_running.append(rows[0])
            if status in jobs_client.TERMINAL:
                break
            time.sleep(1.0)
    finally:
        if status not in jobs_client.TERMINAL:  # a stalled job must not take CPUs from later tests
            client.stop_job(submission_id)
    logs = client.get_job_logs(submission_id)
    assert status == "SUCCEEDED", f"Ray job {submission_id} is {status or 'unknown'}:\n{logs[-4000:]}"

    # Heimdex's view: the tenant's jobs list the directly submitted job, succeeded.
    rows = [j for j in tenant_jobs(serve_app.url, org, bearer) if j["type"] == "reembed"]
    assert len(rows) == 1, f"GET /jobs of {org} lists {len(rows)} reembed jobs; Ray job logs:\n{logs[-2000:]}"
    job = wait_job(serve_app.url, org, rows[0]["id"], timeout_s=30)
    assert job["status"] == "succeeded", job
    # Kept up to date: it ran (seen by a poll or recorded as a transition) before it succeeded.
    transitions = [e["next_status"] for e in job["events"]]
    assert transitions[-1] == "succeeded" and (seen_running or "running" in transitions), job
    assert job["result"] is not None, job
    # A tenant's job is that tenant's only.
    other = mint_token(Settings(), org_id=f"{org}-other", sub="operator")
    assert not [j for j in tenant_jobs(serve_app.url, f"{org}-other", other) if j["id"] == job["id"]]

    # The store: the tenant's points in its live collection (a mock -> real fill), and the result says so.
    assert store.count(target, org) == len(SENTENCES)
    assert job["result"]["tenants"][org]["mode"] == "fill" and job["result"]["target_collection"] == target
