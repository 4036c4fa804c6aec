"""Distillation on SST-2: a 3-layer student distilled from the demo's 6-layer model against the same student
trained without a teacher, same steps, over seeds.

Both arms train `recipes/glue/sst2_distill.yaml` (`--recipe`): the distilled arm with its `strategy.distill`,
the teacher pointed at `--teacher` (default runs/glue-sst2, what `make demo` trains); the plain arm with
`strategy.distill=null`, nothing else changed (same student, steps, data, seed). For each seed the two arms run
one after the other, each in a fresh `hf-finetune train` process, which one goes first alternating from seed to
seed. Reported: each run's dev accuracy (the recipe's eval split, SST-2 validation), the per-seed gap, the mean
of each arm, and each run's training time (`train_runtime`, the Trainer's loop; the distilled run's includes
the teacher's forward passes), so the distilled/plain time ratio is a figure of the same machine and run.
The issue's checks are printed: the distilled mean beats the plain mean (and on how many seeds), and reaches
0.87. The best distilled seed's run is kept (`--keep`, default runs/glue-sst2-student) for
`benchmarks/inference.py --student`; its dev accuracy is thus the best of the seeds (a selected figure; the
mean is the unselected one). Run it on an otherwise idle machine.

    .venv/bin/python benchmarks/distill.py [--seeds 42 43 44] [--teacher runs/glue-sst2]
        [--keep runs/glue-sst2-student] [--output runs/bench-distill.json]
    smoke test: ... --seeds 42 --max-steps 5 --train-examples 320 --eval-examples 64 --keep ''
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import _record
import _train

RECIPE = _train.GLUE / "sst2_distill.yaml"
ARMS = ("distilled", "plain")


def check_teacher(path: Path) -> str | None:
    """Why ``path`` cannot be the teacher (None when it can): a finished run's output dir holds its weights."""
    if not path.is_dir():
        return f"--teacher {path}: no such directory; train it first (`make demo` writes runs/glue-sst2)."
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not (path / "config.json").is_file() or not weights:
        return f"--teacher {path}: holds no config.json and model weights; give a finished run's output_dir."
    return None


