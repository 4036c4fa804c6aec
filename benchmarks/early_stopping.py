"""Early stopping on SST-2: where it stops, the wall time it saves and the dev accuracy, against the same run without it.

Both arms train `recipes/glue/sst2.yaml` (the real all-MiniLM-L6-v2, the full 67,349-sentence training split) for up
to 3 epochs, evaluating on the 872 dev sentences every 250 steps:
- `early-stopping`: `training.early_stopping={patience: 2}` with a checkpoint at each evaluation; it stops after two
  evaluations without a new best dev accuracy and loads the best checkpoint before the final evaluation;
- `baseline`: the same cadence, no early stopping, no checkpoints: all 3 epochs, the last weights evaluated.
One process per arm, one after the other (never beside another benchmark). Reported per arm: the step and epoch
it stopped at, train_runtime, whole-process wall time, the final dev accuracy, the best dev accuracy any evaluation
saw (and its step), and the number of evaluations.

    .venv/bin/python benchmarks/early_stopping.py [--epochs 3] [--eval-steps 250] [--patience 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import _train

RECIPE = _train.GLUE / "sst2.yaml"


def evaluations(output_dir: Path) -> list[tuple[int, float]]:
    """(step, dev accuracy) of every evaluation during training, from the run's trainer_state.json."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["eval_accuracy"]) for entry in history if "eval_accuracy" in entry]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--eval-steps", type=int, default=250)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-early-stopping.json"))
    args = parser.parse_args()
    common = [f"training.num_train_epochs={args.epochs}", f"training.eval_steps={args.eval_steps}"]
    arms = {
        "early-stopping": [
            *common,
            "training.save_strategy=steps",
            f"training.early_stopping={{patience: {args.patience}}}",
        ],
        "baseline": common,
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for name, overrides in arms.items():
            result = _train.train(name, RECIPE, overrides, scratch, None, evaluate=True)
            out = Path(result["output_dir"])
            state = json.loads((out / "trainer_state.json").read_text())
            seen = evaluations(out)
            best_step, best = max(seen, key=lambda pair: pair[1])
            row = {
                "stopped_at_step": state["global_step"],
                "max_steps": state["max_steps"],
                "stopped_at_epoch": state["epoch"],
                "train_runtime": result["train_runtime"],
                "wall_s": result["wall_s"],
                "final_eval_accuracy": result["eval_accuracy"],
                "best_eval_accuracy_during_training": best,
                "best_step": best_step,
                "evaluations": len(seen),
                "curve": seen,
                "max_rss_mb": result["max_rss_mb"],
                "precision": result["precision"],
            }
            results[name] = row
            print(
                f"{name}: stopped at step {row['stopped_at_step']}/{row['max_steps']} (epoch "
                f"{row['stopped_at_epoch']:.2f}), train_runtime {row['train_runtime']:.0f} s, wall "
                f"{row['wall_s']:.0f} s, final dev accuracy {row['final_eval_accuracy']:.4f}, best during training "
                f"{best:.4f} at step {best_step} ({len(seen)} evaluations); {_train.describe(result)}",
                flush=True,
            )
    stopped, full = results["early-stopping"], results["baseline"]
    summary = {
        "wall_time_saved_s": full["wall_s"] - stopped["wall_s"],
        "wall_ratio": full["wall_s"] / stopped["wall_s"],
        "train_runtime_ratio": full["train_runtime"] / stopped["train_runtime"],
        "accuracy_difference": stopped["final_eval_accuracy"] - full["final_eval_accuracy"],
    }
    print(
        f"early stopping saves {summary['wall_time_saved_s']:.0f} s of wall time ({summary['wall_ratio']:.2f}x "
        f"faster, train_runtime {summary['train_runtime_ratio']:.2f}x); dev accuracy "
        f"{summary['accuracy_difference']:+.4f} against the full run",
        flush=True,
    )
    output = _train.write_report(args.output, {"settings": vars(args), "runs": results, "summary": summary})
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
