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
import statistics
import sys
import tempfile
from pathlib import Path

import _train

RECIPES = {"full": "sst2.yaml", "lora": "sst2_lora.yaml"}


def train(name: str, steps: int, scratch: Path) -> dict:
    return _train.train(name, _train.GLUE / RECIPES[name], [], scratch, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-peft.json"))
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
                    f"of {result['total_params']:,} ({result['strategy']}); {_train.describe(result)}",
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
            "precision": [r["precision"] for r in results],  # asked and really used, per run
        }
    full, lora = summary["full"], summary["lora"]
    gap = 100 * (statistics.mean(full["eval_accuracy"]) - statistics.mean(lora["eval_accuracy"]))
    report = {"settings": vars(args), "runs": summary, "accuracy_gap_points": gap}
    report["speed_ratio_lora_over_full"] = lora["samples_per_second"] / full["samples_per_second"]
    report["memory_ratio_lora_over_full"] = lora["max_rss_mb"] / full["max_rss_mb"]
    output = _train.write_report(args.output, report)
    print(
        f"LoRA trains {lora['trainable_percent']:.2f}% of the parameters; accuracy gap {gap:.2f} points; "
        f"speed {report['speed_ratio_lora_over_full']:.2f}x; peak memory {report['memory_ratio_lora_over_full']:.2f}x"
    )
    for name, results in runs.items():
        print(f"{name}: {_train.describe(results[0])}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
