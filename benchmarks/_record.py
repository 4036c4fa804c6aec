"""What a benchmark figure was measured on: the machine, and the precision the training really ran in.

A recipe's ``training.bf16: true`` is a request: on a CPU without native bf16 instructions hf-finetune
trains in fp32 instead (and says so once in the log), so a figure labelled by the request alone can be an
fp32 figure. :func:`observe_training`, installed in the training process, records what the Trainer was
given and the dtype the first linear layer of the model computed in during the first training step (the
autocast dtype, or the weights' own); :func:`precision` compares it with what the recipe asked for.

Loaded by path (``importlib``) from the training child and from scripts that take this folder off
``sys.path`` (it holds ``peft.py``, which would shadow the peft package).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

#: CPU flags that decide bf16/fp16 speed on x86 (AVX512-BF16 or AMX: native bf16 matmuls)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
#: torch dtype name -> the precision name recipes use
PRECISIONS = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def cpu() -> dict[str, Any]:
    """The CPU's model name and which :data:`CPU_FLAGS` it has (Linux; elsewhere what platform says)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def machine() -> dict[str, Any]:
    """The machine a run trained on: CPU model and flags, torch's CPU capability and threads, GPUs."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line: the GPU if there is one, else the CPU with its bf16-relevant flags, and the threads."""
    cpu_info = info.get("cpu", {})
    flags = ", ".join(cpu_info.get("flags", [])) or "none of " + "/".join(CPU_FLAGS)
    text = f"CPU {cpu_info.get('model', '?')} (flags: {flags}; torch {info.get('torch_cpu_capability')})"
    text += f", {info.get('threads')} threads, torch {info.get('torch')}"
    if info.get("gpu"):
        text = f"GPU {info['gpu']} x{info.get('gpu_count', 1)}; " + text
    return text


def observe_training() -> dict[str, Any]:
    """Patch ``transformers.Trainer.train`` in this process to record what the run trains in; returns the
    dict it fills: the Trainer's ``bf16``/``fp16``/``use_cpu``/device, Accelerate's ``mixed_precision``,
    and ``matmul_dtype``, the output dtype of the model's first ``nn.Linear`` in the first training step."""
    import torch
    from transformers import Trainer

    observed: dict[str, Any] = {}
    original = Trainer.train

    def train(self, *args, **kwargs):
        a = self.args
        observed.update(
            trainer={"bf16": bool(a.bf16), "fp16": bool(a.fp16), "use_cpu": bool(a.use_cpu)},
            device=str(a.device),
            mixed_precision=str(getattr(getattr(self, "accelerator", None), "mixed_precision", None)),
        )
        linear = next((m for m in self.model.modules() if isinstance(m, torch.nn.Linear)), None)

        def hook(module, inputs, output):
            if module.training and "matmul_dtype" not in observed and isinstance(output, torch.Tensor):
                observed["matmul_dtype"] = str(output.dtype).removeprefix("torch.")

        handle = linear.register_forward_hook(hook) if linear is not None else None
        try:
            return original(self, *args, **kwargs)
        finally:
            if handle is not None:
                handle.remove()

    Trainer.train = train
    return observed


def asked_precision(training: dict[str, Any]) -> str:
    """The precision a recipe's training section asks for."""
    return "bf16" if training.get("bf16") else "fp16" if training.get("fp16") else "fp32"


def precision(asked: str, observed: dict[str, Any], machine_info: dict[str, Any]) -> dict[str, Any]:
    """``asked`` next to the precision the run used (from :func:`observe_training`), with a note when they
    differ or when bf16/fp16 ran on a CPU without the instructions for it (emulated, slow)."""
    used = PRECISIONS.get(observed.get("matmul_dtype", ""), observed.get("matmul_dtype") or "unknown")
    out: dict[str, Any] = {"asked": asked, "used": used, **observed}
    # the instructions are known from the flags on x86 only; elsewhere nothing is said about emulation
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    on_cpu = observed.get("device", "cpu").startswith("cpu")
    flags = set(machine_info.get("cpu", {}).get("flags", []))
    native = {"bf16": bool(flags & {"avx512_bf16", "amx_bf16"}), "fp16": "amx_fp16" in flags}
    if used != asked:
        out["note"] = f"{asked} was asked, but the run trained in {used}"
        if x86 and on_cpu and asked in native and not native[asked]:
            out["note"] += f": this CPU has no native {asked} instructions, so hf-finetune trains in fp32"
    elif x86 and on_cpu and used in native and not native[used]:
        out["note"] = f"{used} autocast emulated on a CPU without native {used} instructions"
    return out


def label(result: dict[str, Any]) -> str:
    """How a figure is to be read: "bf16", or "fp32 (bf16 asked)", or "bf16 (emulated ...)"."""
    p = result.get("precision", {})
    used = p.get("used", "unknown")
    return f"{used} ({p['note']})" if p.get("note") else used
