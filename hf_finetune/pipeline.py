"""From a recipe to a trained output directory: prepare (data, labels, tokenizer, config, the strategy planned
on a weightless model), validate, plan, train, and resume an interrupted run.

Order matters: recipe -> data -> labels -> tokenizer/config are all checked before any weights load,
so a bad input costs seconds, not a model download. Using a finished output directory (eval, predict,
export) is `hf_finetune.inference`; pushing it to the Hub is `hf_finetune.publish`, which `train` reaches
only through its ``after_training`` hook.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import early_stopping, tracking
from .card import write_card
from .config import Recipe
from .config.defaults import describe as describe_defaults
from .config.load import load_recipe
from .distributed import check_launch
from .distributed import configure as configure_parallel
from .errors import FinetuneError, RecipeError
from .hub import ensure_hub_mode
from .interrupt import Interrupted, StopOnSignal, write_note
from .loading import check_weight_files, load_model_config, load_pretrained, load_tokenizer
from .mfu import training_flops_per_token
from .outputs import (
    CLASS_REPORT_FILE,
    CONFUSION_FILE,
    CURVES_FILE,
    NOTE_FILE,
    PARTIAL_PREFIX,
    PREDICTIONS_FILE,
    RECIPE_FILE,
    RESULTS_FILE,
    STRATEGY_FILE,
    TRAINER_STATE,
    atomic_write_text,
    is_output_dir,
    plot_curves,
    read_json,
    split_file,
    write_environment,
    write_jsonl,
)
from .strategies.distill import check_teacher
from .tasks import get_task
from .trainer import FinetuneTrainer, complete_checkpoints, evaluation_only, recipe_header, remove_partial

logger = logging.getLogger("hf_finetune")


@dataclass
class Prepared:
    """Everything known before weights load."""

    recipe: Recipe
    task: Any
    raw: Any
    tokenizer: Any = None
    model_config: Any = None
    summary: dict[str, Any] = field(default_factory=dict)
    #: the strategy planned on a weightless (meta-device) copy of the model
    plan: Any = None
    #: strategy.distill: the checked teacher run (`strategies.distill.Teacher`), else None
    teacher: Any = None


def make_task(recipe: Recipe):
    return get_task(recipe.task.name).task_class(recipe)


def prepare(recipe: Recipe, stage: str = "train") -> Prepared:
    """Load and check the data, settle labels, resolve tokenizer and model config. No weights."""
    tracking.prepare(recipe.training.report_to)  # each tracker installed; MLflow's telemetry off
    ensure_hub_mode()
    task = make_task(recipe)
    raw = task.load(task.splits_for(stage))
    task.prepare(raw)
    tokenizer = load_tokenizer(recipe)
    extra = task.tokenizer_kwargs(tokenizer)
    if extra:  # e.g. byte-level BPE needs add_prefix_space for pre-split words
        tokenizer = load_tokenizer(recipe, **extra)
    task.check_tokenizer(tokenizer)
    model_config = load_model_config(recipe, task.model_config_kwargs())
    check_weight_files(recipe)
    teacher = check_teacher(recipe, model_config, tokenizer)  # strategy.distill, before any weights load
    summary = {
        "task": recipe.task.name,
        "model": recipe.model.name_or_path,
        "data": task.source.description,
        "splits": {name: len(ds) for name, ds in raw.items()},
    }
    summary.update(task.describe())
    if recipe.defaults:  # what the recipe left out of `training` and the package filled in
        summary["training_defaults"] = describe_defaults(recipe.defaults)
    if recipe.early_stopping is not None:  # the metric checked against what the evaluation reports
        summary["early_stopping"] = early_stopping.settle(recipe, task)
    test = recipe.data.test_split
    if test and test in raw:  # what training does with it, at the end
        summary["test_split"] = _test_plan(task, test, raw[test])
    if recipe.model.num_layers is not None:
        summary["num_layers"] = f"the bottom {recipe.model.num_layers} layers of {recipe.model.name_or_path}"
    if teacher is not None:
        cfg = recipe.strategy.distill
        summary["distill"] = f"from {teacher.path} (alpha {cfg.alpha:g}, temperature {cfg.temperature:g})"
    prepared = Prepared(recipe, task, raw, tokenizer, model_config, summary, teacher=teacher)
    if recipe.few_shot.enabled:  # a sentence encoder and a logistic regression, not a task head
        from .fewshot.train import check_installed, describe

        check_installed()
        summary["strategy"] = describe(recipe)
        # its own schedule and loss: the training section's fine-tuning defaults and the task's loss do not apply
        summary.pop("training_defaults", None)
        summary["loss"] = (
            "cosine-similarity loss on pairs (the encoder), then logistic regression (the head)"
            if recipe.few_shot.method == "setfit"
            else "logistic regression (the head)"
        )
        return prepared
    prepared.plan = strategy_plan(recipe, with_peft(recipe, meta_model(prepared)))
    summary["strategy"] = prepared.plan.description
    summary["trainable_params"] = prepared.plan.trainable_params
    summary["total_params"] = prepared.plan.total_params
    return prepared


def meta_model(prepared: Prepared):
    """The task model on the ``meta`` device: its structure and sizes, no weights and no memory."""
    import torch

    with torch.device("meta"):
        return prepared.task.auto_model_class.from_config(
            prepared.model_config, trust_remote_code=prepared.recipe.model.trust_remote_code
        )


def with_peft(recipe: Recipe, model):
    """The model wrapped by the recipe's peft method (LoRA adapters, ...), or unchanged without one."""
    if not recipe.peft.enabled:
        return model
    from .strategies.peft import wrap

    return wrap(model, recipe)


