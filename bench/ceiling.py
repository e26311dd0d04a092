"""The engine ceiling: the fastest the raw model runs here, the denominator of every ratio in the bench.

``python -m bench.ceiling [--quick] [--seconds S] [--threads N] [--json PATH]``

The same texts (``bench.texts`` SHORT and LONG), with the thread count the service's Embedder uses
(``args.threads`` in serve_config.yaml, else every usable core), on each raw engine:

* ``torch``: ``SentenceTransformer(<packaged model dir>).encode``;
* ``onnx-fp32``: ONNX Runtime on the exact graph the service serves (the file
  ``deployments.backends.onnx_export`` exports and the Embedder's ``onnx-fp32`` backend loads), fed
  by the model's tokenizer padded per batch, ORT's default session (spinning pool threads included);
* ``onnx-fp32-fused``: that graph through ``onnxruntime.transformers.optimizer.optimize_model``
  (``model_type='bert'``: fused attention, skip-layer-norm, GELU), still fp32;
* ``onnx-int8``: the int8 graph the ``onnx-int8`` backend serves. Compared with onnx-fp32 only and
  reported beside it: never part of the ceiling.

Each engine is swept over ``BATCH_SIZES`` per text set (every trial bounded by texts *and* seconds) and
timed on one text per call. The ceiling of a set is the MAX over the fp32 engines at their best batch
size, and the one-text ceiling the lowest p50 over them, whichever engine that is: no figure depends
on which engine the service happens to run. Every engine's vectors are compared with the served
graph's (cosine), so a faster engine that computes something else shows.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import timing
from bench.machine import machine_info, usable_cores
from bench.texts import text_set
from bench.timing import cosine_stats, single_latency, sweep

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".heimdex" / "bench"
MODEL = "minilm-l6-v2"
BATCH_SIZES = (1, 8, 16, 32, 64, 128)
FP32_ENGINES = ("torch", "onnx-fp32", "onnx-fp32-fused")
ENGINES = (*FP32_ENGINES, "onnx-int8")
SETS = ("short", "long")
# Texts whose vectors every engine (and the peer) is checked on: short, long, odd.
CHECK_TEXTS = 8


def service_threads() -> int:
    """The intra-op threads of the Embedder as serve_config.yaml deploys it (``args.threads`` or all cores)."""
    import yaml

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = next(a for a in config["applications"] if a.get("name") == "heimdex")
    threads = (app.get("args") or {}).get("threads")
    return int(threads) if threads else usable_cores()


OVER_LIMIT_TEXT = "ok " * 300  # 301 tokens: past the model's 256, so truncation shows


def check_texts(over_limit: bool = True) -> list[str]:
    """Short, long and one-token texts, and (``over_limit``) one longer than the model's token limit."""
    return [*text_set("short")[:3], *text_set("long")[:3], "x", *([OVER_LIMIT_TEXT] if over_limit else [])]


