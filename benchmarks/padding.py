"""Dynamic padding (our default) vs padding every batch to 128 tokens (run_glue.py's default), SST-2.

Both runs use `recipes/glue/sst2.yaml` unchanged (model, data, batch size 32, learning rate, schedule,
precision, seed, length-grouped batch order), for the same number of optimizer steps; the reference adds
only `data.padding=max_length`, so every batch is padded to `data.max_seq_length` (128). Run back to back
in one invocation, alternating, once per seed in `--seeds`; prints samples/s (median), the ratio, and
dev accuracy on all 872 examples (mean over the seeds). Run one benchmark at a time on this machine.

    .venv/bin/python benchmarks/padding.py [--steps 600] [--seeds 42 ...] [--output FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import _train

VARIANTS = {"dynamic": [], "pad-128": ["data.padding=max_length"]}


def train(name: str, steps: int, seed: int, scratch: Path, extra: list[str]) -> dict:
    overrides = [*VARIANTS[name], *extra, f"training.seed={seed}"]
    return _train.train(name, _train.GLUE / "sst2.yaml", overrides, scratch, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-padding.json"))
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="an extra recipe override for both runs, e.g. model.config_overrides.hidden_dropout_prob=0 "
        "(dropout draws masks over the padded shape, so with it on the two runs also differ in their masks)",
    )
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name in VARIANTS:
                result = train(name, args.steps, seed, Path(tmp), args.override)
                runs[name].append(result)
                print(
                    f"{name} seed {seed}: {result['train_samples_per_second']:.1f} samples/s, "
                    f"dev accuracy {result['eval_accuracy']:.4f}, train_runtime {result['train_runtime']:.0f}s",
                    flush=True,
                )
    speed = {name: statistics.median(r["train_samples_per_second"] for r in rs) for name, rs in runs.items()}
    accuracy = {name: statistics.mean(r["eval_accuracy"] for r in rs) for name, rs in runs.items()}
    report = {
        "settings": vars(args),
        "samples_per_second": speed,
        "eval_accuracy": accuracy,
        "eval_accuracy_per_seed": {name: [r["eval_accuracy"] for r in rs] for name, rs in runs.items()},
        "speed_ratio_dynamic_over_pad128": speed["dynamic"] / speed["pad-128"],
        "accuracy_gap_points": 100 * (accuracy["pad-128"] - accuracy["dynamic"]),
    }
    output = _train.write_report(args.output, report)
    print(
        f"dynamic padding {report['speed_ratio_dynamic_over_pad128']:.2f}x the samples/s of pad-to-128; "
        f"accuracy {accuracy['dynamic']:.4f} vs {accuracy['pad-128']:.4f}"
    )
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
