"""Class imbalance on SST-2: macro-F1 with `task.class_weights: auto` and with focal loss against no weighting.

The training split is subsampled (fixed seed) to `--rows` sentences of which `--positive-share` are positive (10%
by default: 5,400 negative and 600 positive); evaluation is on all 872 dev sentences (about half positive), scored
by macro-F1 (`task.metric: classification`). Every arm trains `recipes/glue/sst2.yaml` (the real
all-MiniLM-L6-v2) on the same rows for one epoch, once per seed, one process per run, one run at a time:
- `none`: cross-entropy, every example weighted alike;
- `class_weights`: `task.class_weights=auto` (inverse class frequency, normalised);
- `focal`: `task.loss=focal` (gamma 2, no class weights);
- `focal+class_weights`: both.

    .venv/bin/python benchmarks/class_imbalance.py [--seeds 1 2 3] [--rows 6000] [--positive-share 0.1] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import _train

RECIPE = _train.GLUE / "sst2.yaml"
ARMS = {
    "none": [],
    "class_weights": ["task.class_weights=auto"],
    "focal": ["task.loss=focal"],
    "focal+class_weights": ["task.loss=focal", "task.class_weights=auto"],
}


def write_train(path: Path, mirror: Path, rows: int, positive_share: float) -> dict[str, int]:
    """The imbalanced training file: ``rows`` SST-2 sentences, ``positive_share`` of them positive."""
    with (mirror / "glue" / "sst2" / "train.jsonl").open() as handle:
        data = [json.loads(line) for line in handle]
    positives = round(rows * positive_share)
    draw = random.Random(0)
    chosen = draw.sample([r for r in data if r["label"] == 1], positives)
    chosen += draw.sample([r for r in data if r["label"] == 0], rows - positives)
    draw.shuffle(chosen)
    with path.open("w") as handle:
        for row in chosen:
            handle.write(json.dumps({"sentence": row["sentence"], "label": row["label"]}) + "\n")
    return {"negative": rows - positives, "positive": positives}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--positive-share", type=float, default=0.1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--mirror", default=str(_train.REPO.parent / "shared" / "data"))
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-class-imbalance.json"))
    args = parser.parse_args()
    mirror = Path(args.mirror)
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        train_file = scratch / "train.jsonl"
        counts = write_train(train_file, mirror, args.rows, args.positive_share)
        print(f"training rows: {counts}", flush=True)
        validation = mirror / "glue" / "sst2" / "validation.jsonl"
        data = [
            "data.dataset=null",
            "data.config=null",
            f"data.files={{train: {json.dumps(str(train_file))}, validation: {json.dumps(str(validation))}}}",
            "task.metric=classification",
        ]
        runs_dir = scratch / "runs"
        runs_dir.mkdir()
        for seed in args.seeds:  # seeds outermost: a drift of the machine's speed touches every arm alike
            for arm in args.arms:
                result = _train.train(
                    arm, RECIPE, [*data, *ARMS[arm], f"training.seed={seed}"], runs_dir, None
                )
                run = {
                    "seed": seed,
                    "macro_f1": result["eval_f1"],
                    "accuracy": result["eval_accuracy"],
                    "train_runtime": result["train_runtime"],
                }
                runs[arm].append(run)
                print(
                    f"seed {seed} {arm}: macro-F1 {run['macro_f1']:.4f}, accuracy {run['accuracy']:.4f}, "
                    f"train_runtime {run['train_runtime']:.0f} s; {_train.describe(result)}",
                    flush=True,
                )
    summary = {}
    for arm, results in runs.items():
        f1 = [r["macro_f1"] for r in results]
        summary[arm] = {
            "macro_f1_mean": statistics.mean(f1),
            "macro_f1_stdev": statistics.stdev(f1) if len(f1) > 1 else 0.0,
            "accuracy_mean": statistics.mean(r["accuracy"] for r in results),
        }
    if "none" in summary:
        for arm in summary:
            summary[arm]["macro_f1_gain_points"] = 100 * (
                summary[arm]["macro_f1_mean"] - summary["none"]["macro_f1_mean"]
            )
    for arm, row in summary.items():
        print(
            f"{arm}: macro-F1 {row['macro_f1_mean']:.4f} ± {row['macro_f1_stdev']:.4f}, accuracy "
            f"{row['accuracy_mean']:.4f}"
            + (
                f", {row['macro_f1_gain_points']:+.1f} points over none"
                if "macro_f1_gain_points" in row
                else ""
            ),
            flush=True,
        )
    report = {"settings": vars(args), "training_rows": counts, "runs": runs, "summary": summary}
    output = _train.write_report(args.output, report)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
