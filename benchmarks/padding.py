"""Dynamic padding (our default) vs padding every batch to 128 tokens (run_glue.py's default), SST-2.

Both runs use `recipes/glue/sst2.yaml` unchanged (model, data, batch size 32, learning rate, schedule,
precision, seed, length-grouped batch order), for the same number of optimizer steps; the reference adds
only `data.padding=max_length`, so every batch is padded to `data.max_seq_length` (128). The two run back
to back, once per seed in `--seeds`. Prints samples/s (median), the ratio, dev accuracy on all 872
examples, and the paired accuracy gap over the seeds (mean, sample std, standard error). Run one
benchmark at a time on this machine.

Every finished run is appended to `--runs` (JSON Lines) at once, and a run already recorded there with
the same settings (variant, seed, steps, overrides, CPU capability) is not trained again: an interrupted
benchmark continues, and more seeds can be added later. The report covers every seed recorded for the
current settings.

`--same-dropout-masks` (common random numbers, see `_same_masks.py`): both runs draw the same dropout
masks, over the real tokens only, with eager attention. Without it the two runs differ in every mask as
well as in their padding, and a pair of runs then differs by as much as two seeds do; with it they differ
only in what padding does to the arithmetic, which is what the accuracy comparison is about. Its speeds
are of eager attention with the patched dropout: take the speed ratio from a run without it.

    .venv/bin/python benchmarks/padding.py [--steps 600] [--seeds 42 ...] [--same-dropout-masks] [--override k=v ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import _train

VARIANTS = {"dynamic": [], "pad-128": ["data.padding=max_length"]}
# --same-dropout-masks: both runs draw their dropout masks over the real tokens only (see _same_masks.py)
SAME_MASKS = (  # loaded by path: this folder on sys.path would shadow the peft package with peft.py
    "import importlib.util as u; s = u.spec_from_file_location('_same_masks', "
    f"{str(Path(__file__).resolve().parent / '_same_masks.py')!r}); m = u.module_from_spec(s); "
    "s.loader.exec_module(m); m.install()"
)


def machine() -> str:
    import torch

    return f"{torch.backends.cpu.get_cpu_capability()}/{torch.get_num_threads()} threads/torch {torch.__version__}"


def settings_key(args: argparse.Namespace) -> dict:
    key = {"steps": args.steps, "overrides": sorted(args.override), "machine": machine()}
    if args.same_dropout_masks:
        key["same_dropout_masks"] = True
    return key


def recorded(path: Path, key: dict) -> dict[tuple[str, int], dict]:
    """The runs in ``path`` made with these settings, by (variant, seed); a torn last line is skipped."""
    runs: dict[tuple[str, int], dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("settings") == key:
                runs[(row["variant"], row["seed"])] = row
    return runs


def paired_gap(runs: dict[tuple[str, int], dict]) -> dict:
    seeds = sorted(s for v, s in runs if v == "dynamic" and ("pad-128", s) in runs)
    gaps = [100 * (runs["pad-128", s]["eval_accuracy"] - runs["dynamic", s]["eval_accuracy"]) for s in seeds]
    out: dict = {"seeds": seeds, "gap_points_per_seed": gaps}
    if gaps:
        out["mean_gap_points"] = statistics.mean(gaps)
    if len(gaps) > 1:
        out["std_gap_points"] = statistics.stdev(gaps)
        out["stderr_gap_points"] = out["std_gap_points"] / math.sqrt(len(gaps))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--runs", default=str(_train.REPO / "runs" / "bench-padding.jsonl"))
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-padding.json"))
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="an extra recipe override for both runs, e.g. model.config_overrides.hidden_dropout_prob=0 "
        "(dropout draws masks over the padded shape, so with it on the two runs also differ in their masks)",
    )
    parser.add_argument(
        "--same-dropout-masks",
        action="store_true",
        help="common random numbers: both runs draw the same dropout masks over the real tokens, with eager "
        "attention, so they differ only in what padding does to the arithmetic (accuracy, not speed)",
    )
    args = parser.parse_args()
    key = settings_key(args)
    prelude = SAME_MASKS if args.same_dropout_masks else ""
    log = Path(args.runs)
    log.parent.mkdir(parents=True, exist_ok=True)
    done = recorded(log, key)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name in VARIANTS:
                if (name, seed) in done:
                    continue
                overrides = [*VARIANTS[name], *args.override, f"training.seed={seed}"]
                result = _train.train(
                    name, _train.GLUE / "sst2.yaml", overrides, Path(tmp), args.steps, prelude
                )
                row = {"variant": name, "seed": seed, "settings": key, **result}
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done[name, seed] = row
                print(
                    f"{name} seed {seed}: {result['train_samples_per_second']:.1f} samples/s, "
                    f"dev accuracy {result['eval_accuracy']:.4f}, "
                    f"train_runtime {result['train_runtime']:.0f}s; {_train.describe(result)}",
                    flush=True,
                )
    by_variant = {name: [r for (v, _), r in sorted(done.items()) if v == name] for name in VARIANTS}
    speed = {n: statistics.median(r["train_samples_per_second"] for r in rs) for n, rs in by_variant.items()}
    accuracy = {n: statistics.mean(r["eval_accuracy"] for r in rs) for n, rs in by_variant.items()}
    gap = paired_gap(done)
    report = {
        "settings": {**vars(args), **key},
        "samples_per_second": speed,
        "eval_accuracy": accuracy,
        "eval_accuracy_per_seed": {
            n: {r["seed"]: r["eval_accuracy"] for r in rs} for n, rs in by_variant.items()
        },
        "speed_ratio_dynamic_over_pad128": speed["dynamic"] / speed["pad-128"],
        "accuracy_gap": gap,
    }
    output = _train.write_report(args.output, report)
    print(
        f"dynamic padding {report['speed_ratio_dynamic_over_pad128']:.2f}x the samples/s of pad-to-128; "
        f"accuracy {accuracy['dynamic']:.4f} vs {accuracy['pad-128']:.4f}"
    )
    if "stderr_gap_points" in gap:
        print(
            f"pad-128 minus dynamic over {len(gap['seeds'])} seeds: {gap['mean_gap_points']:+.2f} points "
            f"(std {gap['std_gap_points']:.2f}, standard error {gap['stderr_gap_points']:.2f})"
        )
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
