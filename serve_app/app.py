"""``build_app``: the ``import_path`` target that wires Heimdex's deployments together.

``serve run serve_config.yaml`` / ``serve deploy serve_config.yaml`` call it with the ``args`` of
the application in the config; tests and ``heimdex up`` call it directly.
"""

from __future__ import annotations

from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from deployments.embedder import Embedder
from deployments.registry import get_model
from serve_app.db import upgrade_database
from serve_app.gateway import Gateway
from serve_app.relay import OutboxRelay
from serve_app.settings import get_settings


class AppArgs(BaseModel):
    """The ``args`` of the Heimdex application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=lambda: ["minilm-l6-v2"], min_length=1,
                              description="Registered models to deploy an Embedder for; the first is the default.")
    backend: str | None = Field(None, description="Backend for every Embedder; None = each model's registry default.")
    device: str = Field("auto", description="auto, cpu or cuda.")
    threads: int | None = Field(None, ge=1, description="Intra-op threads per Embedder replica.")


# @serve.deployment returns Deployment objects; mypy only sees the decorated classes.
EMBEDDER = cast(Deployment, Embedder)
GATEWAY = cast(Deployment, Gateway)
RELAY = cast(Deployment, OutboxRelay)


def embedder_name(model: str, default_model: str) -> str:
    return "Embedder" if model == default_model else f"Embedder-{model}"


def build_app(args: dict[str, Any] | None = None) -> Application:
    parsed = AppArgs.model_validate(args or {})
    settings = get_settings()
    embedders: dict[str, Any] = {}
    paths = settings.model_paths()  # the Embedders read no environment: where the weights are travels with them
    for model in parsed.models:
        get_model(model)  # refuse unknown names at deploy time, listing the known ones
        embedders[model] = EMBEDDER.options(name=embedder_name(model, parsed.models[0])).bind(
            model=model, backend=parsed.backend, device=parsed.device, threads=parsed.threads,
            fault_injection=settings.env != "production", paths=paths)
    # Migrations run once per deploy, before any replica opens the database.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    return GATEWAY.bind(embedders, RELAY.bind(embedders))
