"""int8 weights for an ONNX export: onnxruntime's dynamic quantisation.

Dynamic quantisation stores the weights of every MatMul with a constant weight and of the embedding lookups
(Gather) as 8-bit integers with their scales; the activations are quantised batch by batch at run time, so no
calibration data is needed. Settings:

- signed int8 weights with the full 8-bit range (``reduce_range=False``): what onnxruntime recommends on
  x86 CPUs with VNNI (AVX512-VNNI, AMD Zen 4 and later); on older x86 CPUs its u8s8 kernels may saturate.
- one scale per output channel (``per_channel=True``): on a fine-tuned MiniLM it kept more of the fp32
  accuracy than one scale per tensor, for the same file size and speed (the figures: docs/figures.md#inference).
- the word embeddings quantised too (the Gather on an initializer): they are half of a small BERT's weights,
  and without them the file stays above 60% of the fp32 one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FinetuneError

#: `--quantize` methods -> what they mean (the flag's help and its error name them)
METHODS = {"int8": "dynamic int8 weights (onnxruntime quantize_dynamic)"}


def check_method(method: str | None) -> None:
    """``--quantize``: None (fp32) or one of `METHODS`, else a FinetuneError naming the choices."""
    if method is not None and method not in METHODS:
        raise FinetuneError(
            f"--quantize: unknown quantisation method {method!r}; expected one of: {', '.join(METHODS)} "
            "(or leave --quantize out for an fp32 export)."
        )


def quantize(source: Path, target: Path, method: str) -> dict[str, Any]:
    """Quantise the ONNX model ``source`` into ``target`` by ``method``; returns the settings for export.json."""
    check_method(method)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = {"per_channel": True, "reduce_range": False}
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        **settings,
    )
    return {
        "method": "dynamic",
        "name": method,
        "weight_type": "int8",
        "activation_type": "uint8 (quantised per batch at run time)",
        **settings,
        "quantized_ops": quantized_ops(target),
    }


def quantized_ops(path: Path) -> dict[str, int]:
    """How many nodes of each integer op type the quantised graph holds (MatMulInteger, DequantizeLinear...)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if "Integer" in node.op_type or "quant" in node.op_type.lower():
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
