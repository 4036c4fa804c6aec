"""The model card: ``README.md`` with YAML metadata, built from what a training run leaves in its output dir.

Inputs, all in the output directory: ``recipe.yaml`` (task, base model, data, strategy, PEFT, Trainer
settings), ``strategy.json`` (the parameter groups trained), ``all_results.json`` (final metrics),
``trainer_state.json`` (the per-evaluation log) and, for adapters, ``adapter_config.json``. So a card
can be rebuilt for any finished run, e.g. by `hf-finetune push` with the repository id it is pushed to.

Metadata (``huggingface_hub.ModelCardData``): ``base_model`` as a Hub id (a local path is never
written; a local hf-finetune output or a cached Hub snapshot is traced back to its Hub id),
``datasets``, ``pipeline_tag``, ``library_name``, ``tags``, ``license`` (the recipe's ``hub.license``,
else the base model's card when it is available locally) and ``model-index`` with the final eval
results (``huggingface_hub.EvalResult``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from .outputs import (
    ADAPTER_CONFIG,
    CALIBRATION_FILE,
    CARD_FILE,
    CLASS_REPORT_FILE,
    CONFUSION_FILE,
    ENV_FILE,
    EXPORT_FILE,
    NOT_METRICS,
    RECIPE_FILE,
    RELIABILITY_FILE,
    RESULTS_FILE,
    STRATEGY_FILE,
    TRAINER_STATE,
    atomic_write_text,
    check_output_dir,
    read_json,
    without_per_class,
)

logger = logging.getLogger("hf_finetune")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CACHE_SNAPSHOT = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


# ------------------------------------------------------------------------------------------------
# What the run was
# ------------------------------------------------------------------------------------------------
def run_recipe(output_dir: Path) -> dict[str, Any]:
    """The raw resolved recipe of a run (plain data, as written by `hf-finetune train`)."""
    path = check_output_dir(output_dir, need_model=False) / RECIPE_FILE
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def hub_base_model(name: str | None, seen: int = 0) -> str | None:
    """The Hub id of a base model given as a Hub id or a local path, or None when it has none.

    A cached Hub snapshot (``.../models--org--name/snapshots/<sha>``) gives ``org/name``; an
    hf-finetune output directory gives its own base model (followed back, e.g. through a merge).
    """
    if not name:
        return None
    path = Path(name).expanduser()
    if not path.exists():
        return name if _HUB_ID.match(name) and not name.startswith((".", "/")) else None
    match = _CACHE_SNAPSHOT.search(str(path.resolve()))
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    recipe_file = path / RECIPE_FILE
    if recipe_file.is_file() and seen < 5:
        raw = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}
        parent = (raw.get("model") or {}).get("name_or_path")
        if parent and Path(parent).expanduser().resolve() != path.resolve():
            return hub_base_model(parent, seen + 1)
    return None


def base_model_license(repo_id: str | None, revision: str | None = None) -> str | None:
    """The ``license`` in the base model's own card, if that card is in the local Hub cache."""
    if repo_id is None:
        return None
    try:
        from huggingface_hub import ModelCard, try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, CARD_FILE, revision=revision or "main")
        if not isinstance(path, str):
            return None
        return ModelCard.load(path, ignore_metadata_errors=True).data.to_dict().get("license")
    except Exception:  # a card we cannot parse only costs the license field
        return None


