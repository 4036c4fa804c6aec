"""fp32 vs bf16 autocast training throughput on this machine, side by side.

Runs the SST-2 recipe for a fixed number of steps in each precision, alternating (fp32, bf16,
fp32, bf16, ...) so that machine noise hits both alike, and prints samples/s and the ratio, with the
machine (CPU model and flags, or GPU) and the precision each run really trained in.

`training.bf16=true` is a request: on a CPU without native bf16 instructions (AVX512-BF16 or AMX)
hf-finetune trains in fp32 instead, so there is no bf16 figure to report and the script stops with exit
status 1 after the first such run, saying so. `--emulated` forces bf16 autocast on such a CPU anyway
(`training.use_cpu=true`, which hf-finetune then does not override) and labels the figure as emulated.
The report (`--output`) holds every run with its asked and used precision and the machine.

    .venv/bin/python benchmarks/cpu_precision.py [--steps 200] [--rounds 2] [--emulated] [--output FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import _record
import _train


def run(precision: str, steps: int, scratch: Path, emulated: bool) -> dict:
    overrides = ["data.max_eval_samples=64", f"training.bf16={'true' if precision == 'bf16' else 'false'}"]
    if emulated and precision == "bf16":
        overrides.append("training.use_cpu=true")
    return _train.train(precision, _train.GLUE / "sst2.yaml", overrides, scratch, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--emulated",
        action="store_true",
        help="on a CPU without native bf16, run bf16 autocast anyway (emulated, slow) instead of stopping",
    )
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-cpu-precision.json"))
    args = parser.parse_args()
    speeds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for precision in ("fp32", "bf16"):
                result = run(precision, args.steps, Path(tmp), args.emulated)
                used = result["precision"]["used"]
                runs.append(
                    {
                        "asked": precision,
                        "precision": result["precision"],
                        "train_samples_per_second": result["train_samples_per_second"],
                        "train_loss": result["train_loss"],
                        "machine": result["machine"],
                    }
                )
                print(
                    f"{precision} asked: {result['train_samples_per_second']:.1f} samples/s, "
                    f"train_loss {result['train_loss']:.4f}; {_train.describe(result)}",
                    flush=True,
                )
                if used != precision:
                    _train.write_report(args.output, {"settings": vars(args), "runs": runs, "refused": True})
                    print(
                        f"no {precision} figure on this machine: {result['precision']['note']}. Nothing "
                        "to compare; rerun with --emulated to measure emulated bf16 autocast anyway.",
                        file=sys.stderr,
                    )
                    return 1
                speeds[precision].append(result["train_samples_per_second"])
                losses[precision].append(result["train_loss"])
    fp32, bf16 = statistics.median(speeds["fp32"]), statistics.median(speeds["bf16"])
    labels = {p: _record.label(next(r for r in runs if r["asked"] == p)) for p in ("fp32", "bf16")}
    report = {
        "settings": vars(args),
        "runs": runs,
        "median_samples_per_second": {"fp32": fp32, "bf16": bf16},
        "ratio_bf16_over_fp32": bf16 / fp32,
        "precision_used": labels,
    }
    output = _train.write_report(args.output, report)
    print(
        f"median samples/s: fp32 {fp32:.1f}, bf16 {bf16:.1f}; bf16/fp32 = {bf16 / fp32:.2f}x "
        f"({args.steps} steps of batch 32, SST-2, MiniLM-L6, {args.rounds} rounds)\n"
        f"trained in: {labels['fp32']} / {labels['bf16']}; on {_record.describe_machine(runs[0]['machine'])}"
    )
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
