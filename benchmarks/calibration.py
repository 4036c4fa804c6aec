"""Calibration on SST-2: expected calibration error before and after temperature scaling, held out.

`recipes/glue/sst2.yaml` (all-MiniLM-L6-v2, one epoch) trains on SST-2's training sentences less 2,000 carved
out as the evaluation split (`data.validation_size`); the temperature is fitted on those 2,000 at the end of
training. The 872 dev sentences are the test split (`data.test_split`): never seen in training or in the fit,
so their ECE before and after (`test_ece`, `test_ece_calibrated`) is the honest figure; the evaluation split's
(`eval_ece_calibrated`) is in-sample. The run is kept (`--keep`) with its reliability_diagram.png; the
long-document benchmark (benchmarks/long_text.py) can reuse its model.

    .venv/bin/python benchmarks/calibration.py [--validation-size 2000] [--keep runs/bench-calibration] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import _train

RECIPE = _train.GLUE / "sst2.yaml"
KEYS = (
    "eval_accuracy",
    "eval_temperature",
    "eval_ece",
    "eval_ece_calibrated",
    "test_accuracy",
    "test_ece",
    "test_ece_calibrated",
    "test_samples",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation-size", type=int, default=2000)
    parser.add_argument("--mirror", default=str(_train.REPO.parent / "shared" / "data"))
    parser.add_argument("--keep", default=str(_train.REPO / "runs" / "bench-calibration"))
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-calibration.json"))
    args = parser.parse_args()
    sst2 = Path(args.mirror) / "glue" / "sst2"
    files = {"train": str(sst2 / "train.jsonl"), "test": str(sst2 / "validation.jsonl")}
    overrides = [
        "data.dataset=null",
        "data.config=null",
        f"data.files={json.dumps(files)}",
        f"data.validation_size={args.validation_size}",
        "data.eval_split=validation",
        "data.test_split=test",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp)
        result = _train.train("calibration", RECIPE, overrides, runs_dir, None)
        keep = _train.keep(result["output_dir"], args.keep)
    figures = {key: result.get(key) for key in KEYS}
    print(
        ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        + f"; reliability diagram in {keep / 'reliability_diagram.png'}; {_train.describe(result)}",
        flush=True,
    )
    report = {
        "command": f"python benchmarks/calibration.py --validation-size {args.validation_size}",
        **figures,
        "calibration": json.loads((keep / "calibration.json").read_text()),
        "train_runtime": result["train_runtime"],
        "wall_s": result["wall_s"],
        "kept": str(keep),
    }
    print(f"report: {_train.write_report(args.output, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
