"""A bench with experiment tracking on: one run per cell in each tracker's local store, read back.

`hf-finetune bench` on a small bench file (SST-2 with the real all-MiniLM-L6-v2; `full` and `lora-r8`, as in
recipes/bench/glue-quick.yaml; seeds 1 and 2; `--steps` steps per cell) with
`bench.report_to=[tensorboard, trackio, mlflow]`. Afterwards every store under `<output dir>/tracking/` is
read with the tracker's own reader (TensorBoard's EventAccumulator, trackio's SQLite storage, MLflow's client)
and each run's final accuracy is set beside the cell's score in the bench's results.jsonl.

    .venv/bin/python benchmarks/tracked_bench.py [--steps 60] [--output-dir runs/bench-tracked] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import _train
import yaml

TRACKERS = ["tensorboard", "trackio", "mlflow"]


def bench_file(folder: Path, output_dir: Path, steps: int) -> Path:
    spec = {
        "bench": {"output_dir": str(output_dir), "seeds": [1, 2], "max_steps": steps, "report_to": TRACKERS},
        "tasks": {"sst2": {"recipe": "glue/sst2"}},
        "strategies": {
            "full": {},
            "lora-r8": {
                "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1},
                "strategy": {"head_lr_multiplier": 1},
                "training": {"learning_rate": 1.0e-3},
            },
        },
        "overrides": {"training": {"logging_steps": 10}},
    }
    path = folder / "tracked-bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def read_stores(store: Path, project: str) -> dict[str, dict[str, dict]]:
    """Per tracker, per run name: the number of loss points and the final eval accuracy it holds."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hf_finetune import tracking

    found: dict[str, dict[str, dict]] = {name: {} for name in TRACKERS}
    for events in sorted(store.joinpath("tensorboard").rglob("events.out.tfevents.*")):
        run = str(events.parent.relative_to(store / "tensorboard"))
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        found["tensorboard"][run] = {
            "loss_points": len(acc.Scalars("train/loss")),
            "eval_accuracy": acc.Scalars("eval/accuracy")[-1].value,
        }
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(project)
    for run in client.search_runs([experiment.experiment_id]):
        found["mlflow"][run.info.run_name] = {
            "loss_points": len(client.get_metric_history(run.info.run_id, "loss")),
            "eval_accuracy": run.data.metrics["eval_accuracy"],
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        }
    tracking.use_trackio_dir(store / "trackio")
    from trackio.sqlite_storage import SQLiteStorage

    for run in SQLiteStorage.get_runs(project):
        logs = SQLiteStorage.get_logs(project, run)
        found["trackio"][run] = {
            "loss_points": sum("train/loss" in e for e in logs),
            "eval_accuracy": [e["eval/accuracy"] for e in logs if "eval/accuracy" in e][-1],
        }
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--mirror", default=str(_train.REPO.parent / "shared" / "data"))
    parser.add_argument("--output-dir", default=str(_train.REPO / "runs" / "bench-tracked"))
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-tracked.json"))
    args = parser.parse_args()
    out = Path(args.output_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    spec = bench_file(out, out, args.steps)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TRACKIO_", "TENSORBOARD_"))}
    env.setdefault("HF_FINETUNE_DATA_MIRROR", args.mirror)  # SST-2 from the local mirror when there is one
    proc = subprocess.run(
        [sys.executable, "-m", "hf_finetune", "bench", str(spec), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"bench failed:\n{proc.stderr[-3000:]}")
    cells = {
        f"{r['task']}/{r['strategy']}/seed{r['seed']}": r["score"]
        for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())
    }
    found = read_stores(out / "tracking", out.name)
    for tracker, runs in found.items():
        print(f"{tracker}: {len(runs)} runs for {len(cells)} cells", flush=True)
        for run, seen in sorted(runs.items()):
            print(
                f"  {run}: {seen['loss_points']} loss points, eval accuracy {seen['eval_accuracy']:.4f} "
                f"(the cell's score {cells.get(run, float('nan')):.4f})",
                flush=True,
            )
    report = {
        "command": f"python benchmarks/tracked_bench.py --steps {args.steps}",
        "cells": cells,
        "stores": found,
        "one_run_per_cell": all(sorted(runs) == sorted(cells) for runs in found.values()),
    }
    print(f"one run per cell in every store: {report['one_run_per_cell']}")
    print(f"report: {_train.write_report(args.output, report)}")
    return 0 if report["one_run_per_cell"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
