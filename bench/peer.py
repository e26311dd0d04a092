"""The peer: Infinity (infinity-emb) serving the same model, measured with the same load generator.

``python -m bench.peer [--quick] [--seconds S] [--json PATH]`` (``bench.run`` calls :func:`measure_peer`)

1. **venv**: Infinity gets a virtual environment of its own, ``.heimdex/bench/infinity-venv``
   (git-ignored; never the project's): ``torch==2.13.0`` first (pip takes the CPU build lying on this
   machine's disk, not a multi-GB CUDA one), then ``infinity-emb[server,torch,optimum]`` with the pins
   in ``PINS``. A stamp file records what was installed; a venv whose stamp matches and whose imports
   work is reused, anything else is rebuilt (a few minutes).
2. **export**: ``optimum-cli export onnx --library-name transformers --task feature-extraction`` of
   the packaged model directory (``HF_HUB_OFFLINE=1``) into ``.heimdex/bench/infinity-onnx``: the
   transformer only, Infinity pools. Reused while its stamp matches.
3. **serve**: ``infinity_emb v2 --engine optimum --pooling-method mean --onnx-disable-optimize`` from
   that directory on a free loopback port (``--pooling-method mean`` matters: without it Infinity
   silently takes the CLS token); ORT picks its threads (= physical cores) as it would for any user.
4. **check**: its vectors against the service's own (the Embedder's default backend) on a few texts:
   cosine >= ``MIN_COSINE`` or the peer is not measured at all (a text past the model's 256 tokens is
   reported apart: Infinity truncates at 512).
5. **measure**: the load modes of :func:`bench.run.load_modes` (32 clients x 1 short text, 4 x 32 short,
   4 x 32 long, 1 client x 1 text) through ``bench.load`` (one HTTP client per connection), one after the
   other; nothing else of the bench runs meanwhile. Then the server is stopped.

Infinity has no asynchronous ingest (jobs) or bulk path: those rows have no peer figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import timing
from bench.ceiling import BENCH_DIR, MODEL, OVER_LIMIT_TEXT, check_texts, served_vectors
from bench.timing import cosine_stats, in_subprocess

VENV = BENCH_DIR / "infinity-venv"
ONNX_DIR = BENCH_DIR / "infinity-onnx"
LOG = BENCH_DIR / "infinity.log"
STAMP = ".heimdex-peer.json"
TORCH_PIN = "torch==2.13.0"
INFINITY_PIN = "infinity-emb[server,torch,optimum]==0.0.78"
# What pip resolved to when this was last built and measured: later releases of these have broken the
# export or the server before, so the peer is pinned as the service is.
PINS = ("optimum==2.1.0", "optimum-onnx==0.1.0", "transformers==4.57.6", "sentence-transformers==3.4.1",
        "onnxruntime==1.32.0", "onnx==1.23.2", "tokenizers==0.22.2")
MIN_COSINE = 0.9999
DEFAULT_BATCH_SIZE = 32  # Infinity's own default
START_TIMEOUT_S = 240.0


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {done.returncode}; see {log}")


def _stamp_matches(folder: Path, want: dict[str, Any]) -> bool:
    try:
        return bool(json.loads((folder / STAMP).read_text()) == want)
    except (OSError, ValueError):
        return False


def ensure_venv() -> dict[str, Any]:
    """Infinity's own venv, built or reused (see the module docstring); returns what was done and how long."""
    python = VENV / "bin" / "python"
    want = {"python": sys.version.split()[0], "requirements": [TORCH_PIN, INFINITY_PIN, *PINS]}
    probe = [str(python), "-c", "import infinity_emb, optimum.onnxruntime, torch; print(infinity_emb.__version__)"]
    if _stamp_matches(VENV, want) and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return {"venv": str(VENV), "built": False}
    started = time.perf_counter()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    log = BENCH_DIR / "infinity-venv-build.log"
    log.write_text("")
    _run([sys.executable, "-m", "venv", "--clear", str(VENV)], log)
    _run([str(python), "-m", "pip", "install", "-q", TORCH_PIN], log)  # first: the CPU build on this disk
    _run([str(python), "-m", "pip", "install", "-q", INFINITY_PIN, *PINS, TORCH_PIN], log)
    _run(probe, log)
    (VENV / STAMP).write_text(json.dumps(want))
    return {"venv": str(VENV), "built": True, "build_s": time.perf_counter() - started, "log": str(log)}


