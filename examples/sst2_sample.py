"""Write a sample of SST-2 as a CSV of the kind users bring: a `review` text column and a `sentiment` column of
label names (`negative`, `positive`), for the README's own-data quickstart.

    python examples/sst2_sample.py reviews.csv --rows 4000

It reads SST-2's training split from the local mirror (`$HF_FINETUNE_DATA_MIRROR`, else `../shared/data` next to
this checkout) when it holds `glue/sst2`, else from the Hugging Face Hub; the rows are a seeded random sample.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path

NAMES = ("negative", "positive")


def read_sst2() -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    roots = [
        os.environ.get("HF_FINETUNE_DATA_MIRROR"),
        Path(__file__).resolve().parents[1] / ".." / "shared" / "data",
    ]
    for root in filter(None, roots):
        path = Path(root) / "glue" / "sst2" / "train.jsonl"
        if path.is_file():
            return list(datasets.load_dataset("json", data_files=str(path), split="train"))
    return list(datasets.load_dataset("glue", "sst2", split="train"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the CSV file to write")
    parser.add_argument("--rows", type=int, default=4000, help="how many sentences (default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = read_sst2()
    sample = random.Random(args.seed).sample(rows, min(args.rows, len(rows)))
    with open(args.output, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for row in sample:
            writer.writerow([row["sentence"].strip(), NAMES[int(row["label"])]])
    print(f"wrote {len(sample)} rows to {args.output} (columns: review, sentiment)")


if __name__ == "__main__":
    main()
