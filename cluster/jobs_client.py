"""Submit and watch re-embedding Ray Jobs through the dashboard's job API (what ``ray job submit`` does).

Token auth: the Heimdex cluster runs with ``RAY_AUTH_MODE=token``, so the dashboard answers 401
to any request without ``Authorization: Bearer <token>``. Ray 2.60's ``JobSubmissionClient`` adds
that header by itself only when *this* process has token auth enabled (``RAY_AUTH_MODE=token``,
read once per process by Ray's C++ core) and its token loader finds a token (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``). To work from any process — a CLI whose
environment lacks ``RAY_AUTH_MODE``, or one where Ray was imported earlier — we read the token
ourselves and pass the header explicitly (``headers=``); the client never overrides a caller's
``Authorization`` header. Token lookup order: the ``token`` argument, ``RAY_AUTH_TOKEN``, the file
named by ``RAY_AUTH_TOKEN_PATH``, the local cluster's token file (``.heimdex/ray_auth_token``),
``~/.ray/auth_token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

ENTRYPOINT_MODULE = "jobs.reembed"
# Environment the job needs besides the caller's HEIMDEX_* settings.
PASS_THROUGH_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "HEIMDEX_MINILM_DIR")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
# Where `heimdex up` keeps the token (HEIMDEX_STATE_DIR is read by serve_app.settings, not here).
LOCAL_STATE_DIR = Path(".heimdex")


def find_token(token: str | None = None, state_dir: Path = LOCAL_STATE_DIR) -> str | None:
    """The Ray auth token, from the first place that has one (see the module docstring). ``RAY_AUTH_*``
    are Ray's own variables, read here as Ray's token loader reads them."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    candidates = []
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        candidates.append(Path(os.environ["RAY_AUTH_TOKEN_PATH"]))
    candidates += [state_dir.resolve() / "ray_auth_token", Path.home() / ".ray" / "auth_token"]
    for path in candidates:
        try:
            text = path.expanduser().read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None


def make_client(dashboard_url: str, token: str | None = None) -> JobSubmissionClient:
    """A JobSubmissionClient that sends the Ray token explicitly."""
    from ray.job_submission import JobSubmissionClient

    found = find_token(token)
    headers = {"Authorization": f"Bearer {found}"} if found else None
    return JobSubmissionClient(dashboard_url, headers=headers)


def job_env() -> dict[str, str]:
    """The caller's HEIMDEX_* settings (and offline-model switches) for the job's runtime_env."""
    env = {k: v for k, v in os.environ.items() if k.startswith("HEIMDEX_")}
    env.update({k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ})
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _python_for(dashboard_url: str) -> str:
    """This interpreter for a cluster on this machine (it has our venv); plain ``python`` elsewhere."""
    host = urlparse(dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}").hostname or ""
    if host in ("127.0.0.1", "localhost", "::1") and Path(sys.executable).exists():
        return sys.executable
    return "python"


def entrypoint(args: list[str], job_id: str | None, python: str) -> str:
    argv = [python, "-m", ENTRYPOINT_MODULE, *args]
    if job_id and "--job-id" not in args:
        argv += ["--job-id", job_id]
    return shlex.join(argv)


def submit_reembed(
    dashboard_url: str,
    args: list[str],
    job_id: str | None,
    submission_id: str | None = None,
    *,
    token: str | None = None,
    python: str | None = None,
    extra_env: dict[str, str] | None = None,
    agent_wait_s: float = 120.0,
) -> str:
    """Submit ``python -m jobs.reembed ARGS [--job-id ID]`` as a Ray Job; returns the submission id."""
    client = make_client(dashboard_url, token)
    env = {**job_env(), **(extra_env or {})}
    metadata = {"heimdex": "reembed"}
    if job_id:
        metadata["heimdex_job_id"] = job_id
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            submitted: str = client.submit_job(
                entrypoint=entrypoint(args, job_id, python or _python_for(dashboard_url)),
                submission_id=submission_id,
                runtime_env={"env_vars": env},
                metadata=metadata,
            )
            return submitted
        except RuntimeError as exc:
            # A freshly started head answers 500 "No available agent" until its job agent is up.
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def job_status(dashboard_url: str, submission_id: str, *, token: str | None = None) -> dict[str, Any]:
    """Ray's view of the submission: status, message, timestamps, metadata. The re-embed's own result is
    in its Heimdex job row (``heimdex status`` shows both), never scraped from logs."""
    client = make_client(dashboard_url, token)
    info = client.get_job_info(submission_id)
    status = str(getattr(info.status, "value", info.status))
    out: dict[str, Any] = {
        "submission_id": submission_id,
        "status": status,
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "metadata": info.metadata,
    }
    return out


def wait(dashboard_url: str, submission_id: str, timeout_s: float = 600.0, poll_s: float = 1.0,
         *, token: str | None = None) -> dict[str, Any]:
    """Poll until the job is terminal (or TimeoutError); returns :func:`job_status`."""
    client = make_client(dashboard_url, token)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(getattr(client.get_job_status(submission_id), "value", ""))
        if status in TERMINAL:
            return job_status(dashboard_url, submission_id, token=token)
        time.sleep(poll_s)
    raise TimeoutError(f"job {submission_id} not finished after {timeout_s:.0f}s")


def follow(dashboard_url: str, submission_id: str, *, token: str | None = None) -> str:
    """Print the job's logs as they come until it ends; returns its final status."""
    client = make_client(dashboard_url, token)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            print(chunk, end="", flush=True)

    # The log stream can close just before the job is marked finished.
    with contextlib.suppress(RuntimeError):
        asyncio.run(tail())
    status = ""
    for _ in range(60):
        status = str(getattr(client.get_job_status(submission_id), "value", ""))
        if status in TERMINAL:
            return status
        time.sleep(1.0)
    return status
