"""Fine-tuning strategies on SST-2 with MiniLM: training speed side by side, and dev accuracy at one step budget.

Phase 1 (speed): full fine-tuning (`recipes/glue/sst2.yaml`) and the frozen-bottom recipe
(`sst2_freeze.yaml`: embeddings + 4 of 6 layers frozen) alternate, full, frozen, full, frozen, ..., for
the same number of steps, so machine noise hits both alike; the ratio of median samples/s is reported.

Phase 2 (accuracy): every SST-2 strategy recipe trains for the same number of optimizer steps (same batch
size and data order) and is evaluated on all 872 dev examples.

Each run is a fresh `hf-finetune train` process; samples/s is the Trainer's own `train_samples_per_second`
(training loop only, data loading and evaluation excluded). Run one benchmark at a time on this machine.

    .venv/bin/python benchmarks/strategies.py [--speed-steps 150] [--rounds 2] [--steps 600] [--output FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import _record
import _train

RECIPES = {
    "full": "sst2.yaml",
    "freeze": "sst2_freeze.yaml",
    "llrd": "sst2_llrd.yaml",
    "gradual": "sst2_gradual.yaml",
    "probe": "sst2_probe.yaml",
}


def train(name: str, steps: int, scratch: Path, evaluate: bool) -> dict:
    overrides = [] if evaluate else ["data.max_eval_samples=64"]
    return _train.train(name, _train.GLUE / RECIPES[name], overrides, scratch, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed-steps", type=int, default=150, help="steps per speed run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating speed rounds")
    parser.add_argument("--steps", type=int, default=600, help="step budget of each accuracy run")
    parser.add_argument("--strategies", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-strategies.json"))
    args = parser.parse_args()

    report: dict = {"speed": {}, "accuracy": {}, "settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        speeds: dict[str, list[float]] = {"full": [], "freeze": []}
        precisions: dict[str, list[dict]] = {}
        for round_ in range(args.rounds):
            for name in ("full", "freeze"):
                result = train(name, args.speed_steps, Path(tmp), evaluate=False)
                speeds[name].append(result["train_samples_per_second"])
                precisions.setdefault(name, []).append(result["precision"])
                print(
                    f"speed round {round_ + 1} {name}: {result['train_samples_per_second']:.1f} samples/s; "
                    f"{_train.describe(result)}",
                    flush=True,
                )
        full, frozen = statistics.median(speeds["full"]), statistics.median(speeds["freeze"])
        report["speed"] = {
            "samples_per_second": speeds,
            "median": {"full": full, "freeze": frozen},
            "precision": precisions,
        }
        report["speed"]["ratio_freeze_over_full"] = frozen / full
        print(
            f"freeze embeddings + 4/6 layers vs full: {frozen:.1f} / {full:.1f} samples/s = {frozen / full:.2f}x"
        )

        for name in args.strategies:
            result = train(name, args.steps, Path(tmp), evaluate=True)
            row = {
                key: result.get(key)
                for key in (
                    "eval_accuracy",
                    "train_loss",
                    "train_samples_per_second",
                    "trainable_params",
                    "total_params",
                    "strategy",
                    "wall_s",
                    "precision",
                )
            }
            report["accuracy"][name] = row
            print(
                f"{name:8s} accuracy {row['eval_accuracy']:.4f}  loss {row['train_loss']:.4f}  "
                f"{row['train_samples_per_second']:.1f} samples/s  trains {row['trainable_params']:,} params  "
                f"({row['strategy']}); precision {_record.label(result)}",
                flush=True,
            )
    output = _train.write_report(args.output, report)
    print(f"\n| strategy | SST-2 dev accuracy ({args.steps} steps x 32) | samples/s | trainable params |")
    print("|---|---|---|---|")
    for name, row in report["accuracy"].items():
        print(
            f"| {name}: {row['strategy']} | {row['eval_accuracy']:.4f} | {row['train_samples_per_second']:.1f} "
            f"| {row['trainable_params']:,} of {row['total_params']:,} |"
        )
    if _train.MACHINES:
        print(f"on {_record.describe_machine(_train.MACHINES[0])}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
