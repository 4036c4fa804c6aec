"""Shipping a finished run as something other than its training checkpoint.

- `merge`: a LoRA/IA3 run folded into a standalone PyTorch model (`hf-finetune export --merge`).
- `onnx`: any run as one ONNX file with its tokenizer, label maps and recipe, fp32 or int8
  (`hf-finetune export --format onnx [--quantize int8]`), checked against the PyTorch model at export.
- `quantize`: the int8 step (onnxruntime's dynamic quantisation).
- `parity`: that check: the exported model and the PyTorch one on the run's evaluation split.
- `runtime`: running an export directory with onnxruntime, called like a `transformers` model (`eval`, `predict`).

Nothing here is imported by the package's `__init__`: the ONNX modules need the `onnx` extra
(``pip install 'hf-finetune[onnx]'``), imported when an export runs.
"""
