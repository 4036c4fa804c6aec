"""What a run directory holds, named once: every file name, the "is this an output directory" check,
atomic writes and JSON Lines records (append, read), plus the environment file and the curve plot.

It imports only errors, so any layer may use it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import FinetuneError

logger = logging.getLogger(__name__)

# --- file names in an output (run) directory ---------------------------------------------------
RECIPE_FILE = "recipe.yaml"  # the resolved recipe, written before training starts
RESULTS_FILE = "all_results.json"  # final metrics of a training run (the Trainer's name)
TRAINER_STATE = "trainer_state.json"
CARD_FILE = "README.md"  # the model card
STRATEGY_FILE = "strategy.json"  # the parameter groups trained
ADAPTER_CONFIG = "adapter_config.json"  # peft: an adapter-only output
NOTE_FILE = "INTERRUPTED.txt"  # left by a run stopped with a signal
ENV_FILE = "environment.json"
CURVES_FILE = "training_curves.png"
TEST_RESULTS_FILE = "test_results.json"  # the labelled test split's scores (also in all_results.json)
PREDICTIONS_FILE = "predictions_{split}.jsonl"  # a test split's (or `eval --predictions`') predictions
EVAL_SPLIT_FILE = "eval_{split}_results.json"  # `hf-finetune eval` of one split or file
CLASS_REPORT_FILE = "classification_report.md"  # per-label scores of the final evaluation (classification)
CONFUSION_FILE = "confusion_matrix.png"  # its confusion matrix (single-label classification)
CALIBRATION_FILE = "calibration.json"  # the temperature fitted on the eval split; `predict` applies it
RELIABILITY_FILE = "reliability_diagram.png"  # accuracy against confidence, before and after it
EXPORT_FILE = "export.json"  # an ONNX export (hf-finetune export): format, sizes, versions, parity
PARTIAL_PREFIX = ".partial-"  # a checkpoint being written; renamed into place when complete
PARTIAL_SUFFIX = ".partial"  # a file being written; os.replace'd over its final name
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")  # model weights in a run directory
_PACKAGES = (
    "hf-finetune",
    "torch",
    "transformers",
    "datasets",
    "evaluate",
    "accelerate",
    "peft",
    "tokenizers",
    "huggingface-hub",
    "numpy",
)
#: suffixes of ``eval_*`` keys that are not metrics of the model (the loss, timings, counts)
NOT_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "samples")


def environment() -> dict[str, Any]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
    }
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["device"] = (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
        )
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # pragma: no cover - torch is a dependency
        pass
    return info


def write_environment(output_dir: str | Path) -> Path:
    path = Path(output_dir) / ENV_FILE
    path.write_text(json.dumps(environment(), indent=2) + "\n")
    return path


def split_file(name: str, split: str | None) -> str:
    """``name`` for the split ``split`` (``classification_report.md`` -> ``classification_report_test.md``);
    ``name`` itself for None (the training run's evaluation split)."""
    if split is None:
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}_{split}.{suffix}" if dot else f"{name}_{split}"