def served_vectors(texts: list[str]) -> list[list[float]]:
    """The service's own vectors for ``texts``: the Embedder's default CPU backend (a subprocess entry point)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from deployments.backends import load_backend
    from deployments.registry import get_model
    from serve_app.settings import get_settings

    backend = load_backend(get_model(MODEL), None, device="cpu", paths=get_settings().model_paths())
    return [[float(x) for x in row] for row in backend.embed(texts).vectors]


def _fused_graph(source: Path, num_heads: int, hidden_size: int) -> tuple[Path, dict[str, int]]:
    """``source`` through ORT's transformer optimizer (cached by the source's size and mtime)."""
    stat = source.stat()
    target = BENCH_DIR / f"{source.stem}.fused-{stat.st_size}-{stat.st_mtime_ns}.onnx"
    stats_file = target.with_suffix(".json")
    if target.exists() and stats_file.exists():
        return target, json.loads(stats_file.read_text())
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    optimized.save_model_to_file(str(tmp))
    os.replace(tmp, target)
    stats_file.write_text(json.dumps(fused))
    return target, fused


class OrtEngine:
    """One ONNX Runtime session on a sentence-embedding graph, fed by the model's tokenizer."""

    def __init__(self, path: Path, weights_dir: Path, max_tokens: int, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.output = self.session.get_outputs()[0].name
        self.tokenizer = Tokenizer.from_file(str(weights_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.enable_padding()  # to the batch's longest (the packaged tokenizer.json pads to 128)

    def __call__(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64)}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (pooled,) = self.session.run([self.output], feeds)
        vectors = np.asarray(pooled, dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def load_engines(threads: int, names: tuple[str, ...] = ENGINES) -> tuple[dict[str, Callable[[list[str]], Any]],
                                                                          dict[str, Any]]:
    """The named raw engines, each ``encode(texts) -> (n, d) array``, and how each was loaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from deployments.backends.onnx_export import export_onnx
    from deployments.registry import get_model
    from serve_app.settings import get_settings

    spec = get_model(MODEL)
    paths = get_settings().model_paths()
    weights = spec.weights_dir(paths)
    engines: dict[str, Callable[[list[str]], Any]] = {}
    info: dict[str, Any] = {}
    for name in names:
        started = time.perf_counter()
        if name == "torch":
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(threads)
            model = SentenceTransformer(str(weights), device="cpu")
            model.max_seq_length = spec.max_tokens
            model.eval()
            engines[name] = functools.partial(_st_encode, model)
            info[name] = {"what": f"SentenceTransformer.encode, torch {torch.__version__}, {threads} threads"}
        else:
            graph = export_onnx(spec, "int8" if name == "onnx-int8" else "fp32", paths)
            what: dict[str, Any] = {"graph": str(graph)}
            if name == "onnx-fp32-fused":
                config = json.loads((weights / "config.json").read_text())
                graph, what["fused_operators"] = _fused_graph(graph, config["num_attention_heads"],
                                                              config["hidden_size"])
                what["graph"] = str(graph)
            engines[name] = OrtEngine(graph, weights, spec.max_tokens, threads)
            info[name] = {"what": f"onnxruntime {_ort_version()}, {threads} intra-op threads", **what}
        engines[name](["warm up"])
        info[name]["load_s"] = time.perf_counter() - started
    return engines, info


def _st_encode(model: Any, texts: list[str]) -> Any:
    return model.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)


def _one(encode: Callable[[list[str]], Any], text: str) -> Any:
    return encode([text])


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _mean_tokens(texts: list[str]) -> float:
    from tokenizers import Tokenizer

    from deployments.registry import get_model
    from serve_app.settings import get_settings

    spec = get_model(MODEL)
    tokenizer = Tokenizer.from_file(str(spec.weights_dir(get_settings().model_paths()) / "tokenizer.json"))
    tokenizer.enable_truncation(spec.max_tokens)
    tokenizer.no_padding()  # the packaged tokenizer.json pads to 128
    return float(np.mean([len(e.ids) for e in tokenizer.encode_batch(texts)]))


def measure_ceiling(quick: bool = False, threads: int | None = None, seconds: float | None = None,
                    sets: tuple[str, ...] = SETS, engines: tuple[str, ...] = ENGINES,
                    batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict[str, Any]:
    """Every engine's sweep and one-text latency, the ceilings (max over fp32 engines) and int8 vs onnx-fp32.

    ``seconds`` bounds each throughput trial (default 2, quick 0.5); the one-text latency gets 4x that."""
    threads = threads or service_threads()
    window = seconds if seconds is not None else (0.5 if quick else 2.0)
    max_texts = 20_000 if not quick else 2_000
    loaded, info = load_engines(threads, engines)
    short = text_set("short")
    pools = {name: text_set(name) for name in sets}
    reference_texts = check_texts()
    reference = loaded["onnx-fp32"](reference_texts) if "onnx-fp32" in loaded else None
    out: dict[str, Any] = {"model": MODEL, "threads": threads, "batch_sizes": list(batch_sizes),
                           "trial_seconds": window, "mean_tokens": {s: _mean_tokens(pools[s][:500]) for s in sets},
                           "engines": {}}
    for name, encode in loaded.items():
        engine: dict[str, Any] = {**info[name], "sets": {}}
        if reference is not None:
            engine["agreement_with_served_graph"] = cosine_stats(encode(reference_texts), reference)
        for set_name in sets:
            engine["sets"][set_name] = sweep(encode, pools[set_name], batch_sizes, window, max_texts)
            print(f"[ceiling] {name:<16} {set_name:<5} " + ", ".join(
                f"{t['batch_size']}: {t['texts_per_s']:.0f}" for t in engine["sets"][set_name]["trials"]), flush=True)
        engine["single"] = single_latency(functools.partial(_one, encode), short[1000:], calls=2000,
                                          max_seconds=4 * window)
        out["engines"][name] = engine
    out.update(ceilings(out["engines"], sets))
    return out


def ceilings(engines: dict[str, Any], sets: tuple[str, ...] = SETS) -> dict[str, Any]:
    """Per set the best fp32 engine at its best batch size; the lowest fp32 one-text p50; int8 vs onnx-fp32."""
    fp32 = {k: v for k, v in engines.items() if k in FP32_ENGINES}
    out: dict[str, Any] = {"ceiling": {}, "int8": {}}
    for set_name in sets:
        rated = [(name, e["sets"][set_name]) for name, e in fp32.items() if e["sets"][set_name]["best_texts_per_s"]]
        if rated:
            name, top = max(rated, key=lambda r: r[1]["best_texts_per_s"])
            out["ceiling"][set_name] = {"texts_per_s": top["best_texts_per_s"], "engine": name,
                                        "batch_size": top["best_batch_size"]}
        if "onnx-int8" in engines and "onnx-fp32" in engines:
            int8 = engines["onnx-int8"]["sets"][set_name]["best_texts_per_s"]
            base = engines["onnx-fp32"]["sets"][set_name]["best_texts_per_s"]
            out["int8"][set_name] = {"onnx_int8_texts_per_s": int8, "onnx_fp32_texts_per_s": base,
                                     "speedup_vs_onnx_fp32": int8 / base if int8 and base else None}
    timed = [(name, e["single"]) for name, e in fp32.items() if e["single"].get("p50_ms") is not None]
    if timed:
        name, single = min(timed, key=lambda r: r[1]["p50_ms"])
        out["ceiling"]["single"] = {"p50_ms": single["p50_ms"], "p99_ms": single["p99_ms"], "engine": name}
    return out


def describe(result: dict[str, Any]) -> list[str]:
    """Printable lines: every engine's sweep, its one-text latency and agreement, and the ceilings."""
    lines = [f"engine ceiling: {result['model']}, {result['threads']} threads, trials of "
             f"{result['trial_seconds']:g} s; texts/s by batch size"]
    for name, engine in result["engines"].items():
        agreement = engine.get("agreement_with_served_graph", {})
        single = engine["single"]
        for set_name, swept in engine["sets"].items():
            trials = ", ".join(f"{t['batch_size']}: {t['texts_per_s']:.0f}" for t in swept["trials"]
                               if t.get("texts_per_s"))
            lines.append(f"  {name:<16} {set_name:<5} ({result['mean_tokens'][set_name]:.0f} tok) {trials}")
        lines.append(f"  {name:<16} one text p50 {single['p50_ms']:.2f} ms, p99 {single['p99_ms']:.2f} ms; "
                     f"cosine to the served graph min {agreement.get('cos_min', float('nan')):.6f}")
    for set_name, top in result["ceiling"].items():
        if set_name == "single":
            lines.append(f"  ceiling one text: p50 {top['p50_ms']:.2f} ms ({top['engine']})")
        else:
            lines.append(f"  ceiling {set_name}: {top['texts_per_s']:.1f} texts/s ({top['engine']}, batch "
                         f"{top['batch_size']})")
    for set_name, int8 in result.get("int8", {}).items():
        if int8.get("speedup_vs_onnx_fp32"):
            lines.append(f"  int8 {set_name}: onnx-int8 {int8['onnx_int8_texts_per_s']:.1f} vs onnx-fp32 "
                         f"{int8['onnx_fp32_texts_per_s']:.1f} texts/s ({int8['speedup_vs_onnx_fp32']:.2f}x)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = timing.parser("python -m bench.ceiling", __doc__, "0.5 s trials", "seconds per trial (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="default: the Embedder's, from serve_config.yaml")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {','.join(ENGINES)}")
    args = parser.parse_args(argv)
    engines = tuple(e for e in args.engines.split(",") if e)
    if "onnx-fp32" not in engines:
        parser.error("onnx-fp32 is the reference the others are checked against: keep it in --engines")
    result = {"machine": machine_info(), **measure_ceiling(args.quick, args.threads, args.seconds, engines=engines)}
    print("\n".join(describe(result)))
    timing.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
