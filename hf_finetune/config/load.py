"""Reading a recipe: YAML or a dict, dotted overrides, every section built and checked, TrainingArguments.

A recipe has the sections ``task``, ``model``, ``data``, ``strategy``, ``peft``, ``training`` and ``hub``.
``training`` is :class:`transformers.TrainingArguments` itself, so every Trainer option works in a recipe.
Checks that span sections (PEFT with a freezing strategy, ``hub.merge`` without an adapter) live here, as
does what this machine implies for the Trainer (``use_cpu``, mixed precision). This is the one config
module that reads the task registry: ``task.name`` picks the dataclass of the ``task`` section.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import hardware
from ..distributed import launched_world_size
from ..errors import RecipeError, close_matches
from .coerce import Override, apply_overrides, build_section, coerce_field, coerce_fields, parse_yaml
from .defaults import training_defaults
from .schema import (
    SECTIONS,
    DataConfig,
    EarlyStoppingConfig,
    FewShotSection,
    HubConfig,
    ModelConfig,
    PeftSection,
    Recipe,
    StrategyConfig,
    TaskConfig,
    absolute_path,
    is_secret,
    plain,
)

logger = logging.getLogger(__name__)


def load_recipe(
    source: str | Path | dict[str, Any],
    overrides: Sequence[str] = (),
    output_dir: str | None = None,
    defaults: bool = True,
) -> Recipe:
    """Read a recipe (a YAML path, or a dict) and apply ``section.field=value`` overrides.

    ``defaults``: fill what the `training` section leaves out with hf-finetune's defaults (`config.defaults`);
    False for the recipe.yaml a run saved, which records the defaults it trained with (this machine's, or a
    later version's, may differ).
    Raises :class:`RecipeError` naming the field for every problem; loads no data and no weights.
    """
    if isinstance(source, dict):
        raw, origin = _deep_copy(source), None
    else:
        path = Path(source)
        if not path.is_file():
            raise RecipeError(
                None,
                f"recipe file not found: {path}. Give the path of a recipe YAML file "
                "(`hf-finetune recipes` lists the bundled ones).",
            )
        raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
        origin = str(path)
        if raw is None:
            raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(
            None,
            f"{origin or 'recipe'}: expected a mapping with the sections "
            f"{', '.join(SECTIONS)}, got {type(raw).__name__}.",
        )
    for key in raw:
        if key not in SECTIONS:
            raise RecipeError(
                str(key),
                f"unknown recipe section{close_matches(str(key), SECTIONS)}; "
                f"sections are: {', '.join(SECTIONS)}.",
            )
    apply_overrides(raw, overrides)

    task_raw = raw.get("task")
    if isinstance(task_raw, str):  # shorthand `task: text-classification`
        task_raw = {"name": task_raw}
    task_raw = dict(task_raw or {})
    from ..tasks import get_task  # imported on use: the task modules pull in datasets and evaluate

    task_name = coerce_field(task_raw.get("name", TaskConfig.name), str, "task.name")
    spec = get_task(task_name)
    task_raw["name"] = task_name
    task = build_section(spec.config_class, task_raw, "task")
    model = build_section(ModelConfig, raw.get("model"), "model")
    data = build_section(DataConfig, raw.get("data"), "data")
    strategy = build_section(StrategyConfig, raw.get("strategy"), "strategy")
    peft = build_section(PeftSection, raw.get("peft"), "peft")
    hub = build_section(HubConfig, raw.get("hub"), "hub")
    few_shot = build_section(FewShotSection, raw.get("few_shot"), "few_shot")
    if hub.merge and peft.method not in ("lora", "ia3"):
        raise RecipeError(
            "hub.merge",
            "merges a LoRA or IA3 adapter into the weights; "
            + (
                f"a {peft.method} adapter cannot be merged."
                if peft.enabled
                else "this recipe trains no adapter."
            )
            + " Drop it.",
        )
    _check_strategy_with_peft(strategy, peft)
    _check_few_shot(few_shot, task, model, data, strategy, peft)

    training_raw = raw.get("training") or {}
    if not isinstance(training_raw, dict):
        raise RecipeError(
            "training", f"expected a mapping of TrainingArguments fields, got {type(training_raw).__name__}."
        )
    training_raw = dict(training_raw)
    resume = _resume_setting(training_raw)
    early_stopping = _early_stopping_setting(training_raw)
    own_fields = set(training_raw)  # what the recipe and overrides set (early stopping adapts only the rest)
    for key, value in training_raw.items():
        if is_secret(str(key)) and value is not None:
            raise RecipeError(
                f"training.{key}",
                "a token in a recipe or an override ends up in saved files and shell history; remove it, "
                "and set the HF_TOKEN environment variable or run `hf auth login` instead.",
            )
    if output_dir is not None:
        training_raw["output_dir"] = output_dir
    if training_raw.get("output_dir") in (None, ""):
        stem = Path(origin).stem if origin else "run"
        training_raw["output_dir"] = os.path.join("runs", stem)
    # hf-finetune's defaults for what the recipe leaves out (config/defaults.py); recorded in recipe.yaml
    applied = (
        training_defaults(training_raw, evaluates=bool(data.eval_splits), adapter=peft.enabled)
        if defaults
        else []
    )
    training_raw = {**{d.field: d.value for d in applied}, **training_raw}
    training, training_fields = build_training_arguments(training_raw)
    if early_stopping is not None:
        training, training_fields = _fit_early_stopping(training, training_fields, own_fields, data)
        # early stopping's own settings win; a checkpoint cadence by steps means nothing when it saves by epoch
        applied = [
            d
            for d in applied
            if training_fields.get(d.field) == d.value
            and not (d.field == "save_steps" and _strategy(training.save_strategy) != "steps")
        ]
    _check_training_values(training)
    recipe = Recipe(
        task=task,
        model=model,
        data=data,
        training=training,
        strategy=strategy,
        peft=peft,
        hub=hub,
        few_shot=few_shot,
        source=origin,
        training_fields=training_fields,
        resume=resume,
        early_stopping=early_stopping,
        defaults=tuple(applied),
    )
    if early_stopping is not None:
        if few_shot.enabled:
            raise RecipeError(
                "training.early_stopping",
                f"watches evaluations during training; `few_shot.method: {few_shot.method}` evaluates once, at "
                "the end. Drop one of the two.",
            )
        _monitor(recipe)
    return recipe


def _check_training_values(args: Any) -> None:
    """Values the Trainer would accept and then train nothing (or diverge) with."""
    if not args.learning_rate > 0:
        raise RecipeError("training.learning_rate", f"must be positive, got {args.learning_rate}.")
    if args.max_steps == 0 or (args.max_steps < 0 and not args.num_train_epochs > 0):
        field_name = "training.max_steps" if args.max_steps == 0 else "training.num_train_epochs"
        raise RecipeError(
            field_name,
            "trains nothing: give a positive `training.max_steps`, or `training.num_train_epochs` > 0 "
            "with max_steps left at -1.",
        )
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise RecipeError(f"training.{name}", f"must be at least 1, got {getattr(args, name)}.")
    from ..tracking import check_report_to

    check_report_to(args.report_to, installed=False)  # a tracker not installed: pipeline.prepare


def _resume_setting(training_raw: dict[str, Any]) -> str | None:
    """``training.resume`` (or the Trainer's own ``resume_from_checkpoint``), taken out of the section:
    ``auto``/``true`` -> "auto", ``false``/absent -> None, anything else is a checkpoint directory."""
    given = {k: training_raw.pop(k) for k in ("resume", "resume_from_checkpoint") if k in training_raw}
    given = {k: v.parsed(empty=None) if isinstance(v, Override) else v for k, v in given.items()}
    given = {k: v for k, v in given.items() if v is not None}
    if len(given) > 1:
        raise RecipeError(
            "training.resume", "and `training.resume_from_checkpoint` are both set; keep `training.resume`."
        )
    if not given:
        return None
    key, value = next(iter(given.items()))
    if value is False or (isinstance(value, str) and value.lower() in ("", "no", "never", "false")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("auto", "latest", "true")):
        return "auto"
    if not isinstance(value, str):
        raise RecipeError(
            f"training.{key}",
            f"expected `auto`, `false` or the path of a checkpoint directory, got {value!r}.",
        )
    return absolute_path(value)


def _early_stopping_setting(training_raw: dict[str, Any]) -> EarlyStoppingConfig | None:
    """``training.early_stopping``, taken out of the section (it is no TrainingArguments field): ``true`` (the
    defaults), a number (the patience) or a mapping of `EarlyStoppingConfig` fields; null/false/absent: off."""
    if "early_stopping" not in training_raw:
        return None
    value = training_raw.pop("early_stopping")
    if isinstance(value, Override):
        value = value.parsed(empty=None)
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"patience": value}
    return coerce_field(value, EarlyStoppingConfig | None, "training.early_stopping")


def _fit_early_stopping(
    args: Any, values: dict[str, Any], own: set[str], data: DataConfig
) -> tuple[Any, dict[str, Any]]:
    """The training settings early stopping needs: evaluations during training, a checkpoint at each one and
    the best one loaded at the end. What the recipe leaves out is set to fit (and written to recipe.yaml);
    what it sets that does not fit is an error naming the fields."""
    from ..early_stopping import DEFAULT_EVAL_STEPS

    where = "training.early_stopping"
    if not data.eval_splits:
        raise RecipeError(
            where,
            "stops when the evaluation metric stops improving, but `data.eval_split` is null, so nothing is "
            "evaluated; name the evaluation split, or carve one out of the training data with "
            "`data.validation_size: 0.1`.",
        )
    evaluation = _strategy(args.eval_strategy)
    if evaluation == "no":
        raise RecipeError(
            where,
            "needs evaluations during training, but `training.eval_strategy` is `no`; set it to `steps` "
            "(an evaluation every `training.eval_steps` steps) or `epoch`.",
        )
    if "load_best_model_at_end" in own and not args.load_best_model_at_end:
        raise RecipeError(
            "training.load_best_model_at_end",
            "is false, but `training.early_stopping` keeps the model of the best evaluation, loaded at the end "
            "of training; drop `load_best_model_at_end: false`, or drop early stopping.",
        )
    changed: dict[str, Any] = {"load_best_model_at_end": True}
    eval_steps = args.eval_steps
    if evaluation == "steps" and "eval_steps" not in own:
        # the patience counts evaluations: 10 a run leave it room (the package default evaluates 4 times)
        eval_steps = changed["eval_steps"] = DEFAULT_EVAL_STEPS
    saving = _strategy(args.save_strategy)
    if saving not in (evaluation, "best"):
        if "save_strategy" in own:
            raise RecipeError(
                "training.save_strategy",
                f"is `{saving}` and `training.eval_strategy` is `{evaluation}`: early stopping loads the best "
                "evaluation's checkpoint at the end, so it needs a checkpoint at each evaluation; set "
                f"`save_strategy: {evaluation}` (or `best`), or drop it.",
            )
        saving = changed["save_strategy"] = evaluation
    if saving == "steps" and not _steps_multiple(args.save_steps, eval_steps):
        if "save_steps" in own:
            raise RecipeError(
                "training.save_steps",
                f"is {args.save_steps:g}, not a multiple of `training.eval_steps` ({eval_steps:g}): early "
                "stopping loads the best evaluation's checkpoint at the end, so it needs a checkpoint at each "
                f"evaluation; set `save_steps: {eval_steps:g}`, or drop it.",
            )
        changed["save_steps"] = eval_steps
    elif saving == "steps" and "save_steps" not in own:
        changed["save_steps"] = eval_steps
    if args.save_total_limit == 1:  # the Trainer then deletes all but the best checkpoint when training ends
        if "save_total_limit" in own:
            raise RecipeError(
                "training.save_total_limit",
                "is 1: with the best model loaded at the end (which `training.early_stopping` sets), the Trainer "
                "deletes every checkpoint but the best one when training ends, also when a signal stops it, "
                "which leaves nothing to resume from; set it to 2 (the best checkpoint and the newest) or more, "
                "or drop it.",
            )
        changed["save_total_limit"] = 2
    changed = {k: v for k, v in changed.items() if k not in values or values[k] != v}
    if not changed:
        return args, values
    return build_training_arguments({**values, **changed})


def _steps_multiple(save_steps: float, eval_steps: float | None) -> bool:
    """Whether checkpoints every ``save_steps`` fall on evaluations every ``eval_steps`` (counts or fractions)."""
    if eval_steps is None:
        return False
    if (save_steps < 1) != (eval_steps < 1):
        return False
    ratio = save_steps / eval_steps
    return abs(ratio - round(ratio)) < 1e-9 and round(ratio) >= 1


def _strategy(value: Any) -> str:
    return str(plain(value))


def _monitor(recipe: Recipe) -> None:
    """The metric early stopping compares (and which way is better), on the TrainingArguments only: the task's
    headline metric unless `training.metric_for_best_model` names one (`early_stopping.settle` confirms it
    against the task's evaluation once the data is read)."""
    from ..early_stopping import default_metric
    from ..tasks.base import lower_is_better

    args = recipe.training
    if "metric_for_best_model" not in recipe.training_fields:
        args.metric_for_best_model = default_metric(recipe)
    if "greater_is_better" not in recipe.training_fields:
        args.greater_is_better = not lower_is_better(args.metric_for_best_model)


FEW_SHOT_TASK = "text-classification"


def _check_few_shot(
    few_shot: FewShotSection,
    task: TaskConfig,
    model: ModelConfig,
    data: DataConfig,
    strategy: StrategyConfig,
    peft: PeftSection,
) -> None:
    """`few_shot` and `data.samples_per_class` against the rest of the recipe: what they cannot work with is
    an error here, before any data loads (the data's own checks, multi-label and regression, come in the
    task's `prepare`)."""
    if data.samples_per_class is not None and task.name != FEW_SHOT_TASK:
        raise RecipeError(
            "data.samples_per_class",
            f"draws N examples of each class, for text classification; this recipe's task is {task.name}, "
            "whose examples hold many labels (tags, answer spans). Use `data.max_train_samples` instead.",
        )
    if not few_shot.enabled:
        return
    method = f"`few_shot.method: {few_shot.method}`"
    if task.name != FEW_SHOT_TASK:
        raise RecipeError(
            "few_shot.method",
            f"classifies whole texts (text-classification); this recipe's task is {task.name}. Drop "
            "`few_shot` and fine-tune (with `data.max_train_samples` for a small training set).",
        )
    if getattr(task, "text_pair_column", None):
        raise RecipeError(
            "task.text_pair_column",
            f"{method} embeds single texts, and this recipe classifies pairs; drop `few_shot` to fine-tune on "
            "the pairs, or drop `task.text_pair_column`.",
        )
    for name in ("class_weights", "loss"):
        value = getattr(task, name, None)
        if value not in (None, "cross_entropy"):
            raise RecipeError(
                f"task.{name}",
                f"sets the fine-tuning loss; {method} fits a logistic regression with its own loss. Drop one.",
            )
    if data.long_text != "truncate":
        raise RecipeError(
            "data.long_text", f"`windows` is for fine-tuned classifiers; {method} embeds the first tokens."
        )
    if model.num_layers is not None:
        raise RecipeError("model.num_layers", f"cuts a checkpoint for fine-tuning; {method} uses it whole.")
    if peft.enabled:
        raise RecipeError(
            "peft.method", f"{method} trains the sentence encoder itself; drop `peft` or `few_shot`."
        )
    if not strategy.is_default:
        changed = [
            f.name
            for f in dataclasses.fields(strategy)
            if getattr(strategy, f.name) != getattr(StrategyConfig(), f.name)
        ]
        raise RecipeError(
            f"strategy.{changed[0]}",
            f"shapes fine-tuning; {method} has its own schedule (the `few_shot` fields). Drop it.",
        )


def _check_strategy_with_peft(strategy: StrategyConfig, peft: PeftSection) -> None:
    if not peft.enabled:
        return
    if strategy.gradual_unfreezing is not None:
        raise RecipeError(
            "strategy.gradual_unfreezing",
            f"cannot be combined with `peft.method: {peft.method}`: PEFT keeps the whole base model frozen and "
            "trains its adapters from the start, so there are no layers to unfreeze. Drop one of the two.",
        )
    for name in ("freeze_embeddings", "freeze_all_but_head"):
        if getattr(strategy, name):
            raise RecipeError(
                f"strategy.{name}",
                f"has no effect with `peft.method: {peft.method}`, which freezes the whole base model already; drop it.",
            )
    if strategy.freeze_layers:
        raise RecipeError(
            "strategy.freeze_layers",
            f"has no effect with `peft.method: {peft.method}`, which freezes the whole base model already; to adapt "
            "only some layers, list their modules in `peft.target_modules`.",
        )


def build_training_arguments(raw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from transformers import TrainingArguments

    values = coerce_fields(TrainingArguments, raw, "training")
    init = derived_training_init(values)
    try:
        args = TrainingArguments(**init)
    except (ValueError, TypeError, ImportError) as exc:
        raise RecipeError("training", f"{exc}") from None
    return args, values


def derived_training_init(values: dict[str, Any]) -> dict[str, Any]:
    """The TrainingArguments kwargs: the recipe's values plus what this machine and launch imply
    (``use_cpu``, or mixed precision turned off), which are not written into the saved recipe."""
    init = dict(values)
    if "use_cpu" not in values and launched_world_size() > 1 and not hardware.accelerator_available():
        # a multi-process launch (torchrun, accelerate launch) on a machine without a GPU: without use_cpu,
        # Accelerate finds no device to spread over and every process would train alone on all the data
        logger.info(
            "training: %d processes and no accelerator: DDP on the CPU over gloo", launched_world_size()
        )
        init["use_cpu"] = True
    mixed = "bf16" if values.get("bf16") else "fp16" if values.get("fp16") else None
    if mixed and "use_cpu" not in values and not hardware.accelerator_available():
        if hardware.cpu_has_native(mixed):
            # TrainingArguments refuses mixed precision without an accelerator unless use_cpu is set. Derive
            # it here (and keep it out of the saved recipe) so one recipe runs bf16 on a GPU and on a CPU.
            hardware.log_once(
                logger,
                logging.INFO,
                ("cpu", mixed),
                "training: no accelerator found; %s autocast runs on the CPU (use_cpu=true)",
                mixed,
            )
            init["use_cpu"] = True
        else:
            # Without the instructions, autocast emulates the dtype: slower than fp32, not faster (bf16
            # matmuls ran at 1/160 of the fp32 rate on an AVX2-only EPYC). The saved recipe keeps the
            # setting, so the same recipe still uses mixed precision on a GPU.
            hardware.log_once(
                logger,
                logging.WARNING,
                ("emulated", mixed),
                "training.%s: no accelerator, and this CPU has no native %s instructions, where autocast "
                "would emulate %s at a fraction of fp32 speed; training in fp32 instead. To force it on "
                "the CPU anyway, set training.use_cpu=true.",
                mixed,
                mixed,
                mixed,
            )
            for key in (mixed, f"{mixed}_full_eval"):
                init[key] = False
    return init


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
