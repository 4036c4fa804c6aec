"""What this machine trains on: the accelerator torch sees, and whether the CPU has bf16/fp16 instructions.

`config.load` asks these to derive ``use_cpu`` and to turn off mixed precision the CPU would only
emulate; bench records the device. Tests monkeypatch :func:`accelerator_available` and
:func:`cpu_has_native` to play other machines. torch is imported on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

#: keys :func:`log_once` has logged in this process (a test may swap in an empty set to hear them again)
LOGGED_ONCE: set[Hashable] = set()


def accelerator() -> str | None:
    """The accelerator the Trainer would train on, as torch names it ("cuda", "xpu", "mps"), or None."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return None


def accelerator_available() -> bool:
    """Whether :func:`accelerator` finds one."""
    return accelerator() is not None


def cpu_has_native(dtype: str) -> bool:
    """Whether this CPU computes ``dtype`` ("bf16" or "fp16") matmuls in hardware.

    x86: AVX512-BF16 or AMX for bf16, AMX-FP16 for fp16; other architectures: oneDNN's own check.
    """
    import platform

    import torch

    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        checks = (
            ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
            if dtype == "bf16"
            else ("_is_amx_fp16_supported",)
        )
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    check = "_is_mkldnn_bf16_supported" if dtype == "bf16" else "_is_mkldnn_fp16_supported"
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return False


def log_once(logger: logging.Logger, level: int, key: Hashable, msg: str, *args: object) -> None:
    """Log ``msg`` at ``level`` the first time this process sees ``key``, at DEBUG after that.

    A recipe is loaded many times in one process (tune's candidates, bench's checks); what the machine
    implies for it is said once.
    """
    if key in LOGGED_ONCE:
        level = logging.DEBUG
    LOGGED_ONCE.add(key)
    logger.log(level, msg, *args)