def strategy_plan(recipe: Recipe, model):
    from .strategies import make_plan

    args = recipe.training
    return make_plan(model, recipe.strategy, args.learning_rate, args.weight_decay, peft=recipe.peft)


def plan(recipe: Recipe):
    """`hf-finetune plan`: the parameter groups the recipe would train, without loading weights."""
    if recipe.few_shot.enabled:
        raise RecipeError(
            "few_shot.method",
            f"`{recipe.few_shot.method}` has no parameter groups to plan (a sentence encoder and a logistic "
            "regression); `hf-finetune validate` describes what it trains.",
        )
    return prepare(recipe, stage="train").plan


def validate(recipe: Recipe) -> dict[str, Any]:
    """`hf-finetune validate`: the whole pre-training path, without loading weights."""
    return prepare(recipe, stage="validate").summary


def make_distiller(teacher, cfg, task, args):
    """strategy.distill: the loss that mixes the teacher's soft targets with the task's, the teacher loaded
    (frozen, eval mode) when first needed, its logits cached on disk unless `cache_logits` is false."""
    from .cache import cache_dir
    from .strategies.distill import Distiller, LogitCache, cache_key, hard_loss, load_teacher

    cache = None
    if cfg.cache_logits:
        per_token = task.name == "token-classification"
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
        key = cache_key(teacher, per_token, precision)
        cache = LogitCache(cache_dir() / "teacher_logits" / f"{key}.npz", per_token)
    return Distiller(
        lambda: load_teacher(teacher, task.auto_model_class), cfg, hard_loss(task.loss_function()), cache
    )


def load_model(prepared: Prepared):
    """The pretrained weights of the recipe's checkpoint in the task's model class, with the prepared config."""
    return load_pretrained(prepared.recipe, prepared.task.auto_model_class, prepared.model_config)


def _eval_datasets(recipe: Recipe, tokenised) -> Any:
    splits = recipe.data.eval_splits
    if not splits:
        return None
    if len(splits) == 1:
        return tokenised[splits[0]]
    return {split: tokenised[split] for split in splits}


