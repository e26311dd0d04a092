"""Redeploying the session's app and waiting until the new config is live and healthy."""

from __future__ import annotations

import copy
from typing import Any

from tests.conftest import ServeApp, wait_ready
from tests.fault.helpers import poll


def serve_details(app: ServeApp) -> dict[str, Any]:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(app.cluster.dashboard_url).get_serve_details()


def deployment_details(app: ServeApp, name: str) -> dict[str, Any]:
    return serve_details(app)["applications"]["heimdex"]["deployments"][name]


def with_deployment(config: dict[str, Any], name: str, **options: Any) -> dict[str, Any]:
    new = copy.deepcopy(config)
    for deployment in new["applications"][0]["deployments"]:
        if deployment["name"] == name:
            deployment.update(options)
            return new
    raise KeyError(name)


def redeploy_and_wait(app: ServeApp, config: dict[str, Any], name: str, option: str, value: Any,
                      timeout_s: float = 240) -> None:
    """Deploy ``config`` and wait until deployment ``name`` runs with ``option == value``, healthy."""
    app.redeploy(config)

    def live() -> bool:
        details = serve_details(app)["applications"]["heimdex"]
        deployment = details["deployments"][name]
        return (details["status"] == "RUNNING" and deployment["status"] == "HEALTHY"
                and deployment["deployment_config"].get(option) == value
                and all(r["state"] == "RUNNING" for r in deployment["replicas"]))

    poll(live, timeout_s, f"{name}.{option} == {value!r} live", interval_s=0.5)
    wait_ready(app.url, timeout_s=timeout_s)
