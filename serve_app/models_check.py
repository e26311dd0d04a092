"""Resolving a model name from a request into a registry entry the gateway can serve."""

from __future__ import annotations

from deployments.model_paths import ModelPaths
from deployments.registry import ModelNotInstalledError, ModelSpec, UnknownModelError, get_model
from serve_app.errors import ApiError


def resolve_model(name: str | None, default: str, served: list[str], paths: ModelPaths,
                  field: str = "model") -> ModelSpec:
    """The spec for ``name``; 404 for unknown names (listing known ones), 400 when not installed (its weights
    looked for through ``paths``) or not served."""
    try:
        spec = get_model(name or default)
    except UnknownModelError as exc:
        raise ApiError(404, "model_not_found", str(exc), field=field) from None
    if spec.name not in served:
        if not spec.is_installed(paths):
            raise ApiError(400, "model_not_installed", str(ModelNotInstalledError(spec.name, spec.install_hint)),
                           field=field)
        raise ApiError(400, "model_not_served",
                       f"model {spec.name!r} is installed but not deployed; served: {', '.join(served)}",
                       field=field)
    return spec