def eval_metric_names(log_history: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for entry in log_history:
        for key in entry:
            if key.startswith("eval_") and not key.endswith(NOT_METRICS) and key not in names:
                names.append(key)
    return names


def plot_curves(log_history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Training loss and the first evaluation metric against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    metric = next(iter(eval_metric_names(log_history)), None)
    points = [(e["step"], e[metric]) for e in log_history if metric and metric in e and "step" in e]
    if not losses and not points:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if losses:
        axes[0].plot(*zip(*losses), color="tab:blue")
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    if points:
        axes[1].plot(*zip(*points), marker="o", color="tab:orange")
    axes[1].set(title=metric or "no evaluation logged", xlabel="step", ylabel=metric or "")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# --- atomic files and JSON Lines -----------------------------------------------------------------
def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a sibling temporary file, then rename it over ``path``: a reader (or a run killed
    mid-write) sees the old file or the new one, never half of one. The temporary file is this process's
    own, so processes that write one file at once (the workers of a search) do not write into each other's."""
    path = Path(path)
    tmp = _partial(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = _partial(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _partial(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as JSON Lines (non-ASCII text kept as is), written atomically: `predict`'s output format."""
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """One JSON object as one line, flushed to disk before returning (a record once written survives a
    crash of the process that wrote it)."""
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON Lines file this package wrote; [] when it does not exist. A torn line (a
    process killed mid-append) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipping a line that is not whole JSON (an interrupted write)", path)
    return rows


def drop_torn_line(path: str | Path) -> None:
    """Cut a last line that lacks its newline (an interrupted append), so later appends stay whole lines."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        logger.warning("%s: dropping an incomplete last line (an interrupted write)", path)
        atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])


def read_json(path: str | Path) -> Any:
    """A JSON file's content, or None when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_output_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory an hf-finetune training run wrote (it holds the resolved recipe)."""
    return (Path(path) / RECIPE_FILE).is_file()


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a peft adapter (plus the task head) rather than a full model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def check_output_dir(output_dir: str | Path, need_model: bool = True) -> Path:
    """An hf-finetune output directory (recipe.yaml; with ``need_model`` also a saved model), else a
    FinetuneError that says what to give instead."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FinetuneError(
            f"{output_dir}: no such output directory; give the `training.output_dir` of a "
            "finished `hf-finetune train` run."
        )
    if not is_output_dir(output_dir):
        raise FinetuneError(
            f"{output_dir}: has no {RECIPE_FILE}, so it is not an hf-finetune output directory "
            "(train one with `hf-finetune train RECIPE`)."
        )
    if need_model and not (output_dir / "config.json").is_file():
        raise FinetuneError(
            f"{output_dir}: has no saved model (config.json); the training run did not finish. "
            "Use one of its checkpoint-* directories, or finish the run with "
            f"`hf-finetune train {output_dir / RECIPE_FILE} --resume`."
        )
    return output_dir


def eval_results(metrics: dict[str, Any], per_class_limit: int = 5) -> dict[str, Any]:
    """The evaluation (and test) scores of a run's final metrics, as `hf-finetune train` prints them (no
    timings). Classification's per-label scores are kept for up to ``per_class_limit`` labels; past that they
    would bury the headline (classification_report.md holds them all)."""
    shown = {
        k: v
        for k, v in metrics.items()
        if k.startswith(("eval_", "test_")) and not k.endswith(("_runtime", "_per_second"))
    }
    if len(per_class_stems(shown)) > per_class_limit:
        shown = without_per_class(shown)
    return shown


#: the scores classification's per-class report adds for each label (``<prefix>_<label>_<score>``)
PER_CLASS_SCORES = ("precision", "recall", "f1", "support")


def per_class_stems(metrics: dict[str, Any]) -> list[str]:
    """The ``<prefix>_<label>`` stems of the per-label scores in ``metrics``, found by their ``_support`` key."""
    return [key[: -len("_support")] for key in metrics if key.endswith("_support")]


def without_per_class(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without classification's per-label scores (``<label>_precision/_recall/_f1/_support``)."""
    drop = {f"{stem}_{score}" for stem in per_class_stems(metrics) for score in PER_CLASS_SCORES}
    return {k: v for k, v in metrics.items() if k not in drop}


def run_results(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's final metrics (all_results.json), or None when the run did not finish."""
    try:
        results = read_json(Path(run_dir) / RESULTS_FILE)
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def drop_weights(run_dir: str | Path, keep: bool = False) -> None:
    """Remove checkpoints (and, unless ``keep``, the weights) from a run dir and its per-seed run dirs
    (``seed*/``): what a bench cell or a search trial keeps once it is scored."""
    run_dir = Path(run_dir)
    for directory in (run_dir, *sorted(run_dir.glob("seed*/"))):
        for checkpoint in directory.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
        if keep:
            continue
        for pattern in WEIGHT_PATTERNS:
            for weights in directory.glob(pattern):
                weights.unlink()


def finite(value: Any) -> Any:
    """NaN and infinities as None: JSON records stay strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
