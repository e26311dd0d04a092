"""Embedding backends behind one contract; pick one with :func:`load_backend`."""

from __future__ import annotations

from deployments.backends.base import EmbeddingBackend, EmbedOutput, l2_normalize
from deployments.model_paths import ModelPaths
from deployments.registry import ModelSpec


def load_backend(
    spec: ModelSpec, backend: str | None = None, device: str = "auto", threads: int | None = None, *,
    paths: ModelPaths,
) -> EmbeddingBackend:
    """Load the named backend for ``spec``, its weights (and ONNX graphs) found through ``paths``. Heavy imports
    happen here.

    With ``backend`` None: the registry's default on the CPU, ``torch`` (fp16) where the model runs on CUDA.
    """
    name = backend or (spec.default_backend if _on_cpu(device) else "torch")
    if name not in spec.backends:
        raise ValueError(f"model {spec.name!r} has no backend {name!r}; available: {', '.join(spec.backends)}")
    if name == "torch":
        from deployments.backends.torch_backend import TorchBackend

        return TorchBackend(spec, paths, device=device, threads=threads)
    if name in ("onnx-fp32", "onnx-int8"):
        if device not in ("auto", "cpu"):
            raise ValueError(f"backend {name!r} runs on the CPU only; use backend 'torch' for device {device!r}")
        from deployments.backends.onnx_backend import OnnxBackend

        return OnnxBackend(spec, paths, threads=threads, precision="int8" if name == "onnx-int8" else "fp32")
    raise ValueError(f"unknown backend {name!r}")


def _on_cpu(device: str) -> bool:
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


__all__ = ["EmbedOutput", "EmbeddingBackend", "l2_normalize", "load_backend"]
