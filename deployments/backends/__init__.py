"""Embedding backends behind one contract; pick one with :func:`load_backend`."""

from __future__ import annotations

from deployments.backends.base import EmbeddingBackend, EmbedOutput, l2_normalize
from deployments.registry import ModelSpec


def load_backend(
    spec: ModelSpec, backend: str | None = None, device: str = "auto", threads: int | None = None
) -> EmbeddingBackend:
    """Load the named backend for ``spec`` (its registry default when None). Heavy imports happen here."""
    name = backend or spec.default_backend
    if name not in spec.backends:
        raise ValueError(f"model {spec.name!r} has no backend {name!r}; available: {', '.join(spec.backends)}")
    if name == "torch":
        from deployments.backends.torch_backend import TorchBackend

        return TorchBackend(spec, device=device, threads=threads)
    if name == "onnx-int8":
        from deployments.backends.onnx_backend import OnnxBackend

        return OnnxBackend(spec, threads=threads)
    raise ValueError(f"unknown backend {name!r}")


__all__ = ["EmbedOutput", "EmbeddingBackend", "l2_normalize", "load_backend"]
