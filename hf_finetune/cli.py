"""`hf-finetune init|train|validate|plan|eval|predict|export|push|bench|tune|recipes|tasks`.

The commands are one table, ``COMMANDS``: each entry names a command, its help, the function that adds its
arguments and the function that runs it. Options, dotted overrides (``section.field=value``) and the other
positional arguments may come in any order, and ``-v``/``--debug`` before or after the command. The library
is imported lazily, when a command runs, so ``--help`` and the listings stay fast; nothing in the library
imports this module.

Input mistakes print one message naming the field or file and the fix, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import catalog
from .errors import FinetuneError
from .logs import setup_logging

PROG = "hf-finetune"
OVERRIDES_HELP = (
    "dotted overrides, e.g. training.learning_rate=3e-5 data.max_train_samples=4000 "
    "(anywhere on the line, before or after the options)"
)


@dataclass(frozen=True)
class Command:
    """One `hf-finetune` command: its name, its one-line help, the function that adds its arguments to
    its parser, and the function that runs it on the parsed arguments and returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------------------- arguments


def _add_recipe(p: argparse.ArgumentParser, help: str = "recipe YAML, or a bundled name such as glue/sst2"):
    p.add_argument("recipe", help=help)


def _add_overrides(p: argparse.ArgumentParser, help: str = OVERRIDES_HELP) -> None:
    # default=[]: not required, so a missing recipe is reported alone
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=help)


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a seed; a list of seeds ends at the next option, so give the recipe and "
            "overrides before it"
        ) from None


def _init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "data_file",
        metavar="DATA_FILE",
        help="the training data: csv, tsv, json, jsonl, parquet, or CoNLL columns (.conll, .txt)",
    )
    p.add_argument(
        "--task",
        metavar="NAME",
        help="text-classification, token-classification or question-answering (default: inferred)",
    )
    columns = p.add_argument_group("columns (default: inferred; name one where init asks)")
    for flag, help in (
        ("--text-column", "text classification: the text"),
        ("--text-pair-column", "text classification: the second text of a pair; `none` for one text only"),
        ("--label-column", "text classification: the label (class name or id, list of names, or number)"),
        ("--tokens-column", "token classification: the words of each sentence"),
        ("--tags-column", "token classification: one IOB tag per word"),
        ("--question-column", "question answering: the question"),
        ("--context-column", "question answering: the context"),
        ("--answers-column", "question answering: {text, answer_start}"),
    ):
        columns.add_argument(flag, metavar="COLUMN", help=help)
    p.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="checkpoint to fine-tune (default: sentence-transformers/all-MiniLM-L6-v2); its tokenizer measures "
        "the lengths (no weights load)",
    )
    p.add_argument(
        "--validation-file",
        metavar="FILE",
        help="evaluation data (default: validation/valid/dev/eval next to DATA_FILE, "
        "else data.validation_size: 0.1)",
    )
    p.add_argument(
        "--encoding",
        metavar="CODEC",
        help="the data files' text encoding, e.g. latin-1 or cp1252 (default UTF-8); written as data.encoding",
    )
    p.add_argument(
        "--output",
        metavar="PATH",
        default="recipe.yaml",
        help="the recipe written (default recipe.yaml; - prints it)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --output file")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    _add_recipe(p)
    _add_overrides(p)
    p.add_argument("--output-dir", help="same as training.output_dir=DIR")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in the output dir (training.resume=auto)",
    )
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint-N directory")


def _validate_arguments(p: argparse.ArgumentParser, json_help: str = "print the summary as JSON") -> None:
    _add_recipe(p)
    _add_overrides(p)
    p.add_argument("--json", action="store_true", help=json_help)


