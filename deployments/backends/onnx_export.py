"""Export a registered model to ONNX graphs for the ``onnx-fp32`` and ``onnx-int8`` CPU backends.

The graph is the model's transformer plus mean pooling (no normalisation: ``base.py`` normalises
for every backend), exported from the packaged weights with ``torch.onnx.export`` (``fp32``) and
then dynamically quantised to int8 weights with ONNX Runtime (``int8``, made from the fp32 file).
Nothing here reaches a model hub.

The results are cached at ``<ModelPaths.onnx_cache>/<model>-<version>/model.<precision>.onnx``; the caller
passes the paths (Settings: ``HEIMDEX_ONNX_CACHE`` when set, else ``~/.cache/heimdex/onnx``). Each is written
to a temporary file and moved into place with ``os.replace`` under an ``fcntl`` lock, so concurrent
replicas never read half a file and never export twice at once.

Run ``heimdex models export [MODEL]`` at set-up time to export both and print the paths
(``python -m deployments.backends.onnx_export [MODEL] --cache DIR`` names the ONNX cache itself).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

from deployments.file_lock import exclusive_file_lock
from deployments.model_paths import ModelPaths
from deployments.registry import ModelSpec, get_model

DEFAULT_MODEL = "minilm-l6-v2"

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
OPSET = 17

# Quantisation recipe, chosen by measurement on all-MiniLM-L6-v2 on an AVX2 (no VNNI) CPU against the
# fp32 torch reference over the 58 varied texts of tests/integration/test_onnx_backend.py:
# - int8 weights on MatMul nodes with a constant weight only (the two attention MatMuls, whose
#   inputs are both activations, stay fp32); Gather (the embedding table) stays fp32 as well.
# - per-channel weight scales: min cosine 0.81 -> 0.96 over per-tensor, at no measurable speed cost.
# - no reduce_range (7-bit weights): it cut the min cosine to 0.52-0.73.
# - QInt8 weights: QUInt8 (the u8u8 kernels, free of AVX2 saturation) measured no better.
# - the MatMuls most sensitive to int8 (each one alone, quantised, costs the most cosine) stay fp32:
#   with every MatMul quantised the min cosine is 0.963 (very short texts such as "x" and "ok" suffer
#   most); keeping these 16 of 36 in fp32 gives 0.993. SmoothQuant-style scaling measured no help.
QUANT_OP_TYPES = ("MatMul",)
QUANT_PER_CHANNEL = True
QUANT_REDUCE_RANGE = False
FP32_MATMULS = (
    "layer.4/intermediate/dense",
    "layer.0/output/dense",
    "layer.0/attention/output/dense",
    "layer.2/output/dense",
    "layer.3/intermediate/dense",
    "layer.2/intermediate/dense",
    "layer.4/attention/self/value",
    "layer.5/attention/self/value",
    "layer.1/output/dense",
    "layer.3/output/dense",
    "layer.1/attention/self/key",
    "layer.3/attention/self/key",
    "layer.2/attention/self/key",
    "layer.1/intermediate/dense",
    "layer.4/output/dense",
    "layer.1/attention/output/dense",
)


def model_filename(precision: Precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown ONNX precision {precision!r}; expected one of {PRECISIONS}")
    return f"model.{precision}.onnx"


def cache_path(spec: ModelSpec, precision: Precision, paths: ModelPaths) -> Path:
    """Where the ``precision`` graph for ``spec`` lives (whether or not it exists yet). Exports are keyed by
    model and version, so every checkout and process on a machine can share them."""
    return paths.onnx_cache / f"{spec.name}-{spec.version}" / model_filename(precision)


def _check_mean_pooling(weights_dir: Path) -> None:
    """The exported graph hard-codes mean pooling; refuse a model configured otherwise."""
    config_file = weights_dir / "1_Pooling" / "config.json"
    if not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
    if not config.get("pooling_mode_mean_tokens", True) or others:
        raise ValueError(f"ONNX export supports mean pooling only; {config_file} asks for {others or 'none'}")


def input_names(encoder: Any) -> tuple[str, ...]:
    """The graph inputs for ``encoder``: the INPUT_NAMES its ``forward`` accepts, in that order."""
    import inspect

    accepted = inspect.signature(encoder.forward).parameters
    return tuple(name for name in INPUT_NAMES if name in accepted)


def _export_fp32(spec: ModelSpec, out_file: Path, paths: ModelPaths) -> None:
    """Trace transformer + mean pooling to an fp32 ONNX file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    weights = spec.weights_dir(paths)
    _check_mean_pooling(weights)
    encoder = AutoModel.from_pretrained(str(weights), attn_implementation="eager")
    encoder.eval()

    # BERT-style encoders (MiniLM) take token_type_ids; MPNet has none, so its graph has two inputs
    # (OnnxBackend feeds token_type_ids only to a graph that declares it).
    names = input_names(encoder)

    class MeanPooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            features = dict(zip(names, inputs, strict=True))
            hidden = self.inner(**features).last_hidden_state
            attention_mask = features["attention_mask"]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return summed / counts

    wrapper = MeanPooled(encoder).eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic[OUTPUT_NAME] = {0: "batch"}
    with torch.inference_mode(), warnings.catch_warnings():
        # The legacy exporter's deprecation notice and tracer warnings about shape-derived Python
        # values in transformers' mask code (constant for any input here) are noise at set-up time.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (ids, mask, torch.zeros_like(ids))[: len(names)],
            str(out_file),
            input_names=list(names),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def quantize_int8(
    fp32_file: Path,
    out_file: Path,
    *,
    op_types: tuple[str, ...] = QUANT_OP_TYPES,
    per_channel: bool = QUANT_PER_CHANNEL,
    reduce_range: bool = QUANT_REDUCE_RANGE,
    fp32_matmuls: tuple[str, ...] = FP32_MATMULS,
) -> None:
    """Dynamic int8 quantisation of ``fp32_file`` into ``out_file`` (weights int8, activations on the fly).

    MatMul nodes whose name contains ``/<pattern>/`` for a pattern in ``fp32_matmuls`` stay fp32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_file), load_external_data=False).graph
    excluded = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and any(f"/{pattern}/" in node.name for pattern in fp32_matmuls)
    ]
    if len(excluded) != len(fp32_matmuls):
        raise RuntimeError(f"expected {len(fp32_matmuls)} MatMuls to keep in fp32, found {len(excluded)}")

    extra: dict[str, Any] = {"MatMulConstBOnly": True}
    quantize_dynamic(
        fp32_file,
        out_file,
        op_types_to_quantize=list(op_types),
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        extra_options=extra,
    )


def export_onnx(spec: ModelSpec, precision: Precision, paths: ModelPaths, out_dir: Path | None = None) -> Path:
    """The path of the ``precision`` ONNX graph for ``spec``, exporting it first when it is missing.

    The weights come from ``paths``; the graph goes to ``paths.onnx_cache``, or to ``out_dir`` when given (the
    file is ``out_dir/model.<precision>.onnx``). The int8 graph is quantised from the fp32 one, which is exported
    (and kept) on the way.
    """
    target = (out_dir / model_filename(precision)) if out_dir is not None else cache_path(spec, precision, paths)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_file_lock(target.with_name(target.name + ".lock")):
        if target.exists():  # another replica exported it while we waited for the lock
            return target
        source = export_onnx(spec, "fp32", paths, out_dir) if precision == "int8" else None
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
            written = Path(tmp) / target.name
            if source is None:
                _export_fp32(spec, written, paths)
            else:
                quantize_int8(source, written)
            os.replace(written, target)
    return target


def export_all(model: str, precisions: list[Precision] | None, paths: ModelPaths,
               out_dir: Path | None = None) -> int:
    """Export ``model``'s graphs (default: both precisions) and print their paths; the exit status."""
    for precision in precisions or PRECISIONS:
        print(export_onnx(get_model(model), precision, paths, out_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export a registered model to ONNX (fp32 and int8); print the paths. `heimdex models export` "
                    "does the same with the caches from Settings (HEIMDEX_ONNX_CACHE, HEIMDEX_MODEL_CACHE).")
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"registry name (default: {DEFAULT_MODEL})")
    parser.add_argument("--precision", choices=PRECISIONS, action="append", default=None,
                        help="export only this precision (repeatable; default: both)")
    parser.add_argument("--cache", type=Path, default=None, help="the ONNX cache directory")
    parser.add_argument("--model-cache", type=Path, default=None,
                        help="the model cache a split-zip model was installed into (default: ~/.cache/heimdex/models)")
    parser.add_argument("--out-dir", type=Path, default=None, help="directory to write model.<precision>.onnx into")
    args = parser.parse_args(argv)
    if args.cache is None and args.out_dir is None:
        parser.error("name the ONNX cache (--cache DIR) or the output directory (--out-dir DIR); "
                     "`heimdex models export` takes the cache from Settings")
    default = ModelPaths.default()
    paths = ModelPaths(model_cache=args.model_cache or default.model_cache, onnx_cache=args.cache or default.onnx_cache)
    return export_all(args.model, args.precision, paths, args.out_dir)


if __name__ == "__main__":
    raise SystemExit(main())