def ensure_onnx(model_dir: Path) -> dict[str, Any]:
    """The model exported by optimum-cli for Infinity's optimum engine, made or reused."""
    want = {"model_dir": str(model_dir), "model_mtime_ns": (model_dir / "model.safetensors").stat().st_mtime_ns,
            "requirements": [INFINITY_PIN, *PINS]}
    if _stamp_matches(ONNX_DIR, want) and (ONNX_DIR / "model.onnx").exists():
        return {"onnx_dir": str(ONNX_DIR), "exported": False}
    started = time.perf_counter()
    tmp = ONNX_DIR.with_name(ONNX_DIR.name + ".tmp")
    for stale in (tmp, ONNX_DIR):
        shutil.rmtree(stale, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # --task: optimum cannot infer it from a local directory.
    _run([str(VENV / "bin" / "optimum-cli"), "export", "onnx", "--library-name", "transformers",
          "--task", "feature-extraction", "--model", str(model_dir), str(tmp)], BENCH_DIR / "infinity-export.log", env)
    tmp.rename(ONNX_DIR)
    (ONNX_DIR / STAMP).write_text(json.dumps(want))
    return {"onnx_dir": str(ONNX_DIR), "exported": True, "export_s": time.perf_counter() - started}


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"Infinity exited {proc.returncode} while starting; see {LOG}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.perf_counter() - started
        time.sleep(0.5)
    raise TimeoutError(f"Infinity not healthy after {timeout_s:.0f}s; see {LOG}")


@contextlib.contextmanager
def infinity_server(batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[dict[str, Any]]:
    """Infinity on a free loopback port, serving ONNX_DIR as ``MODEL``; stopped (its process group) at exit."""
    from cluster.local import free_port

    port = free_port()
    cmd = [str(VENV / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", MODEL,
           "--engine", "optimum", "--device", "cpu", "--pooling-method", "mean", "--onnx-disable-optimize",
           "--batch-size", str(batch_size), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0", "INFINITY_HOME": str(BENCH_DIR)}
    with LOG.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ONNX_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started_s = _wait_healthy(url, proc, START_TIMEOUT_S)
        yield {"url": url, "pid": proc.pid, "command": " ".join(cmd), "start_s": started_s, "batch_size": batch_size}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group (start_new_session above)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def check_vectors(url: str) -> dict[str, Any]:
    """Infinity's vectors for ``check_texts()`` against the service's (computed in a subprocess).

    Texts past the model's 256 tokens are reported apart and not held to ``MIN_COSINE``: Infinity's
    optimum engine truncates at ``max_position_embeddings`` (512), not at the model's ``max_seq_length``
    (256) as sentence-transformers and the service do. Every text the load modes send is shorter."""
    texts = check_texts()
    reference = in_subprocess(served_vectors, texts)
    response = httpx.post(f"{url}/embeddings", json={"input": texts, "model": MODEL}, timeout=120)
    response.raise_for_status()
    got = [item["embedding"] for item in sorted(response.json()["data"], key=lambda d: d["index"])]
    within = [i for i, text in enumerate(texts) if text != OVER_LIMIT_TEXT]
    stats = cosine_stats([got[i] for i in within], [reference[i] for i in within])
    over = [i for i in range(len(texts)) if i not in within]
    past_limit = cosine_stats([got[i] for i in over], [reference[i] for i in over])["cos_min"] if over else None
    return {**stats, "texts": len(within), "min_cosine": MIN_COSINE, "ok": stats["cos_min"] >= MIN_COSINE,
            "cos_past_token_limit": past_limit}


def measure_peer(quick: bool = False, seconds: float | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 runner: Any = None) -> dict[str, Any]:
    """Build/reuse, export, serve, check and measure Infinity; the load results per mode."""
    from bench.load import LoadRunner
    from bench.run import load_modes, profile_for
    from deployments.registry import get_model
    from serve_app.settings import get_settings

    out: dict[str, Any] = {"peer": "infinity-emb 0.0.78 (optimum engine, ONNX Runtime, fp32)"}
    out["venv"] = ensure_venv()
    out["export"] = ensure_onnx(get_model(MODEL).weights_dir(get_settings().model_paths()))
    profile = profile_for(quick, seconds)
    with contextlib.ExitStack() as stack:
        if runner is None:
            runner = stack.enter_context(LoadRunner())
        server = stack.enter_context(infinity_server(batch_size))
        out["server"] = server
        out["vectors"] = check_vectors(server["url"])
        if not out["vectors"]["ok"]:
            return {**out, "skipped": f"Infinity's vectors differ from the service's: min cosine "
                                      f"{out['vectors']['cos_min']:.6f} < {MIN_COSINE}"}
        out["modes"] = {}
        for mode, spec in load_modes(f"{server['url']}/embeddings", profile).items():
            out["modes"][mode] = runner.run(spec).as_dict()
            print(f"[peer] {mode}: {out['modes'][mode]['items_per_s']:.1f} texts/s, p50 "
                  f"{out['modes'][mode]['p50_ms'] or float('nan'):.1f} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = timing.parser("python -m bench.peer", __doc__, "short load runs", "at most this long per load mode")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="Infinity's --batch-size")
    args = parser.parse_args(argv)
    result = measure_peer(args.quick, args.seconds, args.batch_size)
    print(json.dumps({k: v for k, v in result.items() if k != "modes"}, indent=2, default=str))
    timing.write_json(args.json, result)
    return 0 if "skipped" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
