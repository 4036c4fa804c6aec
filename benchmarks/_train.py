"""What every benchmark script shares: one `hf-finetune train` per run, in a fresh process.

Run from the scripts in this folder (`python benchmarks/X.py` puts this folder on sys.path).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO / "recipes" / "glue"

# The child trains through the normal CLI, then writes its own peak memory next to the output dir.
_CHILD = """
import json, resource, sys
{prelude}
from hf_finetune import cli
code = cli.main(sys.argv[2:])
peak = {"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
try:
    import torch
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
except ImportError:
    pass
open(sys.argv[1], "w").write(json.dumps(peak))
sys.exit(code)
"""


def train(
    name: str, recipe: Path, overrides: list[str], scratch: Path, steps: int, prelude: str = ""
) -> dict:
    """Train ``recipe`` for ``steps`` optimizer steps without intermediate evaluation.

    ``prelude``: Python run in the child before training (e.g. installing a patch for one experiment).

    Returns its all_results.json plus ``wall_s`` (the whole process) and ``max_rss_mb`` (its peak RSS;
    ``cuda_max_allocated_mb`` too on a GPU). Exits with the run's stderr if it fails.
    """
    out = scratch / f"{name}-{len(list(scratch.iterdir()))}"
    memory = scratch / f"{out.name}.memory.json"
    cmd = [sys.executable, "-c", _CHILD.replace("{prelude}", prelude), str(memory), "train", str(recipe)]
    cmd += [f"training.max_steps={steps}", "training.eval_strategy=no", "training.disable_tqdm=true"]
    cmd += [*overrides, "--output-dir", str(out)]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads((out / "all_results.json").read_text())
    result.update(json.loads(memory.read_text()))
    result["wall_s"] = time.time() - started
    return result


def write_report(path: str | Path, report: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