def train(
    recipe: Recipe,
    callbacks: Sequence[Any] = (),
    after_training: Callable[[Recipe, Path], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune as the recipe says; returns the final metrics (also in all_results.json).

    ``callbacks``: extra `TrainerCallback`s (`hf-finetune tune` reports each evaluation to its study with one).
    ``after_training(recipe, output_dir)``: runs on the main process once the output directory is complete
    (model, metrics, card); `hf_finetune.publish.train_and_push` pushes to the Hub with it.
    """
    started = time.time()
    args = recipe.training
    resume_from = resume_point(recipe)  # also refuses an output dir that holds another run
    if recipe.hub.push and after_training is None:
        logger.warning(
            "hub.push is set, but this call does not push: use hf_finetune.train (or `hf-finetune train`), "
            "or push the output dir afterwards with `hf-finetune push`."
        )
    check_launch(args)  # the world size the launcher started; sets up the process group
    _refuse_few_shot_launch(recipe, resume_from)
    if not args.should_log:  # replicas of a multi-process run: warnings only, no progress bars
        logger.setLevel(logging.WARNING)
        _quiet_datasets()
    with args.main_process_first(desc="loading the data"):  # one process fills the datasets cache
        prepared = prepare(recipe, stage="train")
    task = prepared.task
    logger.info(
        "task %s | model %s | data %s | %s",
        recipe.task.name,
        recipe.model.name_or_path,
        prepared.summary["data"],
        prepared.summary["splits"],
    )

    output_dir = Path(args.output_dir)
    if recipe.few_shot.enabled:
        trainer, tokenised, train_metrics = _few_shot(prepared)
    else:
        trainer, tokenised, train_metrics = _fine_tune(prepared, callbacks, resume_from)

    eval_metrics = _evaluate_splits(trainer, recipe, tokenised, prepared.raw, task, output_dir)
    if eval_metrics:
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    test_metrics = _run_test_split(trainer, prepared, tokenised, output_dir)
    trainer.save_state()
    if trainer.is_world_process_zero():
        (output_dir / NOTE_FILE).unlink(missing_ok=True)  # a resumed run has now finished
        plot_curves(
            trainer.state.log_history,
            output_dir / CURVES_FILE,
            title=f"{recipe.model.name_or_path} on {prepared.summary['data']}",
        )
        try:
            write_card(output_dir, repo_id=recipe.hub.repo_id)
        except Exception as exc:  # the model is saved; a card problem must not cost the run
            logger.warning("could not write the model card (%s: %s)", type(exc).__name__, exc)
            if recipe.hub.push:
                raise
        logger.info("done in %.0fs; outputs in %s", time.time() - started, output_dir)
        if after_training is not None:
            after_training(recipe, output_dir)
    tracking.finish(trainer)  # after the final evaluations, so they are in the tracked run
    results = read_json(output_dir / RESULTS_FILE) if trainer.is_world_process_zero() else None
    if results is not None:
        return results
    # the other processes never read it: the main process may be rewriting it at this moment
    return {**train_metrics, **eval_metrics, **test_metrics}


def _fine_tune(prepared: Prepared, callbacks: Sequence[Any], resume_from: Path | None):
    """Fine-tune the prepared recipe's model with the `FinetuneTrainer`; the trained model saved, its training
    metrics written. Returns the trainer (for the final evaluations), the tokenised splits and the training
    metrics."""
    from transformers import set_seed

    recipe, task = prepared.recipe, prepared.task
    args = recipe.training
    set_seed(args.seed)  # before the task head is initialised
    model = with_peft(recipe, load_model(prepared))
    plan_ = strategy_plan(recipe, model)
    plan_.apply(model)
    logger.info("strategy: %s", plan_.summary())
    distiller, distilled = None, {}
    if prepared.teacher is not None:  # after the student's head is initialised: the same seed, the same head
        distiller = make_distiller(prepared.teacher, recipe.strategy.distill, task, args)
        distilled = prepared.teacher.record(recipe.strategy.distill, recipe.model.num_layers)
        logger.info("distillation: %s", distilled)
    with args.main_process_first(desc="tokenising"):  # the others then read the tokenised cache
        tokenised = task.preprocess(prepared.raw, prepared.tokenizer)
    collator = task.data_collator(prepared.tokenizer, args)
    train_data = tokenised[recipe.data.train_split]
    parallel = configure_parallel(
        model,
        args,
        lambda: _probe_batch(model, train_data, collator),
        gradual_unfreezing=plan_.unfreeze_every is not None,
    )

    output_dir = Path(args.output_dir)
    if args.should_save:
        strategy_record = {**plan_.to_dict(), **({"distillation": distilled} if distilled else {})}
        _start_output_dir(prepared, strategy_record)

    if args.include_num_input_tokens_seen == "no":
        args.include_num_input_tokens_seen = "non_padding"  # for train_tokens_per_second and MFU
    flops_per_token = training_flops_per_token(model)["total"]
    trainer = FinetuneTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=_eval_datasets(recipe, tokenised),
        processing_class=prepared.tokenizer,
        data_collator=collator,
        compute_metrics=task.compute_metrics(),
        # class weights / focal loss (hf_finetune.losses), else None; distillation's hard term
        compute_loss_func=distiller.hard_loss if distiller is not None else task.loss_function(),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        recipe=recipe,
        strategy_plan=plan_,
        distiller=distiller,
    )
    tracking.attach(trainer, recipe)  # report_to: local stores, one run until tracking.finish
    if resume_from is not None:
        logger.info("resuming from %s", resume_from)
    stopping = early_stopping.callback(recipe)
    if stopping is not None:  # before `callbacks`: a search's pruner sees that the run stops here
        trainer.add_callback(stopping)
    for callback in callbacks:
        trainer.add_callback(callback)
    stopper = StopOnSignal()
    trainer.add_callback(stopper)
    with stopper:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stopper.signum is not None:
        step = trainer.state.global_step
        checkpoint = output_dir / f"checkpoint-{step}"
        if not checkpoint.is_dir():  # the signal came after the last step: nothing was saved for it
            checkpoint = None
        if args.should_save:
            write_note(output_dir, stopper.signum, step, trainer.state.max_steps, checkpoint)
        raise Interrupted(
            f"training stopped by {stopper.name} at step {step} of {trainer.state.max_steps}; "
            + (f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint saved")
            + f". Continue with `hf-finetune train {output_dir / RECIPE_FILE} --resume`.",
            stopper.signum,
        )
    trainer.save_model()
    if distiller is not None and args.should_save:
        distiller.save_cache()

    train_metrics = dict(result.metrics)
    train_metrics["train_samples"] = len(tokenised[recipe.data.train_split])
    train_metrics["trainable_params"] = plan_.trainable_params
    tokens = trainer.token_count.tokens
    if tokens and train_metrics.get("train_runtime"):
        train_metrics["train_tokens"] = tokens
        train_metrics["train_tokens_per_second"] = round(tokens / train_metrics["train_runtime"], 3)
        # the matmul FLOPs of the real tokens trained on (see hf_finetune.mfu); the basis of bench's MFU
        train_metrics["train_model_flops"] = float(tokens * flops_per_token)
    train_metrics["total_params"] = plan_.total_params
    train_metrics["world_size"] = args.world_size
    if "find_unused_parameters" in parallel:
        train_metrics["ddp_find_unused_parameters"] = parallel["find_unused_parameters"]
    trainer.log_metrics("train", train_metrics)
    loss_record = getattr(task.loss_function(), "record", dict)()  # class weights, focal loss
    stopped = early_stopping.results(recipe, trainer)  # settings, stopped_early, best_step ({} without it)
    trainer.save_metrics("train", {**train_metrics, "strategy": plan_.description, **loss_record, **stopped})
    return trainer, tokenised, train_metrics


def _refuse_few_shot_launch(recipe: Recipe, resume_from: Path | None) -> None:
    """A few-shot method trains in one process and saves no checkpoints: refuse a multi-process launch or a
    resume before the data or any weights load."""
    if not recipe.few_shot.enabled:
        return
    if recipe.training.world_size > 1:
        raise RecipeError(
            "few_shot.method",
            f"trains in one process; this launch started {recipe.training.world_size}. Run it with "
            "`hf-finetune train` (no `accelerate launch` or `torchrun`).",
        )
    if resume_from is not None:
        raise RecipeError(
            "training.resume", "a few-shot run writes no checkpoints to resume from; drop `--resume`."
        )


def _few_shot(prepared: Prepared):
    """Train the prepared recipe's `few_shot` method (`hf_finetune.fewshot`); the model saved as a SetFit model
    directory, its training metrics written. Returns a `FinetuneTrainer` around it, for the final evaluations
    (fp32, as `setfit.SetFitModel.predict` runs it), the tokenised splits and the training metrics."""
    from .fewshot import train as few_shot
    from .tasks.base import capped_max_length

    recipe, task = prepared.recipe, prepared.task
    result = few_shot.fit(prepared, capped_max_length(prepared.tokenizer, recipe.data.max_seq_length))
    output_dir = Path(recipe.training.output_dir)
    _start_output_dir(prepared, result.record)
    few_shot.save(result, output_dir)
    with recipe.training.main_process_first(desc="tokenising"):
        tokenised = task.preprocess(prepared.raw, prepared.tokenizer)
    args = evaluation_only(recipe.training)  # fp32: the head was fitted in fp32, as SetFit predicts
    trainer = FinetuneTrainer(
        model=result.model,
        args=args,
        processing_class=prepared.tokenizer,
        data_collator=task.data_collator(prepared.tokenizer, args),
        compute_metrics=task.compute_metrics(),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        recipe=recipe,
    )
    tracking.attach(trainer, recipe)
    trainer.state.global_step = result.metrics.get("train_steps", 0)  # SetFit's contrastive steps
    metrics = {**result.metrics, "world_size": args.world_size}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", {**metrics, "strategy": result.record["strategy"]})
    return trainer, tokenised, metrics


def _start_output_dir(prepared: Prepared, strategy_record: dict[str, Any]) -> None:
    """The output dir before the model is saved: unfinished saves removed, the resolved recipe (with the
    data mirror it read), the environment and the strategy record written."""
    recipe, task = prepared.recipe, prepared.task
    output_dir = Path(recipe.training.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_partial(output_dir)
    if removed:
        logger.info("removed the unfinished checkpoint saves %s", ", ".join(removed))
    if task.source is not None and task.source.mirror_root and recipe.data.mirror is None:
        recipe.data.mirror = task.source.mirror_root  # eval/predict find the same data later
    recipe.save(output_dir / RECIPE_FILE, header=recipe_header(recipe))
    write_environment(output_dir)
    atomic_write_text(output_dir / STRATEGY_FILE, json.dumps(strategy_record, indent=2) + "\n")


# Settings that change how a run is watched or where it is kept, not what it trains: the same run may be
# resumed with different ones.
_RUN_IRRELEVANT = (
    "training.output_dir",
    "training.logging_steps",
    "training.logging_strategy",
    "training.logging_first_step",
    "training.logging_dir",
    "training.disable_tqdm",
    "training.report_to",
    "training.run_name",
    "training.project",
    "training.save_steps",
    "training.save_total_limit",
    "data.mirror",
)


def resume_point(recipe: Recipe) -> Path | None:
    """The checkpoint this training run continues from, or None; refuses output dirs it must not touch.

    An output dir is used when it is empty, or holds a run of the same recipe (a rerun, or a resume).
    One that holds another run, or files that are not a run, is an error: training would overwrite them.
    """
    out = Path(recipe.training.output_dir)
    explicit = None
    if recipe.resume not in (None, "auto"):
        explicit = Path(recipe.resume)
        if not (explicit / TRAINER_STATE).is_file():
            raise RecipeError(
                "training.resume",
                f"{explicit} is not a complete checkpoint (no {TRAINER_STATE}); give a checkpoint-N directory "
                "of an earlier run, or `auto` for the newest one in the output dir.",
            )
    if out.exists() and not out.is_dir():
        raise RecipeError("training.output_dir", f"{out} is a file; give a directory.")
    entries = [p.name for p in out.iterdir() if not p.name.startswith(PARTIAL_PREFIX)] if out.is_dir() else []
    if entries and not is_output_dir(out):
        raise RecipeError(
            "training.output_dir",
            f"{out} is not empty and holds no {RECIPE_FILE}, so it is not an hf-finetune run; training would "
            "overwrite its files. Give a new or empty directory.",
        )
    changed = recipe_differences(out / RECIPE_FILE, recipe) if entries else []
    if changed:
        raise RecipeError(
            "training.output_dir",
            f"{out} holds a different run: its {RECIPE_FILE} differs in {', '.join(changed)}. Give a new "
            "output directory (`--output-dir`), or delete this one to start over.",
        )
    checkpoints = complete_checkpoints(out) if entries else []
    if explicit is not None:
        return explicit
    if recipe.resume == "auto":
        if not checkpoints:
            logger.info(
                "training.resume=auto: %s holds no complete checkpoint; starting from the beginning", out
            )
        return checkpoints[-1] if checkpoints else None
    if checkpoints:
        raise RecipeError(
            "training.output_dir",
            f"{out} holds checkpoints of this run (newest: {checkpoints[-1].name}); continue it with "
            "`--resume` (training.resume=auto), or delete the directory to start over.",
        )
    return None  # the same recipe again, without checkpoints: a rerun


def recipe_differences(saved: Path, recipe: Recipe) -> list[str]:
    """The dotted fields in which the recipe saved in an output dir and ``recipe`` differ."""
    try:
        # as saved: with the defaults that run got, not those of this machine or version
        before = _flatten(load_recipe(saved, defaults=False).to_dict())
    except FinetuneError as exc:
        return [f"(it no longer loads: {exc})"]
    now = _flatten(recipe.to_dict())
    keys = sorted(set(before) | set(now))
    return [k for k in keys if k not in _RUN_IRRELEVANT and before.get(k) != now.get(k)]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _probe_batch(model, dataset, collator, size: int = 2):
    """A collated batch of the first training examples, with only the columns the model's forward takes
    (as the Trainer's column removal does), for `distributed.unused_parameters`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepted = set(inspect.signature(base.forward).parameters)
    rows = [{k: v for k, v in dataset[i].items() if k in accepted} for i in range(min(size, len(dataset)))]
    return collator(rows)


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_warning()


def _test_plan(task, split: str, ds) -> str:
    predictions = PREDICTIONS_FILE.format(split=split)
    if task.is_labelled(split, ds):
        return f"{split} (labelled): scored after training (test_* metrics) and predicted ({predictions})"
    return f"{split} (no labels): predicted after training ({predictions})"


def _run_test_split(trainer, prepared: Prepared, tokenised, output_dir: Path) -> dict[str, Any]:
    """The test split, once, on the final model (the best one under load_best_model_at_end).

    Labelled, it is scored with `Trainer.predict` (``test_*`` metrics, which neither callbacks nor model
    selection see: it is never an eval_dataset); labelled or not, `predictions_<split>.jsonl` gets each
    row's input fields with the prediction, from the task's `predict` (what `hf-finetune predict` writes).
    """
    task, split = prepared.task, prepared.recipe.data.test_split
    if not split or split not in prepared.raw:
        return {}
    raw = prepared.raw[split]
    metrics: dict[str, Any] = {}
    if task.is_labelled(split, raw):
        task.scored_split = split  # QA scores the test examples, not the evaluation split's
        task.class_report = None
        try:
            metrics = trainer.predict(tokenised[split], metric_key_prefix="test").metrics
        finally:
            task.scored_split = None
        if trainer.is_world_process_zero():
            write_class_report(task, output_dir, split, per_split=True)
        held = task.calibration_logits() if task.temperature is not None else None
        if held is not None:  # the eval split's temperature on held-out data: the honest ECE
            from .metrics.calibration import held_out

            held_metrics = held_out(*held, task.temperature, "test")
            tracking.log(trainer, held_metrics)
            metrics.update(held_metrics)
        metrics["test_samples"] = len(raw)  # examples, not features (QA windows)
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
    # every process runs the forward passes (a sharded model needs them all); the main one writes the file
    batch_size = trainer.args.per_device_eval_batch_size
    rows = predict_split(task, trainer.model, prepared.tokenizer, raw, batch_size, split)
    if trainer.is_world_process_zero():
        path = write_jsonl(output_dir / PREDICTIONS_FILE.format(split=split), rows)
        logger.info("%s split: %d predictions in %s", split, len(rows), path)
    return metrics


def predict_split(task, model, tokenizer, ds, batch_size: int, where: str) -> list[dict[str, Any]]:
    """The task's `predict` on the rows of a raw split: each row's input fields (`Task.input_fields`; its
    labels left out) plus the prediction, as `hf-finetune predict` writes them."""
    fields = [name for name in task.input_fields() if name in ds.column_names]
    return task.predict(model, tokenizer, ds.select_columns(fields).to_list(), batch_size, where=where)


def _evaluate_splits(trainer, recipe: Recipe, tokenised, raw, task=None, output_dir=None) -> dict[str, Any]:
    """The final evaluation of each eval split; with ``task`` and ``output_dir``, also the task's per-class
    report of each (see `write_class_report`)."""
    splits = recipe.data.eval_splits
    metrics: dict[str, Any] = {}
    for index, split in enumerate(splits):
        prefix = "eval" if len(splits) == 1 else f"eval_{split}"
        if task is not None:
            task.class_report = None
        result = trainer.evaluate(eval_dataset=tokenised[split], metric_key_prefix=prefix)
        result[f"{prefix}_samples"] = len(raw[split])  # examples, not features (QA windows)
        metrics.update(result)
        if task is not None and output_dir is not None and trainer.is_world_process_zero():
            write_class_report(task, Path(output_dir), split, per_split=index > 0)
        if index == 0 and task is not None and output_dir is not None:  # scores calibrated on this split
            calibrated = calibrate_scores(trainer, task, split, prefix, Path(output_dir))
            tracking.log(trainer, calibrated)
            metrics.update(calibrated)
    return metrics


def calibrate_scores(trainer, task, split: str, prefix: str, output_dir: Path) -> dict[str, Any]:
    """Temperature scaling fitted on the task's latest evaluation (of ``split``), when the task has one
    (`Task.calibration_logits`): ``<prefix>_temperature``, ``_ece``, ``_ece_calibrated``; the main process
    writes calibration.json and reliability_diagram.png, and the task's predictions use the temperature from
    now on (the test split's). Every process fits the same T from the same gathered logits."""
    from .metrics.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE
    from .metrics.calibration import calibrate as fit

    data = task.calibration_logits()
    if data is None:
        return {}
    try:
        calibration = fit(*data, split=split)
    except Exception as exc:  # the model and its scores are saved; calibrating must not cost the run
        logger.warning("could not fit a temperature on the %s split (%s: %s)", split, type(exc).__name__, exc)
        return {}
    task.temperature = calibration.temperature
    logger.info(
        "%s split: temperature %.4g; ECE %.4f before, %.4f after (in-sample)",
        split,
        calibration.temperature,
        calibration.ece,
        calibration.ece_calibrated,
    )
    if calibration.temperature in (MIN_TEMPERATURE, MAX_TEMPERATURE):
        logger.warning(
            "%s split: the temperature stopped at the end of its range (%g): the split's NLL keeps falling "
            "that way (e.g. every example right with a wide margin), so it says little about calibration; "
            "a larger evaluation split gives a meaningful one",
            split,
            calibration.temperature,
        )
    if trainer.is_world_process_zero():
        try:
            calibration.write(output_dir)
        except Exception as exc:  # the scores are saved; a plotting problem must not cost the run
            logger.warning("could not write the calibration files (%s: %s)", type(exc).__name__, exc)
    return calibration.metrics(prefix)


def write_class_report(task, output_dir: Path, split: str, per_split: bool) -> list[Path]:
    """The per-class report of the task's latest evaluation (classification_report.md, and for single-label
    classification confusion_matrix.png) in ``output_dir``; ``per_split``: named for ``split``
    (classification_report_<split>.md). Nothing for tasks without one (regression, NER, QA)."""
    report = getattr(task, "class_report", None)
    if report is None:
        return []
    name = split if per_split else None
    try:
        written = report.write(
            output_dir / split_file(CLASS_REPORT_FILE, name),
            output_dir / split_file(CONFUSION_FILE, name),
            split=split,
        )
    except Exception as exc:  # the scores are saved; a plotting problem must not cost the run
        logger.warning("could not write the classification report (%s: %s)", type(exc).__name__, exc)
        return []
    logger.info("%s split: per-class report in %s", split, ", ".join(str(p) for p in written))
    return written