def _plan_arguments(p: argparse.ArgumentParser) -> None:
    _validate_arguments(p, "print the plan as one JSON object")


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", help="the training.output_dir of a finished run")
    _add_overrides(p)
    p.add_argument("--split", help="split of the run's data to evaluate (default: the recipe's eval split)")
    p.add_argument(
        "--file",
        metavar="FILE",
        help="evaluate this labelled data file instead (csv, tsv, json, jsonl, parquet, conll), without the "
        "run's training data; labels map through the saved model's",
    )
    p.add_argument(
        "--name", help="name of --file's results: eval_NAME_results.json (default: the file's stem)"
    )
    p.add_argument(
        "--predictions",
        action="store_true",
        help="also write predictions_NAME.jsonl: each row's input fields and the prediction, as predict does",
    )
    p.add_argument("--batch-size", type=int)


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", help="the training.output_dir of a finished run")
    p.add_argument(
        "--input",
        required=True,
        help="JSON Lines (one object per line), or CSV/TSV by the extension (.csv, .tsv; a header row), with "
        "the text field(s)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="written: input + label + score (NER: entities); CSV/TSV for a .csv/.tsv name, else JSON Lines",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="classification: also the K most likely labels with their probabilities (field top_k)",
    )
    p.add_argument(
        "--all-scores",
        action="store_true",
        help="classification: also every label's probability (field scores)",
    )
    p.add_argument(
        "--uncalibrated",
        action="store_true",
        help="single-label classification: the model's raw scores, not divided by the temperature fitted "
        "after training (calibration.json); the labels are the same",
    )
    p.add_argument(
        "--encoding", help="the input file's text encoding (default UTF-8), e.g. latin-1 or cp1252"
    )


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", help="a trained output directory (a full model, or a LoRA or IA3 adapter)")
    p.add_argument(
        "--format",
        metavar="{merged,onnx}",
        help="onnx: one ONNX file with the tokenizer, label maps and recipe, checked against the PyTorch model "
        "on the eval split (export.json); merged: a LoRA/IA3 adapter folded into a standalone model",
    )
    p.add_argument("--merge", action="store_true", help="the same as --format merged")
    p.add_argument("--output", required=True, help="new directory for the export")
    p.add_argument("--quantize", metavar="METHOD", help="--format onnx: int8 (dynamic int8 weights)")
    p.add_argument(
        "--parity-examples",
        type=int,
        metavar="N",
        help="--format onnx: check parity on the first N examples of the eval split (default: all; 0: no check)",
    )
    p.add_argument(
        "--max-logit-diff",
        type=float,
        metavar="X",
        default=1e-3,
        help="fp32 ONNX: the largest |logit difference| to the PyTorch model that passes (default 1e-3)",
    )
    p.add_argument(
        "--min-identical",
        type=float,
        metavar="SHARE",
        default=0.999,
        help="fp32 ONNX: the smallest share of predictions identical to the PyTorch model's that passes "
        "(default 0.999)",
    )
    p.add_argument(
        "--max-metric-drop",
        type=float,
        metavar="D",
        help="ONNX, fp32 or int8: fail when the task metric drops by more than this (default: not checked)",
    )


def _push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", help="the training.output_dir of a finished run")
    p.add_argument("--repo-id", required=True, help="user/name or org/name; created if missing")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to push to (created if missing; default main)")
    p.add_argument("--merge", action="store_true", help="PEFT runs: push the adapter merged into the base")
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded; no upload")
    p.add_argument("--commit-message", help="commit message on the Hub")


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bench_file", nargs="?", help="bench YAML, or a bundled name such as bench/glue-quick")
    _add_overrides(
        p,
        "bench.FIELD=value (e.g. bench.seeds=[1] bench.max_steps=200), or section.field=value for every cell "
        "(anywhere on the line)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this machine's peak matmul FLOP/s per dtype (the MFU denominator) and cache it",
    )
    _add_workers(p, "cells")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_workers(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help=f"{what} at once on this machine, each its own process (default 1); on the CPU the cores are "
        "split between them",
    )
    p.add_argument(
        "--devices",
        type=lambda text: [d for d in text.split(",") if d.strip()],
        default=[],
        metavar="0,1,...",
        help="pin one device per worker, in turn (CUDA_VISIBLE_DEVICES); alone, one worker per device",
    )


