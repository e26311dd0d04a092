"""The bench's one set of measuring helpers: percentiles, bounded timing loops, vector agreement.

Every bench module that times something uses these, so a figure means the same wherever it comes
from: ``throughput_trial`` (one warm-up call, then calls until a text count *or* a duration is
reached), ``sweep`` (the trial at each batch size, and the best), ``single_latency`` (one text per
call), ``percentiles`` (p50/p90/p99/mean/min/max in ms) and ``cosine_stats`` (row-wise agreement of
two vector sets). ``write_json`` writes a result file whole or not at all; ``in_subprocess`` runs a
measurement in a fresh spawned process, so the models and thread pools it loads leave with it.
Machine facts are :mod:`bench.machine`.

Imports only the standard library and numpy: ``bench/gpu_profile.py --run`` uses it on a GPU machine
where nothing else of the project's dependencies is installed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# A hook called before the clock is read (e.g. torch.cuda.synchronize), so queued device work counts.
Sync = Callable[[], None] | None


def percentiles(samples_ms: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/mean/min/max of latency samples in ms (None for each when there are none)."""
    keys = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")
    if not samples_ms:
        return dict.fromkeys(keys)
    arr = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = (float(x) for x in np.percentile(arr, [50, 90, 99]))
    return dict(zip(keys, (p50, p90, p99, float(arr.mean()), float(arr.min()), float(arr.max())), strict=True))


def take(pool: Sequence[str], offset: int, n: int) -> list[str]:
    """``n`` texts from ``pool`` starting at ``offset``, wrapping round."""
    size = len(pool)
    return [pool[(offset + i) % size] for i in range(n)]


def _sync(sync: Sync) -> None:
    if sync is not None:
        sync()


def throughput_trial(encode: Callable[[list[str]], object], pool: Sequence[str], batch_size: int,
                     max_seconds: float, max_texts: int, sync: Sync = None) -> dict[str, Any]:
    """texts/s of ``encode(batch)`` over ``batch_size``-text batches from ``pool``, after one warm-up call,
    until ``max_texts`` texts or ``max_seconds`` (whichever first; at least one call)."""
    encode(take(pool, 0, batch_size))
    _sync(sync)
    done = calls = 0
    start = time.perf_counter()
    while calls == 0 or (done < max_texts and time.perf_counter() - start < max_seconds):
        encode(take(pool, done, batch_size))
        done += batch_size
        calls += 1
    _sync(sync)
    elapsed = time.perf_counter() - start
    return {"batch_size": batch_size, "calls": calls, "texts": done, "elapsed_s": elapsed,
            "texts_per_s": done / elapsed if elapsed > 0 else None, "ms_per_call": 1000.0 * elapsed / calls}


def best(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the highest texts/s (None when none has a rate)."""
    rated = [t for t in trials if t.get("texts_per_s")]
    return max(rated, key=lambda t: t["texts_per_s"]) if rated else None


def sweep(encode: Callable[[list[str]], object], pool: Sequence[str], batch_sizes: Sequence[int],
          max_seconds: float, max_texts: int, sync: Sync = None,
          before_trial: Callable[[int], bool] | None = None,
          after_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """``throughput_trial`` at each batch size, and the best. ``before_trial(batch_size)`` returning False
    skips that size (a spent budget); ``after_trial(trial)`` may add to the trial (peak memory, a log line)."""
    trials: list[dict[str, Any]] = []
    for batch_size in batch_sizes:
        if before_trial is not None and not before_trial(batch_size):
            trials.append({"batch_size": batch_size, "skipped": "run budget spent"})
            continue
        trial = throughput_trial(encode, pool, batch_size, max_seconds, max_texts, sync)
        if after_trial is not None:
            after_trial(trial)
        trials.append(trial)
    top = best(trials)
    return {"trials": trials, "best_batch_size": top["batch_size"] if top else None,
            "best_texts_per_s": top["texts_per_s"] if top else None}


def single_latency(encode_one: Callable[[str], object], texts: Sequence[str], calls: int, max_seconds: float,
                   sync: Sync = None, warmup: int = 5) -> dict[str, Any]:
    """Latency of encoding one text per call over ``calls`` different texts (bounded by ``max_seconds``)."""
    for text in texts[:warmup]:
        encode_one(text)
    _sync(sync)
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(calls):
        if time.perf_counter() - start >= max_seconds:
            break
        sent = time.perf_counter()
        encode_one(texts[i % len(texts)])
        _sync(sync)
        samples.append((time.perf_counter() - sent) * 1000.0)
    return {"calls": len(samples), **percentiles(samples)}


def cosine_stats(got: npt.ArrayLike, reference: npt.ArrayLike) -> dict[str, float]:
    """Row-wise cosine between two (n, d) arrays: min, mean, and the largest absolute element difference
    of the normalised rows."""
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = np.sum(an * bn, axis=1)
    return {"n": len(cos), "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "max_abs_diff": float(np.abs(an - bn).max())}


class Budget:
    """A wall-clock budget for a whole run; sections and trials check it before they start."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()


def parser(prog: str, doc: str | None, quick: str, seconds: str) -> argparse.ArgumentParser:
    """A bench command line with the flags every measuring module has: --quick, --seconds, --json."""
    out = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    out.add_argument("--quick", action="store_true", help=quick)
    out.add_argument("--seconds", type=float, default=None, help=seconds)
    out.add_argument("--json", type=Path, default=None, help="also write the result here")
    return out


def write_json(path: Path | None, data: Any) -> None:
    """``data`` as indented JSON at ``path`` (folders made; written whole or not at all); None: nothing."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def in_subprocess(fn: Callable[..., Any], *args: Any, timeout_s: float = 1800.0, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh spawned process (not forked: the caller may hold Ray or torch
    threads); the models, thread pools and memory it takes leave with the process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result(timeout=timeout_s)