def summary(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE), help="the student recipe, with strategy.distill")
    parser.add_argument("--teacher", default=str(_train.REPO / "runs" / "glue-sst2"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--max-steps", type=int, help="optimizer steps of every run (default: the recipe's)")
    parser.add_argument("--train-examples", type=int, help="data.max_train_samples (smoke tests)")
    parser.add_argument("--eval-examples", type=int, help="data.max_eval_samples (smoke tests)")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="a recipe override for both arms"
    )
    parser.add_argument("--metric", default="accuracy", help="the eval metric compared (default accuracy)")
    parser.add_argument("--target", type=float, default=0.87, help="the dev accuracy the student must reach")
    parser.add_argument(
        "--keep",
        default=str(_train.REPO / "runs" / "glue-sst2-student"),
        help="where to keep the best distilled run ('' keeps none)",
    )
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-distill.json"))
    args = parser.parse_args()

    recipe, teacher = Path(args.recipe), Path(args.teacher).absolute()
    if not recipe.is_file():
        print(f"error: --recipe {recipe}: no such file.", file=sys.stderr)
        return 2
    problem = check_teacher(teacher)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if len(set(args.seeds)) != len(args.seeds):
        print("error: --seeds: give each seed once.", file=sys.stderr)
        return 2
    common = list(args.override)
    if args.train_examples:
        common.append(f"data.max_train_samples={args.train_examples}")
    if args.eval_examples:
        common.append(f"data.max_eval_samples={args.eval_examples}")
    arm_overrides = {"distilled": [f"strategy.distill.teacher={teacher}"], "plain": ["strategy.distill=null"]}
    key = f"eval_{args.metric}"

    runs: list[dict] = []
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        for index, seed in enumerate(args.seeds):
            for arm in ARMS if index % 2 == 0 else reversed(ARMS):
                overrides = [*common, *arm_overrides[arm], f"training.seed={seed}"]
                result = _train.train(f"{arm}-{seed}", recipe, overrides, Path(tmp), args.max_steps)
                out = Path(result["output_dir"])
                state = (
                    json.loads((out / "trainer_state.json").read_text())
                    if (out / "trainer_state.json").is_file()
                    else {}
                )
                config = json.loads((out / "config.json").read_text())
                run = {
                    "arm": arm,
                    "seed": seed,
                    args.metric: result.get(key),
                    "eval_samples": result.get("eval_samples"),
                    "train_runtime": result.get("train_runtime"),
                    "train_samples_per_second": result.get("train_samples_per_second"),
                    "train_loss": result.get("train_loss"),
                    "steps": state.get("global_step"),
                    "num_hidden_layers": config.get("num_hidden_layers"),
                    "trainable_params": result.get("trainable_params"),
                    "wall_s": result["wall_s"],
                    "max_rss_mb": result.get("max_rss_mb"),
                    "precision": _record.label(result),
                    "strategy": result.get("strategy"),
                }
                if run[args.metric] is None:
                    sys.exit(
                        f"{arm} seed {seed}: no {key} in its all_results.json (does the recipe evaluate?)"
                    )
                runs.append(run)
                print(
                    f"{arm} seed {seed}: {args.metric} {run[args.metric]:.4f}, {run['steps']} steps in "
                    f"{run['train_runtime']:.0f} s ({run['num_hidden_layers']} layers); {_train.describe(result)}",
                    flush=True,
                )
                if arm == "distilled" and (best is None or run[args.metric] > best[0][args.metric]):
                    best = (run, out)
        kept = None
        if args.keep and best is not None:
            kept = _train.keep(best[1], args.keep)
            best[0]["kept"] = str(kept)

    by = {(r["arm"], r["seed"]): r for r in runs}
    scores = {arm: [by[arm, s][args.metric] for s in args.seeds] for arm in ARMS}
    times = {arm: [by[arm, s]["train_runtime"] for s in args.seeds] for arm in ARMS}
    gaps = [100 * (by["distilled", s][args.metric] - by["plain", s][args.metric]) for s in args.seeds]
    wins = sum(gap > 0 for gap in gaps)
    ratios = [by["distilled", s]["train_runtime"] / by["plain", s]["train_runtime"] for s in args.seeds]
    steps = {r["steps"] for r in runs}
    mean = {arm: statistics.mean(scores[arm]) for arm in ARMS}
    checks = {
        "distilled_beats_plain": {
            "value": statistics.mean(gaps),
            "need": "distilled mean > plain mean",
            "pass": mean["distilled"] > mean["plain"],
            "seeds_won": f"{wins}/{len(args.seeds)}",
        },
        "distilled_reaches_target": {
            "value": mean["distilled"],
            "need": f"distilled mean {args.metric} >= {args.target}",
            "pass": mean["distilled"] >= args.target,
        },
        "same_steps": {"value": sorted(steps, key=str), "pass": len(steps) == 1},
    }
    teacher_results = teacher / "all_results.json"
    teacher_info = {
        "run": str(teacher),
        "num_hidden_layers": json.loads((teacher / "config.json").read_text()).get("num_hidden_layers"),
        key: json.loads(teacher_results.read_text()).get(key) if teacher_results.is_file() else None,
    }

    lines = [
        f"| seed | distilled {args.metric} | plain {args.metric} | gap (points) | distilled train s | plain train s "
        "| time ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, gap, ratio in zip(args.seeds, gaps, ratios, strict=True):
        d, p = by["distilled", s], by["plain", s]
        lines.append(
            f"| {s} | {d[args.metric]:.4f} | {p[args.metric]:.4f} | {gap:+.2f} | {d['train_runtime']:.0f} "
            f"| {p['train_runtime']:.0f} | {ratio:.2f}x |"
        )
    lines.append(
        f"| mean | {mean['distilled']:.4f} | {mean['plain']:.4f} | {statistics.mean(gaps):+.2f} "
        f"| {statistics.mean(times['distilled']):.0f} | {statistics.mean(times['plain']):.0f} "
        f"| {statistics.mean(ratios):.2f}x |"
    )
    markdown = "\n".join(lines)
    layers = by["distilled", args.seeds[0]]["num_hidden_layers"]
    print()
    print(
        f"SST-2 dev {args.metric}: {layers}-layer student distilled from {teacher} "
        f"({teacher_info['num_hidden_layers']} layers, its own {key} {teacher_info[key]}) vs the same student without a "
        f"teacher; {sorted(steps, key=str)} steps each"
    )
    print(markdown)
    c = checks["distilled_beats_plain"]
    print(
        f"check: distilled beats plain: {'PASS' if c['pass'] else 'FAIL'} (mean gap {c['value']:+.2f} points, "
        f"won {c['seeds_won']} seeds)"
    )
    c = checks["distilled_reaches_target"]
    print(
        f"check: distilled mean {args.metric} {c['value']:.4f} >= {args.target}: {'PASS' if c['pass'] else 'FAIL'}"
    )
    if not checks["same_steps"]["pass"]:
        print(f"warning: the runs trained different numbers of steps: {checks['same_steps']['value']}")
    if kept:
        print(f"kept the best distilled run (seed {best[0]['seed']}, {best[0][args.metric]:.4f}) in {kept}")

    report = {
        "command": "python benchmarks/distill.py " + " ".join(sys.argv[1:]),
        "settings": vars(args),
        "recipe": str(recipe),
        "teacher": teacher_info,
        "runs": runs,
        "summary": {
            arm: {args.metric: summary(scores[arm]), "train_runtime": summary(times[arm])} for arm in ARMS
        },
        "gap_points": summary(gaps),
        "train_time_ratio_distilled_over_plain": summary(ratios),
        "checks": checks,
        "kept": str(kept) if kept else None,
        "table": markdown,
    }
    print(f"wrote {_train.write_report(args.output, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
