"""What every benchmark script shares: one `hf-finetune train` per run, in a fresh process.

Run from the scripts in this folder (`python benchmarks/X.py` puts this folder on sys.path).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _record
import yaml

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO / "recipes" / "glue"
RECORD = Path(_record.__file__).resolve()

# The child trains through the normal CLI, then writes its own peak memory, the machine and what its
# training really ran in (see _record.py) next to the output dir.
_CHILD = """
import importlib.util, json, os, resource, sys
# this folder holds peft.py: on sys.path (the working directory, when run from here) it shadows peft
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname({record!r})]
{prelude}
spec = importlib.util.spec_from_file_location("_record", {record!r})
record = importlib.util.module_from_spec(spec)
spec.loader.exec_module(record)
observed = record.observe_training()
from hf_finetune import cli
code = cli.main(sys.argv[2:])
peak = {"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
import torch
if torch.cuda.is_available():
    peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
peak["observed"] = observed
peak["machine"] = record.machine()
open(sys.argv[1], "w").write(json.dumps(peak))
sys.exit(code)
"""


def train(
    name: str,
    recipe: Path,
    overrides: list[str],
    scratch: Path,
    steps: int | None,
    prelude: str = "",
    evaluate: bool = False,
) -> dict:
    """Train ``recipe`` for ``steps`` optimizer steps (None: as long as the recipe says), without intermediate
    evaluation unless ``evaluate`` (then the recipe's own evaluation cadence runs).

    ``prelude``: Python run in the child before training (e.g. installing a patch for one experiment).

    Returns its all_results.json plus ``wall_s`` (the whole process), ``max_rss_mb`` (its peak RSS;
    ``cuda_max_allocated_mb`` too on a GPU), ``machine`` (`_record.machine`) and ``precision``: what the
    recipe asked for next to what the training ran in (`_record.precision`; a ``note`` when they differ).
    Exits with the run's stderr if it fails.
    """
    out = scratch / f"{name}-{len(list(scratch.iterdir()))}"
    memory = scratch / f"{out.name}.memory.json"
    child = _CHILD.replace("{record!r}", repr(str(RECORD))).replace("{prelude}", prelude)
    cmd = [sys.executable, "-c", child, str(memory), "train", str(recipe)]
    if steps is not None:
        cmd.append(f"training.max_steps={steps}")
    if not evaluate:
        cmd.append("training.eval_strategy=no")
    cmd.append("training.disable_tqdm=true")
    cmd += [*overrides, "--output-dir", str(out)]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads((out / "all_results.json").read_text())
    child = json.loads(memory.read_text())
    observed = child.pop("observed")
    result.update(child)
    # the saved recipe keeps what was asked (a CPU fallback to fp32 is not written into it)
    asked = _record.asked_precision(yaml.safe_load((out / "recipe.yaml").read_text()).get("training", {}))
    result["precision"] = _record.precision(asked, observed, result["machine"])
    result["wall_s"] = time.time() - started
    result["output_dir"] = str(out)
    MACHINES.append(result["machine"])
    return result


def keep(output_dir: str | Path, target: str | Path, ignore: tuple[str, ...] = ("checkpoint-*",)) -> Path:
    """Copy a run's ``output_dir`` (out of the script's temporary folder) to ``target``, replacing what was
    there, without the files matching ``ignore`` (checkpoints by default)."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(output_dir, target, ignore=shutil.ignore_patterns(*ignore))
    return target


#: the machine of every run this process started (write_report records them)
MACHINES: list[dict] = []


def describe(result: dict) -> str:
    """``precision bf16 on CPU ...``: how to read one run's figures."""
    return f"precision {_record.label(result)} on {_record.describe_machine(result['machine'])}"


def write_report(path: str | Path, report: dict) -> Path:
    """Write ``report`` as JSON, with the machine its runs trained on (``machines`` if they differ)."""
    distinct = [m for i, m in enumerate(MACHINES) if m not in MACHINES[:i]]
    if len(distinct) == 1:
        report = {"machine": distinct[0], **report}
    elif distinct:
        report = {"machines": distinct, **report}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