def eval_metrics(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Final evaluation metrics by name (``eval_accuracy`` -> ``accuracy``; MNLI ``eval_<split>_x`` kept whole);
    ``prefix="test"``: the test split's (``test_accuracy`` -> ``accuracy``)."""
    out = {}
    start = f"{prefix}_"
    for key, value in results.items():
        if not key.startswith(start) or key.endswith(NOT_METRICS) or isinstance(value, bool):
            continue
        if key.endswith(CALIBRATION_KEYS):  # the card's calibration paragraph states them
            continue
        if isinstance(value, (int, float)):
            out[key[len(start) :]] = float(value)
    return without_per_class(out)


def _by_split(metrics: dict[str, float], splits: list[str]) -> list[tuple[str, str, float]]:
    """(split, metric, value): with several eval splits the Trainer prefixes each metric with its split."""
    out = []
    for key, value in metrics.items():
        split = next((s for s in splits if len(splits) > 1 and key.startswith(f"{s}_")), splits[0])
        out.append(
            (split, key[len(split) + 1 :] if key.startswith(f"{split}_") and len(splits) > 1 else key, value)
        )
    return out


def results_table(log_history: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Rows of (epoch, step, training loss, validation loss, metrics...) at each evaluation."""
    evals, seen = [], set()
    for entry in log_history:  # the final evaluation repeats the last in-training one at the same step
        keys = tuple(sorted(k for k in entry if k.startswith("eval_")))
        if keys and "step" in entry and (entry["step"], keys) not in seen:
            evals.append(entry)
            seen.add((entry["step"], keys))
    metrics: list[str] = []
    for entry in evals:
        for key in eval_metrics(entry):
            if key not in metrics:
                metrics.append(key)
    header = ["Epoch", "Step", "Training loss", "Validation loss", *metrics]
    rows = []
    for entry in evals:
        losses = [e["loss"] for e in log_history if "loss" in e and e.get("step", 0) <= entry["step"]]
        values = eval_metrics(entry)
        rows.append(
            [
                f"{entry.get('epoch', 0):.2f}",
                str(entry["step"]),
                f"{losses[-1]:.4f}" if losses else "-",
                f"{entry['eval_loss']:.4f}" if "eval_loss" in entry else "-",
                *[f"{values[m]:.4f}" if m in values else "-" for m in metrics],
            ]
        )
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The card
# ------------------------------------------------------------------------------------------------
def build_card(output_dir: str | Path, repo_id: str | None = None, merged_from_adapter: bool = False):
    """The `huggingface_hub.ModelCard` of the run in ``output_dir``.

    ``repo_id``: where the model is (or will be) on the Hub, for the usage snippet; the directory
    path otherwise. ``merged_from_adapter``: the directory holds a PEFT run merged into full weights.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from . import __version__

    output_dir = Path(output_dir)
    raw = run_recipe(output_dir)
    task_name = (raw.get("task") or {}).get("name", "text-classification")
    model = raw.get("model") or {}
    data = raw.get("data") or {}
    training = raw.get("training") or {}
    peft = raw.get("peft") or {}
    hub = raw.get("hub") or {}
    results = read_json(output_dir / RESULTS_FILE) or {}
    state = read_json(output_dir / TRAINER_STATE) or {}
    plan = read_json(output_dir / STRATEGY_FILE) or {}
    adapter = read_json(output_dir / ADAPTER_CONFIG)
    environment = read_json(output_dir / ENV_FILE) or {}
    export = read_json(output_dir / EXPORT_FILE)  # an ONNX export (`hf-finetune export --format onnx`)
    source = (export or {}).get("source") or {}

    base = hub.get("base_model") or source.get("base_model") or hub_base_model(model.get("name_or_path"))
    if base is None:
        logger.warning(
            "model card: the base model %r is a local path with no Hub id; base_model is left out "
            "(set hub.base_model to name it).",
            model.get("name_or_path"),
        )
    dataset_id = data.get("dataset") if data.get("dataset") and not data.get("files") else None
    dataset_label = (
        f"{dataset_id} ({data['config']})" if dataset_id and data.get("config") else dataset_id
    ) or "a local dataset"
    eval_splits = data.get("eval_split") or "validation"
    eval_splits = eval_splits if isinstance(eval_splits, list) else [eval_splits]
    eval_split = eval_splits[0]
    metrics = eval_metrics(results)
    test_split = data.get("test_split") or "test"
    test_metrics = eval_metrics(results, "test")
    name = (repo_id or output_dir.resolve().name).split("/")[-1]
    is_adapter = adapter is not None and not merged_from_adapter
    method = peft.get("method")
    few_shot = (raw.get("few_shot") or {}) if (raw.get("few_shot") or {}).get("method") else None

    tags = ["hf-finetune", task_name]
    if method:
        tags += ["peft", method] + (["merged"] if merged_from_adapter else [])
    strategy = raw.get("strategy") or {}
    if any(
        strategy.get(k)
        for k in ("freeze_embeddings", "freeze_layers", "freeze_all_but_head", "freeze_modules")
    ):
        tags.append("frozen-layers")
    if strategy.get("layerwise_lr_decay", 1.0) != 1.0:
        tags.append("llrd")
    if strategy.get("gradual_unfreezing"):
        tags.append("gradual-unfreezing")
    if strategy.get("distill"):
        tags.append("distillation")
    if export:
        tags += ["onnx"] + (["int8"] if export.get("precision") == "int8" else [])
    if few_shot:
        tags += ["setfit", "sentence-transformers", "few-shot"]
        if few_shot["method"] == "embedding_probe":
            tags.append("embedding-probe")

    scores = _by_split(metrics, eval_splits) + [(test_split, m, v) for m, v in test_metrics.items()]
    eval_results = [
        EvalResult(
            task_type=task_name,
            task_name=_task_title(task_name),
            dataset_type=dataset_id or "json",
            dataset_name=dataset_label,
            dataset_config=data.get("config") if dataset_id else None,
            dataset_split=split,
            metric_type=metric,
            metric_name=metric.replace("_", " ").title(),
            metric_value=round(value, 6),
        )
        for split, metric, value in scores
    ]
    card_data = ModelCardData(
        base_model=base,
        datasets=[dataset_id] if dataset_id else None,
        library_name="onnx" if export else "peft" if is_adapter else "setfit" if few_shot else "transformers",
        license=hub.get("license") or base_model_license(base, model.get("revision")),
        pipeline_tag=task_name,
        tags=tags,
        metrics=sorted({m.split("_")[-1] for m in metrics}) or None,
        model_name=name,
        eval_results=eval_results or None,
    )

    base_link = f"[{base}](https://huggingface.co/{base})" if base else "a local checkpoint"
    lines = [
        f"# {name}",
        "",
        f"This model is {base_link} "
        + (few_shot_text(few_shot, results, data) if few_shot else "fine-tuned")
        + f" for {task_name} on {dataset_label}, with "
        f"[hf-finetune](https://pypi.org/project/hf-finetune/) {__version__} from the recipe in `recipe.yaml` "
        "(`hf-finetune train recipe.yaml` reproduces it)."
        + (
            " It is a PEFT adapter plus the task head; the base model weights are not in this repository."
            if is_adapter
            else ""
        )
        + (f" The {method} adapter has been merged into the weights." if merged_from_adapter else ""),
    ]
    if export:
        lines += ["", export_text(export)]
    if metrics:
        lines += ["", f"Results on the `{eval_split}` split:", ""]
        lines += [f"- {m}: {v:.4f}" for m, v in metrics.items()]
    if (output_dir / CLASS_REPORT_FILE).is_file():
        lines += ["", f"Per-label precision, recall and F1: [{CLASS_REPORT_FILE}]({CLASS_REPORT_FILE})."]
        if (output_dir / CONFUSION_FILE).is_file():
            lines += ["", f"![Confusion matrix on the `{eval_split}` split]({CONFUSION_FILE})"]
    calibration = calibration_text(output_dir, results, test_split)
    if calibration:
        lines += ["", calibration]
        if (output_dir / RELIABILITY_FILE).is_file():
            lines += ["", f"![Reliability diagram]({RELIABILITY_FILE})"]
    stopping = early_stopping_text(results)
    if stopping:
        lines += ["", stopping]
    if test_metrics:
        count = results.get("test_samples")
        lines += [
            "",
            "## Test results",
            "",
            f"On the held-out `{test_split}` split" + (f" ({count} examples)" if count else "") + ", scored "
            "once after training, on the final model; it took no part in training or in choosing the model:",
            "",
        ]
        lines += [f"- {m}: {v:.4f}" for m, v in test_metrics.items()]

    lines += ["", "## Strategy", "", _strategy_text(plan, peft, training)]
    if plan:
        lines += [
            "",
            "## Trainable parameters",
            "",
            f"{plan.get('trainable_params', 0):,} of {plan.get('total_params', 0):,} parameters trained "
            f"({plan.get('trainable_percent', 0):.2f}%).",
        ]
    settings = (
        _few_shot_settings(few_shot, training, results) if few_shot else _hyperparameters(training, results)
    )
    lines += ["", "## Training hyperparameters", "", settings]
    header, rows = results_table(state.get("log_history") or [])
    if rows:
        lines += ["", "## Training results", "", _markdown_table(header, rows)]
    where = repo_id or str(output_dir)
    if export:
        usage = _onnx_usage(where, export)
    elif few_shot:
        usage = _setfit_usage(where)
    else:
        usage = _usage(task_name, where, is_adapter, adapter)
    lines += ["", "## Usage", "", usage]
    versions = environment.get("packages") or {}
    if versions:
        lines += ["", "## Framework versions", ""]
        lines += [f"- {pkg} {ver}" for pkg, ver in versions.items() if ver]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_card(output_dir: str | Path, repo_id: str | None = None, merged_from_adapter: bool = False) -> Path:
    """Build the card and write it as ``README.md`` in ``output_dir`` (atomically)."""
    text = str(build_card(output_dir, repo_id, merged_from_adapter))
    return atomic_write_text(Path(output_dir) / CARD_FILE, text)


def _strategy_text(plan: dict[str, Any], peft: dict[str, Any], training: dict[str, Any]) -> str:
    parts = [f"**{plan.get('strategy', 'full fine-tuning')}**."]
    distilled = plan.get("distillation")
    if distilled:
        parts.append(distillation_text(distilled))
    method = peft.get("method")
    if method:
        fields = {
            "lora": (
                "r",
                "alpha",
                "dropout",
                "target_modules",
                "use_dora",
                "use_rslora",
                "loraplus_lr_ratio",
            ),
            "ia3": ("target_modules",),
        }.get(method, ("num_virtual_tokens",))
        settings = ", ".join(f"{k}={peft[k]}" for k in fields if peft.get(k) not in (None, False))
        extra = peft.get("modules_to_save") or []
        parts.append(
            f"PEFT: {method} ({settings}); the task head trains whole and is saved with the adapter"
            + (f", as do {', '.join(extra)}" if extra else "")
            + "."
        )
    groups = plan.get("groups") or []
    if groups:
        lr = training.get("learning_rate")
        gradual = any(g.get("unfreeze_at") for g in groups)
        header = ["Group", "Parameters", "Trains", "Learning rate", "Weight decay"] + (
            ["From"] if gradual else []
        )
        rows = []
        for g in groups:
            row = [
                g["name"],
                f"{g['params']:,}",
                "yes" if g["trainable"] else "frozen",
                "-" if g.get("lr") is None else f"{g['lr']:.3g}",
                "-" if g.get("weight_decay") is None else f"{g['weight_decay']:g}",
            ]
            if gradual:
                row.append("-" if not g["trainable"] else str(g.get("unfreeze_at") or 0))
            rows.append(row)
        unit = (plan.get("gradual_unfreezing") or {}).get("unit")
        note = (
            f" (gradual unfreezing: `From` is the {unit} a group starts training)" if gradual and unit else ""
        )
        parts.append(
            f"Parameter groups, bottom to top (base learning rate {lr}){note}:\n\n"
            + _markdown_table(header, rows)
        )
    return "\n\n".join(parts)


def distillation_text(record: dict[str, Any]) -> str:
    """The card's line on `strategy.distill`: the teacher, its score, alpha, T and the student's depth."""
    scores = record.get("teacher_metrics") or {}
    scores = {k: v for k, v in scores.items() if k not in ("eval_loss", "eval_ece")} or scores
    shown = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in list(scores.items())[:3])
    layers = record.get("student_num_layers")
    return (
        f"Distilled from the teacher run `{record.get('teacher')}`"
        + (f" ({record['teacher_peft']})" if record.get("teacher_peft") else "")
        + (f", which scored {shown} on its evaluation split" if shown else "")
        + f": the loss is {record.get('alpha')} x T\u00b2 x KL(teacher || student) at temperature "
        + f"T={record.get('temperature')}, plus {round(1 - float(record.get('alpha', 0)), 6)} x the loss on the labels"
        + (f"; the student keeps the bottom {layers} layers of its checkpoint" if layers else "")
        + "."
    )


def _hyperparameters(training: dict[str, Any], results: dict[str, Any]) -> str:
    world = int(results.get("world_size") or 1)
    per_device = training.get("per_device_train_batch_size", 8)
    accumulation = training.get("gradient_accumulation_steps", 1)
    shown = {
        "learning_rate": training.get("learning_rate", 5e-5),
        "train_batch_size (per device)": per_device,
        "eval_batch_size (per device)": training.get("per_device_eval_batch_size", 8),
        "gradient_accumulation_steps": accumulation,
        "processes": world,
        "total_train_batch_size": per_device * accumulation * world,
        "optimizer": training.get("optim", "adamw_torch"),
        "weight_decay": training.get("weight_decay", 0.0),
        "lr_scheduler_type": training.get("lr_scheduler_type", "linear"),
        "warmup_steps": training.get("warmup_steps"),
        "num_train_epochs": training.get("num_train_epochs", 3) if not training.get("max_steps") else None,
        "max_steps": training.get("max_steps"),
        "mixed_precision": "bf16" if training.get("bf16") else "fp16" if training.get("fp16") else "no",
        "loss": results.get("loss_function"),  # set when the task's recipe changed it (hf_finetune.losses)
        "class_weights": ", ".join(f"{k} {v:.4g}" for k, v in (results.get("class_weights") or {}).items()),
        "early_stopping": _early_stopping_setting(training.get("early_stopping"), results),
        "seed": training.get("seed", 42),
        "train_runtime (s)": results.get("train_runtime"),
        "train_samples_per_second": results.get("train_samples_per_second"),
    }
    return "\n".join(f"- {k}: {v}" for k, v in shown.items() if v not in (None, ""))


def few_shot_text(few_shot: dict[str, Any], results: dict[str, Any], data: dict[str, Any]) -> str:
    """How a few-shot run trained, for the card's first sentence (after "This model is BASE ")."""
    per_class = data.get("samples_per_class")
    examples = results.get("train_samples")
    seen = (
        f"{per_class} labelled examples per class ({examples} in all)"
        if per_class
        else f"{examples} labelled examples"
        if examples
        else "a few labelled examples"
    )
    if few_shot.get("method") == "embedding_probe":
        return f"with a logistic-regression head on its frozen sentence embeddings, fitted on {seen},"
    return (
        "trained with [SetFit](https://github.com/huggingface/setfit) (the sentence encoder tuned "
        f"contrastively on pairs of {seen}, then a logistic-regression head on its embeddings)"
    )


def _few_shot_settings(few_shot: dict[str, Any], training: dict[str, Any], results: dict[str, Any]) -> str:
    shown: dict[str, Any] = {"method": few_shot.get("method")}
    if few_shot.get("method") == "setfit":
        shown.update(
            {
                "num_iterations": few_shot.get("num_iterations"),
                "sampling_strategy": None
                if few_shot.get("num_iterations")
                else few_shot.get("sampling_strategy"),
                "body learning_rate": few_shot.get("learning_rate"),
                "batch_size (pairs)": few_shot.get("batch_size"),
                "num_epochs": few_shot.get("num_epochs") if not few_shot.get("max_steps") else None,
                "max_steps": few_shot.get("max_steps"),
                "pairs": results.get("train_pairs"),
                "steps": results.get("train_steps"),
            }
        )
    shown.update(
        {
            "head": f"logistic regression, C={few_shot.get('head_c')}",
            "seed": training.get("seed", 42),
            "train_runtime (s)": results.get("train_runtime"),
        }
    )
    return "\n".join(f"- {k}: {v}" for k, v in shown.items() if v not in (None, ""))


def _setfit_usage(where: str) -> str:
    code = [
        "from setfit import SetFitModel",
        "",
        f'model = SetFitModel.from_pretrained("{where}")',
        'print(model.predict(["I love this!", "Not worth the money."]))  # the label names',
        "```",
        "",
        "or, with hf-finetune (no pickle is read; CSV, TSV or JSON Lines in, the same format out):",
        "",
        "```bash",
        f"hf-finetune predict {where} --input texts.jsonl --output predictions.jsonl",
    ]
    return "```python\n" + "\n".join(code) + "\n```"


#: the metric keys (their ends) of temperature scaling, kept out of the card's results lists and model-index
CALIBRATION_KEYS = ("_temperature", "_ece", "_ece_calibrated")


def calibration_text(output_dir: Path, results: dict[str, Any], test_split: str) -> str | None:
    """What calibration.json says (the temperature, where it was fitted, ECE before and after) and the test
    split's ECE under it; None without the file (an uncalibrated or older run)."""
    try:
        data = read_json(output_dir / CALIBRATION_FILE)
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("temperature"), (int, float)):
        return None
    bins = data.get("bins", 15)
    before, after = (_number(data.get(k)) for k in ("ece", "ece_calibrated"))
    text = (
        f"The scores are calibrated by temperature scaling: `hf-finetune predict` divides the logits by "
        f"T = {data['temperature']:.4g}, fitted on the `{data.get('split')}` split "
        f"({data.get('examples')} examples; [{CALIBRATION_FILE}]({CALIBRATION_FILE}))."
    )
    if before is not None and after is not None:
        text += (
            f" Expected calibration error ({bins} equal-width bins) on that split: {before:.4f} before, "
            f"{after:.4f} after (in-sample: T was fitted there)."
        )
    test_before, test_after = (_number(results.get(k)) for k in ("test_ece", "test_ece_calibrated"))
    if test_before is not None and test_after is not None:
        text += f" On the held-out `{test_split}` split: {test_before:.4f} before, {test_after:.4f} after."
    return text + (
        " The saved weights are unchanged, so a plain `transformers` pipeline gives the uncalibrated scores; "
        "divide the logits by T for the calibrated ones."
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def early_stopping_text(results: dict[str, Any]) -> str | None:
    """How early stopping ended, from a run's all_results.json: "Training stopped early at step N of M (patience
    P on METRIC); best at step B (METRIC x), the model saved." None when the run did not use it."""
    config = results.get("early_stopping")
    if not isinstance(config, dict):
        return None
    metric = str(config.get("metric", "")).removeprefix("eval_")
    patience = f"patience {config.get('patience')} on {metric}"
    value = results.get("best_metric")
    best = f"best at step {results.get('best_step')}" + (
        f" ({metric} {value:.4f})" if isinstance(value, (int, float)) else ""
    )
    if results.get("stopped_early"):
        return (
            f"Training stopped early at step {results.get('stopped_at_step')} of "
            f"{results.get('scheduled_steps')} ({patience}); {best}, the model saved here."
        )
    return f"Early stopping ({patience}) did not stop the run; {best}, the model saved here."


def _early_stopping_setting(setting: Any, results: dict[str, Any]) -> str | None:
    if not setting:
        return None
    config = setting if isinstance(setting, dict) else {}
    metric = str((results.get("early_stopping") or {}).get("metric", "")).removeprefix("eval_")
    text = f"patience {config.get('patience', 3)}, threshold {config.get('threshold', 0.0):g}"
    return text + (f", on {metric}" if metric else "")


def export_text(export: dict[str, Any]) -> str:
    """What an ONNX export is, and how closely it agrees with the PyTorch model it came from (its parity)."""
    precision = export.get("precision", "fp32")
    text = (
        f"This repository holds its ONNX export ({'int8 weights' if precision == 'int8' else 'fp32'}, "
        f"`{export.get('file', 'model.onnx')}`), written by `hf-finetune export`, for onnxruntime; `export.json` "
        "records how."
    )
    parity = export.get("parity") or {}
    metric = parity.get("metric") or {}
    if metric.get("delta") is not None:
        text += (
            f" Checked against the PyTorch model on the `{parity.get('split')}` split ({parity.get('examples')} "
            f"examples): {metric['name']} {metric['pytorch']:.4f} (PyTorch) vs {metric['onnx']:.4f} (ONNX), "
            f"identical predictions {parity.get('identical_predictions', 0):.2%}, largest logit difference "
            f"{parity.get('max_abs_logit_diff', 0):.2g}."
        )
    elif parity.get("skipped"):
        text += f" Its agreement with the PyTorch model was not checked: {parity['skipped']}."
    return text


def _onnx_usage(where: str, export: dict[str, Any]) -> str:
    """onnxruntime on the tokenizer's output, fed by the graph's input names."""
    outputs = ", ".join(export.get("outputs") or ["logits"])
    code = [
        "import onnxruntime as ort",
        "from huggingface_hub import snapshot_download",
        "from transformers import AutoTokenizer",
        "",
        f'folder = snapshot_download("{where}")'
        if "/" in where and not Path(where).exists()
        else f'folder = "{where}"',
        "tokenizer = AutoTokenizer.from_pretrained(folder)",
        f'session = ort.InferenceSession(f"{{folder}}/{export.get("file", "model.onnx")}", '
        'providers=["CPUExecutionProvider"])',
        'batch = tokenizer(["an example"], return_tensors="np")',
        f"{outputs}, = session.run(None, {{i.name: batch[i.name] for i in session.get_inputs()}})",
        "# or, with hf-finetune: hf-finetune predict FOLDER --input in.jsonl --output out.jsonl",
    ]
    return "```python\n" + "\n".join(code) + "\n```"


def _task_title(task_name: str) -> str:
    from .tasks import available_tasks

    spec = available_tasks().get(task_name)
    return spec.task_class.card_title if spec else task_name


def _usage(task_name: str, where: str, is_adapter: bool, adapter: dict[str, Any] | None) -> str:
    from .tasks import get_task

    task = get_task(task_name).task_class
    example, extra = task.usage_example, task.pipeline_kwargs
    if not is_adapter:
        code = [
            "from transformers import pipeline",
            "",
            f'model = pipeline("{task_name}", model="{where}"{extra})',
            f"print({example})",
        ]
    else:
        base = (adapter or {}).get("base_model_name_or_path") or "BASE_MODEL"
        auto = task.auto_class
        # LoRA and IA3 fold into the weights; prompt methods add virtual tokens at run time
        mergeable = str((adapter or {}).get("peft_type", "")).upper() in ("LORA", "IA3")
        merged = "adapted.merge_and_unload()" if mergeable else "adapted"
        code = [
            "from peft import PeftModel",
            f"from transformers import AutoConfig, AutoTokenizer, {auto}, pipeline",
            "",
            f'config = AutoConfig.from_pretrained("{where}")  # the label names of this run',
            f'base = {auto}.from_pretrained("{base}", config=config)',
            f'adapted = PeftModel.from_pretrained(base, "{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
            f'model = pipeline("{task_name}", model={merged}, tokenizer=tokenizer{extra})',
            f"print({example})",
        ]
    return "```python\n" + "\n".join(code) + "\n```"
