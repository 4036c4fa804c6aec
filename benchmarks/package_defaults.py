"""What hf-finetune's training defaults change for a user's minimal recipe: time and accuracy, side by side.

A set like the AG News one a new user tried (10,001 training rows, string labels, local JSON Lines): 10,001
SST-2 training sentences drawn with a fixed seed, labels written as `negative`/`positive`, evaluated on all 872
dev sentences. The recipe names only the task, the model, the files, an output dir, one epoch and `bf16: true`.
Two arms, alternating when `--rounds` > 1, one process each:
- `transformers`: every field hf-finetune has a default for set back to transformers' own value (what such a
  recipe trained with before the package had defaults): batches of 8 in random order, no warmup or weight decay,
  a loss every 500 steps, no evaluation during training, a checkpoint every 500 steps;
- `package`: the recipe as written, so hf-finetune's defaults (hf_finetune/config/defaults.py) fill in the rest.
Both get one final evaluation on the dev set. Reported per run: train_runtime, samples/s, dev accuracy, the
number of loss points and evaluations the training curves hold, and peak RSS. Run one benchmark at a time.

    .venv/bin/python benchmarks/package_defaults.py [--rounds 1] [--rows 10001] [--output FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
from pathlib import Path

import _train
import yaml

NAMES = ("negative", "positive")


def write_data(folder: Path, rows: int, mirror: Path) -> dict[str, str]:
    def read(split: str) -> list[dict]:
        with (mirror / "glue" / "sst2" / f"{split}.jsonl").open() as handle:
            return [json.loads(line) for line in handle]

    train = random.Random(0).sample(read("train"), rows)
    files = {}
    for split, data in (("train", train), ("validation", read("validation"))):
        path = folder / f"{split}.jsonl"
        with path.open("w") as handle:
            for row in data:
                handle.write(
                    json.dumps({"text": row["sentence"].strip(), "label": NAMES[row["label"]]}) + "\n"
                )
        files[split] = str(path)
    return files


def transformers_values() -> list[str]:
    """Overrides that put back transformers' own default for every field hf-finetune defaults."""
    import os

    # this folder holds peft.py, which would shadow the peft package transformers imports
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here]
    from transformers import TrainingArguments

    from hf_finetune.config.defaults import documented_defaults

    fields = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    out = []
    for name in documented_defaults():
        if name == "bf16":
            continue  # the recipe sets it, as the user did
        f = fields[name]
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = getattr(value, "value", value)
        out.append(f"training.{name}={'null' if value is None else value}")
    return out


def curve_points(output_dir: Path) -> tuple[int, int]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    losses = sum(1 for entry in history if "loss" in entry)
    evaluations = sum(1 for entry in history if "eval_loss" in entry)
    return losses, evaluations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rows", type=int, default=10001)
    parser.add_argument("--mirror", default=str(_train.REPO.parent / "shared" / "data"))
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-package-defaults.json"))
    parser.add_argument(
        "--arms", nargs="+", default=["transformers", "package"], choices=["transformers", "package"]
    )
    parser.add_argument(
        "--package-override", action="append", default=[], help="a training.FIELD=value for the package arm"
    )
    args = parser.parse_args()
    arms = {"transformers": transformers_values(), "package": args.package_override}
    arms = {name: arms[name] for name in args.arms}
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        files = write_data(scratch, args.rows, Path(args.mirror))
        recipe = scratch / "minimal.yaml"
        recipe.write_text(
            yaml.safe_dump(
                {
                    "task": {"name": "text-classification"},
                    "model": {"name_or_path": "sentence-transformers/all-MiniLM-L6-v2"},
                    "data": {"files": files},
                    "training": {"output_dir": "runs/minimal", "num_train_epochs": 1, "bf16": True},
                }
            )
        )
        runs_dir = scratch / "runs"
        runs_dir.mkdir()
        for _ in range(args.rounds):
            for name, overrides in arms.items():
                result = _train.train(name, recipe, overrides, runs_dir, None, evaluate=True)
                out = Path(result["output_dir"])
                result["loss_points"], result["evaluations"] = curve_points(out)
                saved = yaml.safe_load((out / "recipe.yaml").read_text())["training"]
                result["recipe_training"] = saved
                runs[name].append(result)
                print(
                    f"{name}: accuracy {result['eval_accuracy']:.4f}, train_runtime {result['train_runtime']:.1f} s, "
                    f"{result['train_samples_per_second']:.1f} samples/s, {result['loss_points']} loss points, "
                    f"{result['evaluations']} evaluations during training, peak RSS {result['max_rss_mb']:.0f} MB; "
                    f"{_train.describe(result)}",
                    flush=True,
                )
    keys = ("eval_accuracy", "train_runtime", "train_samples_per_second", "wall_s", "max_rss_mb")
    summary = {
        name: {key: [r[key] for r in results] for key in (*keys, "loss_points", "evaluations", "precision")}
        for name, results in runs.items()
    }
    for name in summary:
        summary[name]["recipe_training"] = runs[name][0]["recipe_training"]
    report = {"settings": vars(args), "overrides": arms, "runs": summary}
    output = _train.write_report(args.output, report)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
