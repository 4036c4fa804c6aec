"""`hf-finetune export RUN --format onnx [--quantize int8] --output DIR` in a fresh process, for the scripts
in this folder that measure exports (export_parity.py, inference.py). Standard library only, so a script
that keeps this folder off sys.path can load it by path."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_export(run: Path, target: Path, quantize: bool, cwd: Path | None = None) -> dict:
    """Export ``run`` to ``target`` (ONNX, int8 with ``quantize``). Returns the command, its exit code and wall
    time, and either the export's export.json (``export_json``) or the end of its output (``stderr``). An fp32
    export beyond the parity tolerance exits 1 and writes nothing."""
    cmd = [
        sys.executable,
        "-m",
        "hf_finetune",
        "export",
        str(run),
        "--format",
        "onnx",
        "--output",
        str(target),
    ]
    if quantize:
        cmd += ["--quantize", "int8"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    result = {
        "command": " ".join(cmd[1:]),
        "exit_code": proc.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    info = target / "export.json"
    if proc.returncode == 0 and (target / "model.onnx").is_file() and info.is_file():
        result["export_json"] = json.loads(info.read_text())
    else:
        result["stderr"] = (proc.stderr or proc.stdout)[-3000:]
    return result
