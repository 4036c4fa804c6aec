"""LoRA vs full fine-tuning of MiniLM on SST-2 at the same step budget: accuracy, speed and peak memory.

Runs `recipes/glue/sst2.yaml` and `recipes/glue/sst2_lora.yaml` for the same number of optimizer steps
(same batch size, data order and seed), one after the other in this one invocation, alternating when
`--rounds` > 1, and evaluates each on all 872 dev examples. samples/s is the Trainer's
`train_samples_per_second`; peak memory is the training process's maximum resident set size (on a GPU,
also `torch.cuda.max_memory_allocated`). Run one benchmark at a time on this machine.

    .venv/bin/python benchmarks/peft.py [--steps 600] [--rounds 1] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"full": "sst2.yaml", "lora": "sst2_lora.yaml"}

# The child trains through the normal CLI, then reports its own peak memory.
CHILD = """
import json, resource, sys
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


def train(name: str, steps: int, scratch: Path) -> dict:
    out = scratch / f"{name}-{len(list(scratch.iterdir()))}"
    memory = scratch / f"{out.name}.memory.json"
    cmd = [sys.executable, "-c", CHILD, str(memory), "train", str(REPO / "recipes" / "glue" / RECIPES[name])]
    cmd += [f"training.max_steps={steps}", "training.eval_strategy=no", "training.disable_tqdm=true"]
    cmd += ["--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads((out / "all_results.json").read_text())
    result.update(json.loads(memory.read_text()))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-peft.json"))
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in RECIPES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name in RECIPES:
                result = train(name, args.steps, Path(tmp))
                runs[name].append(result)
                print(
                    f"{name}: accuracy {result['eval_accuracy']:.4f}, {result['train_samples_per_second']:.1f} "
                    f"samples/s, peak RSS {result['max_rss_mb']:.0f} MB, trains {result['trainable_params']:,} "
                    f"of {result['total_params']:,} ({result['strategy']})",
                    flush=True,
                )
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "eval_accuracy": [r["eval_accuracy"] for r in results],
            "samples_per_second": statistics.median(r["train_samples_per_second"] for r in results),
            "max_rss_mb": statistics.median(r["max_rss_mb"] for r in results),
            "trainable_params": results[0]["trainable_params"],
            "total_params": results[0]["total_params"],
            "trainable_percent": 100 * results[0]["trainable_params"] / results[0]["total_params"],
        }
    full, lora = summary["full"], summary["lora"]
    gap = 100 * (statistics.mean(full["eval_accuracy"]) - statistics.mean(lora["eval_accuracy"]))
    report = {"settings": vars(args), "runs": summary, "accuracy_gap_points": gap}
    report["speed_ratio_lora_over_full"] = lora["samples_per_second"] / full["samples_per_second"]
    report["memory_ratio_lora_over_full"] = lora["max_rss_mb"] / full["max_rss_mb"]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"LoRA trains {lora['trainable_percent']:.2f}% of the parameters; accuracy gap {gap:.2f} points; "
        f"speed {report['speed_ratio_lora_over_full']:.2f}x; peak memory {report['memory_ratio_lora_over_full']:.2f}x"
    )
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
