"""What the figures were measured on: recorded next to every result file.

Standard library only (psutil where installed): ``bench/gpu_profile.py --run`` records these facts on a
GPU machine where the project's dependencies are not installed.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction sets that decide int8 and fp32 kernel speed (ONNX Runtime's MLAS picks kernels by them).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of SIMD_FLAGS the CPU reports (empty where /proc/cpuinfo is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in SIMD_FLAGS if flag in present]
    except OSError:
        pass
    return []


def usable_cores() -> int:
    """The cores this process may run on: what the Embedder's backends use for their threads by default."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, versions, date, and the load average when the run started (noise hint)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    try:
        import psutil

        physical, memory_gb = psutil.cpu_count(logical=False), round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        physical = memory_gb = None
    return {
        "cpu_model": cpu_model(),
        "cpu_simd": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "usable_cores": usable_cores(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "sentence_transformers": _version("sentence-transformers"),
        "onnxruntime": _version("onnxruntime"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": load,
    }
