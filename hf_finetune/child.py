"""The one child-process entry point of hf-finetune (started by `hf_finetune.launch`, never by hand):

    python -m hf_finetune.child train MEMORY_FILE [--report STORAGE_URL STUDY TRIAL METRIC] RECIPE [overrides]
    python -m hf_finetune.child calibrate DEVICE DTYPE [DTYPE ...]

``train`` is `hf-finetune train RECIPE overrides` (same logging, same `hf-finetune: error:` line and exit
codes), then writes into MEMORY_FILE the process's peak RSS, its peak CUDA memory, and the device, precision
and machine it trained on, whether the training finished or not. With ``--report`` every evaluation goes to
that optuna trial, whose pruner may stop the run (exit code `hf_finetune.tune.trial.EXIT_PRUNED`).
``calibrate`` measures and caches the peak FLOP/s of a device (`hf_finetune.mfu.calibrate`).

The child dies with its parent (Linux): it runs in its own session, so that a timeout can stop its whole
process group, where a SIGKILLed bench or tune would otherwise leave it training on.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

USAGE = __doc__.split("\n\n")[1]


def peak_memory() -> dict[str, float]:
    """This process's peak RSS and, if it used CUDA, the peak CUDA memory allocated (MB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"max_rss_mb": rss / (2**20 if sys.platform == "darwin" else 1024)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def trained_on(args) -> dict[str, str]:
    """The device, precision and machine of a training run, from its TrainingArguments after training."""
    from .mfu import device_name, training_dtype

    device = args.device.type
    return {"device": device, "dtype": training_dtype(args, device), "machine": device_name(device)}


def train(memory_file: str, recipe_path: str, overrides: list[str], report: list[str] | None = None) -> int:
    facts: dict[str, Any] = {}
    try:
        return _train(recipe_path, overrides, report, facts)
    finally:
        from .outputs import atomic_write_text

        atomic_write_text(memory_file, json.dumps({**peak_memory(), **facts}))


def _train(recipe_path: str, overrides: list[str], report: list[str] | None, facts: dict[str, Any]) -> int:
    from .catalog import resolve
    from .config.load import load_recipe
    from .errors import FinetuneError
    from .logs import setup_logging

    setup_logging(False)
    try:
        recipe = load_recipe(resolve(recipe_path), overrides)
        if report is not None:
            from .tune.trial import train_reporting

            url, study, number, metric = report
            code = train_reporting(recipe, url, study, int(number), metric or None)
        else:
            from .outputs import eval_results
            from .publish import train_and_push as train_recipe

            metrics = train_recipe(recipe)
            print(json.dumps(eval_results(metrics), indent=2))
            code = 0
        facts.update(trained_on(recipe.training))
        return code
    except FinetuneError as exc:
        print(f"hf-finetune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hf-finetune: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str]) -> int:
    from .launch import die_with_parent

    die_with_parent()
    command, *rest = argv or [""]
    if command == "calibrate" and len(rest) >= 2:
        from .mfu import calibrate

        calibrate(rest[0], rest[1:])
        return 0
    if command == "train" and len(rest) >= 2:
        memory_file, *rest = rest
        report = None
        if rest[:1] == ["--report"]:
            report, rest = rest[1:5], rest[5:]
        if rest and (report is None or len(report) == 4):
            recipe_path, *overrides = rest
            return train(memory_file, recipe_path, overrides, report)
    print(f"usage:\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
