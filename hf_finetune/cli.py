"""`hf-finetune train|validate|plan|eval|predict|export|push|bench|tune|recipes|tasks`.

Input mistakes print one message naming the field or file and the fix, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .catalog import describe as describe_recipe
from .catalog import recipes_dir, resolve_recipe_path
from .errors import FinetuneError
from .logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-finetune",
        description="Fine-tune pretrained transformers from a YAML recipe on the Hugging Face Trainer.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of input errors (normally one message)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    overrides_help = "dotted overrides, e.g. training.learning_rate=3e-5 data.max_train_samples=4000"
    p = sub.add_parser("train", help="fine-tune as a recipe says")
    p.add_argument("recipe", help="recipe YAML (or a bundled name such as glue/sst2)")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--output-dir", help="same as training.output_dir=DIR")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in the output dir (training.resume=auto)",
    )
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint-N directory")

    p = sub.add_parser("validate", help="check a recipe and its data without loading weights (exit 0 or 2)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser(
        "plan",
        help="print the parameter groups a recipe trains (frozen/trainable, lr, decay), without weights",
    )
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")

    p = sub.add_parser("eval", help="re-evaluate a trained output directory")
    p.add_argument("output_dir")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--split", help="split to evaluate (default: the recipe's eval split)")
    p.add_argument("--batch-size", type=int)

    p = sub.add_parser("predict", help="label JSON Lines with a trained output directory")
    p.add_argument("output_dir")
    p.add_argument("--input", required=True, help="JSON Lines: one object per line with the text field(s)")
    p.add_argument(
        "--output", required=True, help="JSON Lines written: input fields + label + score (NER: entities)"
    )
    p.add_argument("--batch-size", type=int, default=32)

    p = sub.add_parser(
        "export", help="write a peft run as a standalone model (adapter merged into the weights)"
    )
    p.add_argument("output_dir", help="a trained output directory holding a LoRA or IA3 adapter")
    p.add_argument(
        "--merge", action="store_true", required=True, help="merge the adapter into the base weights"
    )
    p.add_argument("--output", required=True, help="new directory for the merged model")

    p = sub.add_parser(
        "push",
        help="upload a trained output directory (model or PEFT adapter, with its model card) to the Hub",
    )
    p.add_argument("output_dir", help="the training.output_dir of a finished run")
    p.add_argument("--repo-id", required=True, help="user/name or org/name; created if missing")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to push to (created if missing; default main)")
    p.add_argument(
        "--merge", action="store_true", help="PEFT runs: push the adapter merged into the base weights"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the files that would be uploaded; contact nothing"
    )
    p.add_argument("--commit-message", help="commit message on the Hub")

    p = sub.add_parser(
        "bench",
        help="run a bench file: task recipes x strategies x seeds, one process per cell (resumable)",
    )
    p.add_argument("bench_file", nargs="?", help="bench YAML, e.g. recipes/bench/glue-quick.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        help="bench.FIELD=value (e.g. bench.seeds=[1] bench.max_steps=200), or section.field=value for every cell",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this machine's peak matmul FLOP/s per dtype (the MFU denominator) and cache it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "tune",
        help="search a recipe's strategy and Trainer settings on its validation score (optuna TPE + median "
        "pruning; resumable)",
    )
    p.add_argument("recipe", help="the recipe to tune (a path or a bundled name such as glue/rte)")
    p.add_argument("overrides", nargs="*", help=overrides_help + " (laid under every trial)")
    p.add_argument("--trials", type=int, help="trials in the search (counted over resumed runs)")
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="wall minutes for this run: no trial starts after them, and the running one is stopped",
    )
    p.add_argument(
        "--space",
        default="tune/default-space",
        help="search space YAML (default: the bundled recipes/tune/default-space.yaml)",
    )
    p.add_argument("--output-dir", help="the tune directory (default runs/tune/<recipe name>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--metric", help="eval metric to optimise (default: the task's headline metric)")
    p.add_argument(
        "--direction", choices=["maximize", "minimize"], help="default: maximize (minimize for losses)"
    )
    p.add_argument(
        "--confirm-seeds",
        type=int,
        nargs="+",
        default=[],
        metavar="SEED",
        help="after the search, retrain the recipe as given and the best recipe once per seed and compare",
    )
    p.add_argument(
        "--trial-seeds",
        type=int,
        nargs="+",
        default=[],
        metavar="SEED",
        help="train every trial once per seed and score it by the mean (a small dev set's seed noise can be "
        "as large as the differences the search is after; costs that many times the training). Default: once, "
        "with the recipe's training.seed",
    )
    p.add_argument("--keep-models", action="store_true", help="keep each trial's trained weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("recipes", help="list the bundled recipes")
    sub.add_parser("tasks", help="list the tasks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return _dispatch(args)
    except FinetuneError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"hf-finetune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hf-finetune: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from .config import load_recipe

    if args.command == "bench":
        return _bench(args)
    if args.command == "tune":
        return _tune(args)
    if args.command == "recipes":
        root = recipes_dir()
        if root is None:
            print("no recipes directory found (set HF_FINETUNE_RECIPES)", file=sys.stderr)
            return 1
        for path in sorted(root.rglob("*.yaml")):
            rel = path.relative_to(root).with_suffix("")
            print(f"{str(rel):<28} {describe_recipe(path)}")
        return 0
    if args.command == "tasks":
        from .tasks import available_tasks

        for name, spec in available_tasks().items():
            print(f"{name:<24} {spec.description}")
        return 0
    if args.command == "validate":
        from .pipeline import validate

        summary = validate(load_recipe(resolve_recipe_path(args.recipe), args.overrides))
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"OK: {args.recipe}")
            for key, value in summary.items():
                print(f"  {key}: {value}")
        return 0
    if args.command == "plan":
        from .pipeline import plan

        result = plan(load_recipe(resolve_recipe_path(args.recipe), args.overrides))
        print(json.dumps(result.to_dict(), indent=2) if args.json else format_plan(result))
        return 0
    if args.command == "train":
        from .pipeline import train

        overrides = list(args.overrides)
        if args.resume and args.resume_from:
            raise FinetuneError("--resume and --resume-from: give one of the two.")
        if args.resume or args.resume_from:
            overrides.append(f"training.resume={args.resume_from or 'auto'}")
        recipe = load_recipe(resolve_recipe_path(args.recipe), overrides, output_dir=args.output_dir)
        metrics = train(recipe)
        shown = {
            k: v
            for k, v in metrics.items()
            if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))
        }
        print(json.dumps(shown, indent=2))
        return 0
    if args.command == "eval":
        from .pipeline import evaluate_output

        metrics = evaluate_output(args.output_dir, args.split, args.overrides, args.batch_size)
        print(json.dumps(metrics, indent=2))
        return 0
    if args.command == "export":
        from .pipeline import export_merged

        target = export_merged(args.output_dir, args.output)
        print(f"wrote the merged model to {target}")
        return 0
    if args.command == "push":
        from .publish import push

        result = push(
            args.output_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            merge=args.merge,
            dry_run=args.dry_run,
            commit_message=args.commit_message,
        )
        if result["dry_run"]:
            print(result["description"])
        else:
            print(f"pushed {len(result['files'])} files to {args.repo_id}: {result['commit_url']}")
        return 0
    if args.command == "predict":
        from .pipeline import predict_output

        count = predict_output(args.output_dir, args.input, args.output, args.batch_size)
        print(f"wrote {count} predictions to {args.output}")
        return 0
    raise AssertionError(args.command)


def _bench(args: argparse.Namespace) -> int:
    from .bench import load_bench, run_bench

    if args.bench_file is None and not args.calibrate:
        raise FinetuneError("bench: give a bench file (e.g. recipes/bench/glue-quick.yaml), or --calibrate.")
    bench = None
    if args.bench_file is not None:
        path = args.bench_file
        if not Path(path).exists() and recipes_dir() is not None:
            path = resolve_recipe_path(path if "/" in path else f"bench/{path}")
        bench = load_bench(path, args.overrides)
        bench.cells()  # every cell's recipe is checked before anything is measured or trained
    if args.calibrate:
        import torch

        from .mfu import CUDA_DTYPES, DTYPES, cache_path, calibrate, device_name

        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            for dtype, entry in calibrate(device, CUDA_DTYPES if device == "cuda" else DTYPES).items():
                print(
                    f"{device} ({device_name(device)}) {dtype}: {entry['flops'] / 1e12:.3f} TFLOP/s "
                    f"(matmul {entry['matmul_size']})"
                )
        print(f"cached in {cache_path()}")
    if bench is None:
        return 0
    summary = run_bench(bench, progress=not args.no_progress)
    print(
        f"{summary['cells']} cells: {summary['ran']} ran, {summary['skipped']} already done, "
        f"{summary['failed']} failed; results in {summary['output_dir']}/(results.jsonl, results.md, results.png)"
    )
    return 1 if summary["failed"] else 0


def _tune(args: argparse.Namespace) -> int:
    from .tune import prepare_tune, run_tune

    space = args.space
    if not Path(space).exists():
        space = resolve_recipe_path(space)
    tune = prepare_tune(
        resolve_recipe_path(args.recipe),
        args.overrides,
        space,
        output_dir=args.output_dir,
        trials=args.trials,
        budget_minutes=args.budget_minutes,
        seed=args.seed,
        metric=args.metric,
        direction=args.direction,
        confirm_seeds=args.confirm_seeds,
        keep_models=args.keep_models,
        trial_seeds=args.trial_seeds,
    )
    summary = run_tune(tune, progress=not args.no_progress)
    out = summary["output_dir"]
    if summary["best_trial"] is None:
        print(f"no trial finished; see {out}/leaderboard.md")
        return 1
    print(
        f"{summary['counted']} trials ({summary['ran']} this run, stopped by {summary['stopped_by']}); best: trial "
        f"{summary['best_trial']}, {summary['best_score']:.4f}. Results in {out}/ (leaderboard.md, trials.jsonl, "
        f"importance.png); train the best with `hf-finetune train {out}/best_recipe.yaml`"
    )
    confirmed = summary.get("confirm")
    if confirmed and confirmed["best"]["mean"] is not None and confirmed["recipe"]["mean"] is not None:
        print(
            f"retrained with seeds {confirmed['seeds']}: recipe {confirmed['recipe']['mean']:.4f}, "
            f"best {confirmed['best']['mean']:.4f}"
        )
    return 0


def format_plan(plan) -> str:
    unit = {"epoch": "epoch", "steps": "step"}.get(plan.unfreeze_unit or "", "")
    header = (
        "group",
        "params",
        "trainable",
        "lr",
        "weight_decay",
        *(["from " + unit] if unit else []),
        "modules",
    )
    rows = [header]
    for g in plan.groups:
        row = [
            g.name,
            f"{g.params:,}",
            "yes" if g.trainable else "frozen",
            "-" if g.lr is None else f"{g.lr:.3g}",
            "-" if g.weight_decay is None else f"{g.weight_decay:g}",
        ]
        if unit:
            row.append("-" if not g.trainable else str(g.unfreeze_at or 0))
        row.append(", ".join(g.modules))
        rows.append(tuple(row))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [f"strategy: {plan.description} ({plan.architecture}, {plan.num_layers} layers)"]
    for r in rows:
        cells = [c.rjust(w) if 0 < i < 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells) + "  " + r[-1])
    lines.append(
        f"trainable {plan.trainable_params:,} of {plan.total_params:,} parameters ({plan.trainable_percent:.2f}%)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
