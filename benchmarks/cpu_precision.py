"""fp32 vs bf16 autocast training throughput on this machine, side by side.

Runs the SST-2 recipe for a fixed number of steps in each precision, alternating (fp32, bf16,
fp32, bf16, ...) so that machine noise hits both alike, and prints samples/s and the ratio.

    .venv/bin/python benchmarks/cpu_precision.py [--steps 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import _train


def run(precision: str, steps: int, scratch: Path) -> dict:
    overrides = ["data.max_eval_samples=64", f"training.bf16={'true' if precision == 'bf16' else 'false'}"]
    return _train.train(precision, _train.GLUE / "sst2.yaml", overrides, scratch, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for precision in ("fp32", "bf16"):
                result = run(precision, args.steps, Path(tmp))
                speeds[precision].append(result["train_samples_per_second"])
                losses[precision].append(result["train_loss"])
                print(
                    f"{precision}: {result['train_samples_per_second']:.1f} samples/s, "
                    f"train_loss {result['train_loss']:.4f}",
                    flush=True,
                )
    fp32, bf16 = statistics.median(speeds["fp32"]), statistics.median(speeds["bf16"])
    print(
        f"median samples/s: fp32 {fp32:.1f}, bf16 {bf16:.1f}; bf16/fp32 = {bf16 / fp32:.2f}x "
        f"({args.steps} steps of batch 32, SST-2, MiniLM-L6, {args.rounds} rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
