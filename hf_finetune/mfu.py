"""Model FLOPs utilisation: the model FLOPs a training run achieved per second over this machine's peak.

*Model FLOPs* count the matrix multiplications the model needs per real (non-padding) token, in the
spirit of the usual ``6 x parameters x tokens`` estimate, but aware of what the strategy trains:

- forward: 2 FLOPs per weight of every ``nn.Linear`` (LoRA's A/B projections included);
- backward, input gradients: 2 per weight of every ``nn.Linear`` from the first trainable parameter on
  (nothing below it needs a gradient, so frozen bottom layers cost no backward);
- backward, weight gradients: 2 per *trainable* ``nn.Linear`` weight.

Full fine-tuning gives exactly ``6 x N`` per token with N the linear (non-embedding) weights. Embedding
lookups, attention scores, layer norms, padding tokens and activation-checkpointing recomputation are not
counted, so MFU measures useful work. One approximation: the pooler and a sequence-classification
head run once per sequence but are counted per token (for MiniLM 1.4% of its linear weights). The *peak* is the best dense matmul rate measured on this machine
in the training dtype (`hf-finetune bench --calibrate`), cached per device, dtype, thread count and
torch version.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

from .cache import cache_dir
from .outputs import atomic_write_text

logger = logging.getLogger("hf_finetune")

DTYPES = ("float32", "bfloat16", "float16")
CUDA_DTYPES = ("tfloat32", *DTYPES)  # tfloat32: fp32 matmuls on tensor cores (training.tf32=true)


def training_dtype(args, device: str) -> str:
    """The precision a run with TrainingArguments ``args`` trains its matmuls in on ``device``: bfloat16 or
    float16 (mixed precision), tfloat32 (fp32 on CUDA tensor cores, ``training.tf32``), else float32. Read it
    from the arguments the run used: on a CPU without native bf16 the recipe loader turns bf16 off."""
    dtype = "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"
    if dtype == "float32" and device == "cuda" and getattr(args, "tf32", None):
        dtype = "tfloat32"  # fp32 matmuls on tensor cores: measured against the TF32 peak
    return dtype


def training_flops_per_token(model) -> dict[str, int]:
    """Model FLOPs per real token for one training step of ``model`` with its current ``requires_grad``."""
    import torch

    linear_weights, after_first_trainable, trainable_linear = 0, 0, 0
    seen_trainable = False
    for module in _computing_modules(model):
        if not seen_trainable and any(p.requires_grad for p in module.parameters(recurse=False)):
            seen_trainable = True
        if isinstance(module, torch.nn.Linear):
            weights = module.weight.numel()
            linear_weights += weights
            if seen_trainable:
                after_first_trainable += weights
            if module.weight.requires_grad:
                trainable_linear += weights
    forward = 2 * linear_weights
    backward = 2 * after_first_trainable + 2 * trainable_linear
    return {"forward": forward, "backward": backward, "total": forward + backward}


def _computing_modules(model):
    """``model.modules()`` less the copies a forward pass never runs: peft's ``modules_to_save`` wrapper
    keeps the original head beside the trained copy and runs only the latter."""
    skipped: set[int] = set()
    for module in model.modules():
        if id(module) in skipped:
            continue
        if type(module).__name__ == "ModulesToSaveWrapper" and hasattr(module, "original_module"):
            skipped.update(id(m) for m in module.original_module.modules())
        yield module


# ------------------------------------------------------------------------------------------------
# Peak FLOPs: measured, cached
# ------------------------------------------------------------------------------------------------
def cache_path() -> Path:
    return cache_dir() / "peak_flops.json"


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    if device != "cpu":
        return device
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return model


def cache_key(device: str, dtype: str) -> str:
    import torch

    threads = torch.get_num_threads() if device == "cpu" else 0
    return f"{device}|{device_name(device)}|{dtype}|threads={threads}|torch={torch.__version__}"


def measure_peak_flops(device: str, dtype: str, min_seconds: float = 0.5, sizes=None) -> dict[str, Any]:
    """The best dense ``n x n`` matmul rate over a few sizes, in FLOP/s, on ``device`` in ``dtype``."""
    import torch

    tf32 = dtype == "tfloat32"
    torch_dtype = torch.float32 if tf32 else getattr(torch, dtype)
    if device == "cuda":
        previous_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    sizes = sizes or ((1024, 2048, 4096) if device == "cpu" else (4096, 8192))
    best, best_n = 0.0, 0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(torch_dtype)
        b = torch.randn(n, n, device=device).to(torch_dtype)
        torch.matmul(a, b)  # warm-up: kernel selection, allocation
        _sync(device)
        runs, started = 0, time.perf_counter()
        while True:
            torch.matmul(a, b)
            runs += 1
            _sync(device)
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        rate = 2 * n**3 * runs / elapsed
        if rate > best:
            best, best_n = rate, n
        del a, b
        if runs == 1:
            break  # one product already took min_seconds: the next size (8x the work) would only be slower
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
        torch.cuda.empty_cache()  # give the calibration's matrices back before the cells need the memory
    return {"flops": best, "matmul_size": best_n, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}


def _sync(device: str) -> None:
    if device != "cpu":
        import torch

        getattr(torch, device).synchronize()  # torch.cuda / torch.xpu / torch.mps


def read_cache() -> dict[str, Any]:
    path = cache_path()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def calibrate(device: str, dtypes=DTYPES) -> dict[str, dict[str, Any]]:
    """Measure the peak of each dtype on ``device`` and store it in the cache; returns {dtype: entry}."""
    cache = read_cache()
    measured = {}
    for dtype in dtypes:
        entry = measure_peak_flops(device, dtype)
        cache[cache_key(device, dtype)] = entry
        measured[dtype] = entry
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cache, indent=2) + "\n")
    return measured


def peak_flops(device: str, dtype: str, measure_if_missing: bool = True) -> float | None:
    """The cached peak for (device, dtype); measured and cached now when missing (a few seconds)."""
    entry = read_cache().get(cache_key(device, dtype))
    if entry is None and measure_if_missing:
        logger.info(
            "no peak FLOPs cached for %s %s; measuring it now (`hf-finetune bench --calibrate` re-measures)",
            device,
            dtype,
        )
        entry = calibrate(device, [dtype])[dtype]
    return None if entry is None else float(entry["flops"])