def _tune_arguments(p: argparse.ArgumentParser) -> None:
    _add_recipe(
        p,
        "the recipe to tune (a path or a bundled name such as glue/rte); or `report`: write a search's "
        "outputs from its study (--storage, --study-name, --output-dir)",
    )
    _add_overrides(p, OVERRIDES_HELP + "; laid under every trial")
    p.add_argument("--trials", type=int, help="trials in the search (counted over resumed runs)")
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="wall minutes for this run: no trial starts after them, and the running one is stopped",
    )
    p.add_argument(
        "--space",
        default="tune/default-space",
        help="search space YAML, or a bundled name such as pairs-space (default: tune/default-space)",
    )
    p.add_argument("--output-dir", help="the tune directory (default runs/tune/<recipe name>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--metric", help="eval metric to optimise (default: the task's headline metric)")
    p.add_argument(
        "--direction", choices=["maximize", "minimize"], help="default: maximize (minimize for losses)"
    )
    p.add_argument(
        "--confirm-seeds",
        type=_seed,
        nargs="+",
        default=[],
        metavar="SEED",
        help="after the search, retrain the recipe as given and the best recipe once per seed and compare",
    )
    p.add_argument(
        "--trial-seeds",
        type=_seed,
        nargs="+",
        default=[],
        metavar="SEED",
        help="train every trial once per seed and score it by the mean (a small dev set's seed noise can be "
        "as large as the differences the search is after; costs that many times the training). Default: once, "
        "with the recipe's training.seed",
    )
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="score each trial by the mean over K stratified folds of the training split (K trainings per "
        "trial; the evaluation split is left for the winner); the pruner sees the running mean",
    )
    p.add_argument("--keep-models", action="store_true", help="keep each trial's trained weights")
    p.add_argument(
        "--report-to",
        nargs="+",
        default=[],
        metavar="TRACKER",
        help="experiment trackers every trial reports to (tensorboard, trackio, mlflow): one store in the tune "
        "directory's tracking/, the search as the project, a run per trial",
    )
    _add_workers(p, "trials")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="the study's optuna storage, shared by workers on any number of machines: postgresql://..., "
        "mysql://..., sqlite:///PATH or journal:PATH (default: study.db in the tune directory)",
    )
    p.add_argument(
        "--study-name",
        help="the study's name in --storage (default hf-finetune-tune): several searches can share a database",
    )
    p.add_argument(
        "--join",
        action="store_true",
        help="add this machine's workers to the search already started on --storage (the same recipe, "
        "space and options)",
    )
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set on the processes --workers starts
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _recipes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind",
        choices=list(catalog.TITLES),
        help="list one kind only: recipe, bench (bench files), space (tune search spaces), accelerate",
    )


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


# ----------------------------------------------------------------------------------------------- running
# Each library function a command calls is imported in one place, inside the function that runs it.


def _load(args: argparse.Namespace, overrides: Sequence[str], **kwargs: Any):
    from .config.load import load_recipe

    return load_recipe(catalog.resolve(args.recipe), list(overrides), **kwargs)


def _run_init(args: argparse.Namespace) -> int:
    from .starter import COLUMN_FLAGS, Options, init_recipe

    options = Options(
        args.data_file,
        output=args.output,
        task=args.task,
        validation_file=args.validation_file,
        encoding=args.encoding,
        force=args.force,
        columns={name: getattr(args, name) for name in COLUMN_FLAGS if getattr(args, name)},
    )
    if args.model:
        options.model = args.model
    starter = init_recipe(options)
    report = sys.stderr if starter.path is None else sys.stdout  # `--output -`: the recipe alone on stdout
    print("\n".join(starter.report), file=report)
    if starter.path is None:
        print(starter.text, end="")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from .outputs import eval_results
    from .publish import train_and_push

    overrides = list(args.overrides)
    if args.resume and args.resume_from:
        raise FinetuneError("--resume and --resume-from: give one of the two.")
    if args.resume or args.resume_from:
        overrides.append(f"training.resume={args.resume_from or 'auto'}")
    metrics = train_and_push(_load(args, overrides, output_dir=args.output_dir))
    shown = eval_results(metrics)
    print(json.dumps(shown, indent=2))
    return 0


def _run_validate(args: argparse.Namespace) -> int:
    from .pipeline import validate

    summary = validate(_load(args, args.overrides))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"OK: {args.recipe}")
        for key, value in summary.items():
            print(f"  {key}: {value}")
    return 0


