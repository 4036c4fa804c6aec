"""Per-class report on a multi-class own-data set: which kind of name a news sentence mentions.

The AG-News-like own-data path: CSV files with a text column and string labels, five classes of uneven size,
trained from a minimal recipe (the task, the model, the files, an output dir, the epochs), so the package's
training defaults fill in the rest. The set is built from the CoNLL-2003 mirror: each sentence of at least
six tokens whose named entities are all of one type is labelled by that type (`person`, `organisation`,
`location`, `other name` for MISC), a sentence without names is `no name`, and sentences mixing types are
left out. Training: 6,378 sentences from CoNLL's train split; evaluation: 1,436 from its validation split.

The run keeps its output dir (`--keep`, default runs/bench-per-class/) so its classification_report.md and
confusion_matrix.png can be read; the JSON report has every per-label score.

    .venv/bin/python benchmarks/per_class.py [--epochs 2] [--keep runs/bench-per-class] [--output FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import _train
import yaml

NAMES = {"PER": "person", "ORG": "organisation", "LOC": "location", "MISC": "other name"}


def label_of(tags: list[str]) -> str | None:
    """The sentence's class: the one entity type it names, `no name`, or None when it mixes types."""
    types = {tag[2:] for tag in tags if tag != "O"}
    if not types:
        return "no name"
    if len(types) == 1:
        return NAMES[types.pop()]
    return None


def write_split(source: Path, target: Path, min_tokens: int = 6) -> dict[str, int]:
    """One CSV (`text`, `label`) of the sentences ``label_of`` keeps; returns the class counts."""
    counts: dict[str, int] = {}
    with source.open() as handle, target.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for line in handle:
            row = json.loads(line)
            if len(row["tokens"]) < min_tokens:
                continue
            label = label_of(row["ner_tags"])
            if label is None:
                continue
            writer.writerow([" ".join(row["tokens"]), label])
            counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--mirror", default=str(_train.REPO.parent / "shared" / "data"))
    parser.add_argument("--keep", default=str(_train.REPO / "runs" / "bench-per-class"))
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-per-class.json"))
    args = parser.parse_args()
    conll = Path(args.mirror) / "conll2003"
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        counts = {
            split: write_split(conll / f"{split}.jsonl", scratch / f"{split}.csv")
            for split in ("train", "validation")
        }
        print(f"classes: {json.dumps(counts)}", flush=True)
        recipe = scratch / "names.yaml"
        recipe.write_text(
            yaml.safe_dump(
                {
                    "task": {"name": "text-classification"},
                    "model": {"name_or_path": "sentence-transformers/all-MiniLM-L6-v2"},
                    "data": {
                        "files": {
                            "train": str(scratch / "train.csv"),
                            "validation": str(scratch / "validation.csv"),
                        }
                    },
                    "training": {"output_dir": "runs/names", "num_train_epochs": args.epochs},
                }
            )
        )
        runs_dir = scratch / "runs"
        runs_dir.mkdir()
        result = _train.train("per-class", recipe, [], runs_dir, None, evaluate=True)
        out = Path(result["output_dir"])
        keep = _train.keep(out, args.keep, ("checkpoint-*", "*.safetensors"))
    per_label = {
        key: value
        for key, value in result.items()
        if key.startswith("eval_") and key.endswith(("_f1", "_precision", "_recall", "_support"))
    }
    print(
        f"accuracy {result['eval_accuracy']:.4f}, macro-F1 {result['eval_f1']:.4f}; "
        + ", ".join(f"{k[5:]} {v:.4f}" for k, v in per_label.items() if k.endswith("_f1") and k != "eval_f1")
        + f"; report and confusion matrix in {keep}; {_train.describe(result)}",
        flush=True,
    )
    report = {
        "command": "python benchmarks/per_class.py " + f"--epochs {args.epochs:g}",
        "classes": counts,
        "eval_accuracy": result["eval_accuracy"],
        "eval_f1": result["eval_f1"],
        "per_label": per_label,
        "train_runtime": result["train_runtime"],
        "wall_s": result["wall_s"],
        "kept": str(keep),
    }
    print(f"report: {_train.write_report(args.output, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