def _run_plan(args: argparse.Namespace) -> int:
    from .pipeline import plan

    result = plan(_load(args, args.overrides))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format_table())
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from .inference import evaluate_output

    metrics = evaluate_output(
        args.output_dir,
        args.split,
        args.overrides,
        args.batch_size,
        file=args.file,
        name=args.name,
        predictions=args.predictions,
    )
    print(json.dumps(metrics, indent=2))
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from .inference import predict_output

    count = predict_output(
        args.output_dir,
        args.input,
        args.output,
        args.batch_size,
        top_k=args.top_k,
        all_scores=args.all_scores,
        encoding=args.encoding,
        uncalibrated=args.uncalibrated,
    )
    print(f"wrote {count} predictions to {args.output}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    formats = ("merged", "onnx")
    if args.format is not None and args.format not in formats:
        raise FinetuneError(
            f"--format: unknown format {args.format!r}; expected one of: {', '.join(formats)}."
        )
    if args.merge and args.format not in (None, "merged"):
        raise FinetuneError(f"--merge and --format {args.format}: --merge means --format merged; give one.")
    chosen = "merged" if args.merge else args.format
    if chosen is None:
        raise FinetuneError(
            "export: give --format onnx (an ONNX model, --quantize int8 for int8 weights) or --format merged "
            "(a LoRA/IA3 run as a standalone PyTorch model; also --merge)."
        )
    if chosen == "merged":
        used = [
            flag
            for flag, value in (
                ("--quantize", args.quantize),
                ("--parity-examples", args.parity_examples),
                ("--max-metric-drop", args.max_metric_drop),
            )
            if value is not None
        ]
        if used:
            raise FinetuneError(f"{used[0]}: applies to --format onnx, not to a merged export; drop it.")
        from .export.merge import export_merged

        target = export_merged(args.output_dir, args.output)
        print(f"wrote the merged model to {target}")
        return 0
    from .export.onnx import export_onnx
    from .export.parity import Tolerance, summary

    info = export_onnx(
        args.output_dir,
        args.output,
        quantization=args.quantize,
        parity_examples=args.parity_examples,
        tolerance=Tolerance(args.max_logit_diff, args.min_identical, args.max_metric_drop),
    )
    check = info["parity"]
    print(summary(check) if "skipped" not in check else f"parity: skipped ({check['skipped']})")
    sizes = info["sizes"]
    print(
        f"wrote the {info['precision']} ONNX model to {args.output} ({sizes['onnx_bytes'] / 1e6:.1f} MB, "
        f"{sizes['onnx_to_pytorch']:.0%} of the PyTorch fp32 weights)"
    )
    return 0


def _run_push(args: argparse.Namespace) -> int:
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


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import load_bench, run_bench

    if args.bench_file is None and not args.calibrate:
        raise FinetuneError("bench: give a bench file (e.g. recipes/bench/glue-quick.yaml), or --calibrate.")
    workers, devices = _workers(args)
    bench = None
    if args.bench_file is not None:
        bench = load_bench(catalog.resolve(args.bench_file, catalog.BENCH), args.overrides)
        bench.cells()  # every cell's recipe is checked before anything is measured or trained
    if args.calibrate:
        _calibrate()
    if bench is None:
        return 0
    summary = run_bench(bench, progress=not args.no_progress, workers=workers, devices=devices)
    print(
        f"{summary['cells']} cells: {summary['ran']} ran, {summary['skipped']} already done, "
        f"{summary['failed']} failed; results in {summary['output_dir']}/(results.jsonl, results.md, results.png)"
    )
    return 1 if summary["failed"] else 0


def _calibrate() -> None:
    import torch

    from .mfu import CUDA_DTYPES, DTYPES, cache_path, calibrate, device_name

    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        for dtype, entry in calibrate(device, CUDA_DTYPES if device == "cuda" else DTYPES).items():
            print(
                f"{device} ({device_name(device)}) {dtype}: {entry['flops'] / 1e12:.3f} TFLOP/s "
                f"(matmul {entry['matmul_size']})"
            )
    print(f"cached in {cache_path()}")


def _run_tune(args: argparse.Namespace) -> int:
    from .tune import prepare_tune, run_tune

    if args.recipe == "report":
        return _tune_report(args)
    tune = prepare_tune(
        catalog.resolve(args.recipe),
        args.overrides,
        catalog.resolve(args.space, catalog.SPACE),
        output_dir=args.output_dir,
        trials=args.trials,
        budget_minutes=args.budget_minutes,
        seed=args.seed,
        metric=args.metric,
        direction=args.direction,
        confirm_seeds=args.confirm_seeds,
        keep_models=args.keep_models,
        trial_seeds=args.trial_seeds,
        report_to=args.report_to,
        storage_url=args.storage,
        study_name=args.study_name,
        join=args.join,
        workers=args.workers,
        devices=args.devices,
        worker=args.worker,
        folds=args.folds,
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


def _workers(args: argparse.Namespace) -> tuple[int, list[str]]:
    """--workers and --devices checked: at least one worker, no device twice; --devices alone, one worker each."""
    devices = [d.strip() for d in args.devices]
    if args.workers < 1:
        raise FinetuneError(f"--workers: at least 1, got {args.workers}.")
    if len(set(devices)) != len(devices):
        raise FinetuneError(f"--devices: repeats a device: {devices}.")
    return (len(devices) if devices and args.workers == 1 else args.workers), devices


def _tune_report(args: argparse.Namespace) -> int:
    """`hf-finetune tune report --storage URL [--study-name N] [--output-dir D]`: a search's outputs from
    its study (trials.jsonl, leaderboard.md, best_recipe.yaml, importance.png), wherever its trials ran."""
    from .tune import report_from_study

    if args.overrides:
        raise FinetuneError(f"tune report: takes no overrides, got {' '.join(args.overrides)}.")
    tune = report_from_study(args.storage, args.study_name, args.output_dir)
    print(f"wrote {tune.output_dir}/ (leaderboard.md, trials.jsonl, best_recipe.yaml, importance.png)")
    return 0


def _run_recipes(args: argparse.Namespace) -> int:
    root = catalog.recipes_dir()
    if root is None:
        print(
            f"no bundled recipes found (set {catalog.RECIPES_ENV} to a folder laid out like recipes/)",
            file=sys.stderr,
        )
        return 1
    found = catalog.entries(args.kind)
    width = max((len(e.name) for e in found), default=0) + 2
    for kind, title in catalog.TITLES.items():
        of_kind = [e for e in found if e.kind == kind]
        if of_kind:
            print(title)
            for entry in of_kind:
                print(f"  {entry.name:<{width}} {catalog.describe(entry.path)}".rstrip())
            print()
    print(f"(NAME is a file under {root}, without .yaml)")
    return 0


def _run_tasks(args: argparse.Namespace) -> int:
    from .tasks import available_tasks

    for name, spec in available_tasks().items():
        print(f"{name:<24} {spec.description}")
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("init", "write a commented starter recipe inferred from a data file",
            _init_arguments, _run_init),
    Command("train", "fine-tune as a recipe says",
            _train_arguments, _run_train),
    Command("validate", "check a recipe and its data without weights (exit 0 or 2)",
            _validate_arguments, _run_validate),
    Command("plan", "print the parameter groups a recipe trains, without weights",
            _plan_arguments, _run_plan),
    Command("eval", "evaluate a trained output directory on a split or a labelled file",
            _eval_arguments, _run_eval),
    Command("predict", "label JSON Lines with a trained output directory",
            _predict_arguments, _run_predict),
    Command("export", "write a run as ONNX (fp32 or int8, parity-checked) or a LoRA/IA3 run merged",
            _export_arguments, _run_export),
    Command("push", "upload a trained output directory, with its model card, to the Hub",
            _push_arguments, _run_push),
    Command("bench", "run a bench file: tasks x strategies x seeds, one process per cell",
            _bench_arguments, _run_bench),
    Command("tune", "search a recipe's strategy and Trainer settings on its dev score (optuna)",
            _tune_arguments, _run_tune),
    Command("recipes", "list the bundled recipes, bench files, search spaces and accelerate configs",
            _recipes_arguments, _run_recipes),
    Command("tasks", "list the tasks",
            _no_arguments, _run_tasks),
)  # fmt: skip
_BY_NAME = {command.name: command for command in COMMANDS}


# ------------------------------------------------------------------------------------------------ parsing


def _add_global_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--debug", action="store_true", help="print the traceback of input errors (normally one message)"
    )


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune pretrained transformers from a YAML recipe on the Hugging Face Trainer.",
    )
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        _add_global_options(p)
        parsers[command.name] = p
    return parser, parsers


def build_parser() -> argparse.ArgumentParser:
    """The `hf-finetune` parser: global options and one sub-parser per entry of ``COMMANDS`` (for --help).
    Parse with `parse_args`, which lets options and overrides come in any order."""
    return _parsers()[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; ``.command`` names the entry of ``COMMANDS`` to run.

    A command's options and positional arguments (recipe, overrides) may be intermixed: its parser reads
    them with argparse's ``parse_intermixed_args``, which a parser with sub-parsers cannot use. So the
    command word is found here (the options before it take no values), and the global options given before
    it are handed to the command's parser, which knows them too. Help and a missing or unknown command go
    to the top parser, which reports them as usual. One limit: an option taking a list (``--confirm-seeds
    1 2``) reads words up to the next option.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, parsers = _parsers()
    at = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if at is None or argv[at] not in parsers:
        return parser.parse_args(argv)  # help, usage and "invalid choice" errors (exit 0 or 2)
    args = parsers[argv[at]].parse_intermixed_args(argv[:at] + argv[at + 1 :])
    args.command = argv[at]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        return _BY_NAME[args.command].run(args)
    except FinetuneError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
