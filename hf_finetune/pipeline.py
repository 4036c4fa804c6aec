"""The four jobs: validate a recipe, train it, evaluate an output directory, predict with one.

Order matters: recipe -> data -> labels -> tokenizer/config are all checked before any weights load,
so a bad input costs seconds, not a model download.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .card import ADAPTER_CONFIG, STRATEGY_FILE, write_card
from .config import Recipe, load_recipe
from .distributed import check_launch
from .distributed import configure as configure_parallel
from .errors import DataError, FinetuneError, RecipeError, close_matches
from .hub import ensure_hub_mode
from .interrupt import NOTE_FILE, Interrupted, StopOnSignal, write_note
from .mfu import training_flops_per_token
from .outputs import CURVES_FILE, plot_curves, write_environment
from .tasks import get_task
from .trainer import (
    PARTIAL_PREFIX,
    RECIPE_FILE,
    TRAINER_STATE,
    FinetuneTrainer,
    complete_checkpoints,
    recipe_header,
    remove_partial,
)

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


def make_task(recipe: Recipe):
    return get_task(recipe.task.name).task_class(recipe)


def prepare(recipe: Recipe, stage: str = "train") -> Prepared:
    """Load and check the data, settle labels, resolve tokenizer and model config. No weights."""
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
    summary = {
        "task": recipe.task.name,
        "model": recipe.model.name_or_path,
        "data": task.source.description,
        "splits": {name: len(ds) for name, ds in raw.items()},
    }
    summary.update(task.describe())
    prepared = Prepared(recipe, task, raw, tokenizer, model_config, summary)
    prepared.plan = strategy_plan(recipe, _with_peft(recipe, _meta_model(prepared)))
    summary["strategy"] = prepared.plan.description
    summary["trainable_params"] = prepared.plan.trainable_params
    summary["total_params"] = prepared.plan.total_params
    return prepared


def _meta_model(prepared: Prepared):
    """The task model on the ``meta`` device: its structure and sizes, no weights and no memory."""
    import torch

    with torch.device("meta"):
        return prepared.task.auto_model_class.from_config(
            prepared.model_config, trust_remote_code=prepared.recipe.model.trust_remote_code
        )


def _with_peft(recipe: Recipe, model):
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
    return prepare(recipe, stage="train").plan


def validate(recipe: Recipe) -> dict[str, Any]:
    """`hf-finetune validate`: the whole pre-training path, without loading weights."""
    return prepare(recipe, stage="validate").summary


def load_tokenizer(recipe: Recipe, **kwargs):
    from transformers import AutoTokenizer

    name = recipe.model.tokenizer_name_or_path or recipe.model.name_or_path
    field_name = (
        "model.tokenizer_name_or_path" if recipe.model.tokenizer_name_or_path else "model.name_or_path"
    )
    try:
        return AutoTokenizer.from_pretrained(
            name,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        _refuse_remote_code(recipe, name, exc)
        raise RecipeError(
            field_name, f"could not load a tokenizer from {name!r}: {_first_line(exc)}"
        ) from None


def load_model_config(recipe: Recipe, overrides: dict[str, Any]):
    """The checkpoint's config with the task's settings (labels, problem type) and the recipe's
    ``model.config_overrides``; an override of an attribute the config does not have is an error."""
    from transformers import AutoConfig

    name = recipe.model.name_or_path
    try:
        config = AutoConfig.from_pretrained(
            name,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            **overrides,
        )
    except (OSError, ValueError) as exc:
        _refuse_remote_code(recipe, name, exc)
        hint = (
            " It is neither a local model directory nor a cached Hub model; check the id, or run online once."
            if not Path(name).exists()
            else ""
        )
        raise RecipeError(
            "model.name_or_path", f"could not load a model config from {name!r}: {_first_line(exc)}.{hint}"
        ) from None
    for key, value in recipe.model.config_overrides.items():
        where = f"model.config_overrides.{key}"
        if key in overrides:
            raise RecipeError(where, f"is set by the task from the `task` section ({key}); set it there.")
        if not hasattr(config, key):
            known = [k for k in config.to_dict() if not k.startswith("_")]
            raise RecipeError(
                where, f"{type(config).__name__} has no attribute {key!r}{close_matches(key, known)}."
            )
        setattr(config, key, value)
    return config


def _refuse_remote_code(recipe: Recipe, name: str, exc: Exception) -> None:
    """The error for a checkpoint whose classes are Python code in its repository, run only on request."""
    if "trust_remote_code" in str(exc) and not recipe.model.trust_remote_code:
        raise RecipeError(
            "model.trust_remote_code",
            f"{name!r} needs its own Python code (a custom architecture in the checkpoint repository), and "
            "remote code is off. Read that code, then set `model.trust_remote_code: true` to run it.",
        ) from None


_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_weight_files(recipe: Recipe) -> None:
    """A local checkpoint must have safetensors weights unless `model.allow_pickle` is set.

    (A Hub checkpoint is held to the same rule when it loads: `use_safetensors` in `_load_model`.)
    """
    path = Path(recipe.model.name_or_path)
    if not path.is_dir():
        return
    names = {p.name for p in path.iterdir()}
    if any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        return
    pickled = sorted(names & set(_PICKLE_WEIGHTS)) or sorted(n for n in names if n.endswith((".bin", ".pt")))
    if pickled and not recipe.model.allow_pickle:
        raise RecipeError(
            "model.allow_pickle",
            f"{path} has only pickle weights ({', '.join(pickled)}), and unpickling a file can run code. "
            "Convert them to safetensors, or set `model.allow_pickle: true` if you trust the checkpoint.",
        )
    if not pickled:
        raise RecipeError(
            "model.name_or_path",
            f"{path} has a config but no model weights (model.safetensors); give a directory saved with "
            "`save_pretrained`, or a Hub id.",
        )


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]


def _load_model(prepared: Prepared):
    recipe = prepared.recipe
    try:
        return prepared.task.auto_model_class.from_pretrained(
            recipe.model.name_or_path,
            config=prepared.model_config,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            use_safetensors=None if recipe.model.allow_pickle else True,
        )
    except OSError as exc:
        if recipe.model.allow_pickle or "safetensors" not in str(exc):
            raise
        raise RecipeError(
            "model.allow_pickle",
            f"{recipe.model.name_or_path} has no safetensors weights ({_first_line(exc)}). Loading its pickle "
            "weights can run code: set `model.allow_pickle: true` only if you trust the checkpoint.",
        ) from None


def _eval_datasets(recipe: Recipe, tokenised) -> Any:
    splits = recipe.data.eval_splits
    if not splits:
        return None
    if len(splits) == 1:
        return tokenised[splits[0]]
    return {split: tokenised[split] for split in splits}


def train(recipe: Recipe, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune as the recipe says; returns the final metrics (also in all_results.json).

    ``callbacks``: extra `TrainerCallback`s (`hf-finetune tune` reports each evaluation to its study with one).
    """
    from transformers import set_seed

    started = time.time()
    args = recipe.training
    resume_from = resume_point(recipe)  # also refuses an output dir that holds another run
    if recipe.hub.push:  # a missing token or offline mode fails now, not after training
        from .publish import check_can_push

        check_can_push()
    check_launch(args)  # the world size the launcher started; sets up the process group
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

    set_seed(args.seed)  # before the task head is initialised
    model = _with_peft(recipe, _load_model(prepared))
    plan_ = strategy_plan(recipe, model)
    plan_.apply(model)
    logger.info("strategy: %s", plan_.summary())
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
        output_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_partial(output_dir)
        if removed:
            logger.info("removed the unfinished checkpoint saves %s", ", ".join(removed))
        if task.source is not None and task.source.mirror_root and recipe.data.mirror is None:
            recipe.data.mirror = task.source.mirror_root  # eval/predict find the same data later
        recipe.save(output_dir / RECIPE_FILE, header=recipe_header(recipe))
        write_environment(output_dir)
        (output_dir / STRATEGY_FILE).write_text(json.dumps(plan_.to_dict(), indent=2) + "\n")

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
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        recipe=recipe,
        strategy_plan=plan_,
    )
    if resume_from is not None:
        logger.info("resuming from %s", resume_from)
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
    trainer.save_metrics("train", {**train_metrics, "strategy": plan_.description})

    eval_metrics = _evaluate_splits(trainer, recipe, tokenised, prepared.raw)
    if eval_metrics:
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
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
        if recipe.hub.push:
            _push_after_training(recipe, output_dir)
    results_file = output_dir / "all_results.json"
    if trainer.is_world_process_zero() and results_file.is_file():
        return json.loads(results_file.read_text())
    # the other processes never read it: the main process may be rewriting it at this moment
    return {**train_metrics, **eval_metrics}


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
    if entries and RECIPE_FILE not in entries:
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
        before = _flatten(load_recipe(saved).to_dict())
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


def _push_after_training(recipe: Recipe, output_dir: Path) -> None:
    from .publish import push

    hub = recipe.hub
    try:
        result = push(output_dir, hub.repo_id, private=hub.private, revision=hub.revision, merge=hub.merge)
    except FinetuneError as exc:
        retry = f"hf-finetune push {output_dir} --repo-id {hub.repo_id}" + (" --merge" if hub.merge else "")
        raise FinetuneError(
            f"{exc} The trained model is saved in {output_dir}; retry with `{retry}`."
        ) from None
    logger.info("pushed to %s: %s", hub.repo_id, result["commit_url"])


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


def _evaluate_splits(trainer, recipe: Recipe, tokenised, raw) -> dict[str, Any]:
    splits = recipe.data.eval_splits
    metrics: dict[str, Any] = {}
    for split in splits:
        prefix = "eval" if len(splits) == 1 else f"eval_{split}"
        result = trainer.evaluate(eval_dataset=tokenised[split], metric_key_prefix=prefix)
        result[f"{prefix}_samples"] = len(raw[split])  # examples, not features (QA windows)
        metrics.update(result)
    return metrics


# ------------------------------------------------------------------------------------------------
# Using an output directory
# ------------------------------------------------------------------------------------------------
def check_output_dir(output_dir: Path) -> None:
    """A finished `hf-finetune train` output directory: recipe.yaml and a saved model, else FinetuneError."""
    if not output_dir.is_dir():
        raise FinetuneError(
            f"{output_dir}: no such output directory; give the `training.output_dir` of a "
            "finished `hf-finetune train` run."
        )
    if not (output_dir / RECIPE_FILE).is_file():
        raise FinetuneError(
            f"{output_dir}: has no {RECIPE_FILE}, so it is not an hf-finetune output directory "
            "(train one with `hf-finetune train RECIPE`)."
        )
    if not (output_dir / "config.json").is_file():
        raise FinetuneError(
            f"{output_dir}: has no saved model (config.json); the training run did not finish. "
            "Use one of its checkpoint-* directories, or finish the run with "
            f"`hf-finetune train {output_dir / RECIPE_FILE} --resume`."
        )


def load_output_recipe(output_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    recipe_file = output_dir / RECIPE_FILE
    # The saved model replaces the base checkpoint; the rest of the recipe (data, labels, metric) is the run's.
    recipe = load_recipe(recipe_file, [*overrides, f"model.name_or_path={output_dir}"])
    recipe.model.tokenizer_name_or_path = None
    return recipe


def _restore_task(output_dir: Path, recipe: Recipe):
    """The task with the saved label maps, and the tokenizer: no weights yet."""
    from transformers import AutoConfig, AutoTokenizer

    ensure_hub_mode()
    task = make_task(recipe)
    task.restore(AutoConfig.from_pretrained(output_dir))
    return task, AutoTokenizer.from_pretrained(output_dir)


def is_adapter_dir(output_dir: Path) -> bool:
    return (Path(output_dir) / ADAPTER_CONFIG).is_file()


def _restore_model(output_dir: Path, recipe: Recipe, task):
    """The trained model: a full checkpoint, or the base model + the peft adapter (with its head)."""
    import torch

    if is_adapter_dir(output_dir):
        from peft import PeftModel
        from transformers import AutoConfig

        base_name = json.loads((output_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        base = task.auto_model_class.from_pretrained(
            base_name, config=AutoConfig.from_pretrained(output_dir), revision=recipe.model.revision
        )
        model = PeftModel.from_pretrained(base, output_dir)
    else:
        model = task.auto_model_class.from_pretrained(output_dir)
    if torch.cuda.is_available() and not recipe.training.use_cpu:
        model.to("cuda")
    return model


def evaluate_output(
    output_dir: str | Path, split: str | None = None, overrides=(), batch_size: int | None = None
):
    """Re-evaluate a trained model on a split of the recipe's data; writes eval_<split>_results.json."""
    import tempfile

    from transformers import TrainingArguments

    output_dir = Path(output_dir)
    recipe = load_output_recipe(output_dir, overrides)
    split = split or (recipe.data.eval_splits[0] if recipe.data.eval_splits else None)
    if split is None:
        raise RecipeError("data.eval_split", "the recipe names no evaluation split; pass --split NAME.")
    recipe.data.eval_split = split
    if recipe.data.test_split == split:
        recipe.data.test_split = None  # evaluating it means it has labels
    task, tokenizer = _restore_task(output_dir, recipe)
    raw = task.load([split])
    task.prepare(raw)  # checks columns and label values against the saved label maps
    data = task.preprocess(raw, tokenizer)[split]
    model = _restore_model(output_dir, recipe, task)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_eval_batch_size=batch_size or recipe.training.per_device_eval_batch_size,
            report_to="none",
            use_cpu=recipe.training.use_cpu,
            bf16=recipe.training.bf16,  # the same autocast as the evaluation during training
            fp16=recipe.training.fp16,
            bf16_full_eval=recipe.training.bf16_full_eval,
        )
        trainer = FinetuneTrainer(
            model=model,
            args=args,
            processing_class=tokenizer,
            data_collator=task.data_collator(tokenizer, args),
            compute_metrics=task.compute_metrics(),
            preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        )
        metrics = trainer.evaluate(eval_dataset=data, metric_key_prefix="eval")
    metrics["eval_samples"] = len(raw[split])  # examples, not features (QA windows)
    metrics["split"] = split
    (output_dir / f"eval_{split}_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def predict_output(
    output_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    batch_size: int = 32,
    overrides=(),
) -> int:
    """Read JSON Lines, write one JSON object per line: the input fields plus label and score."""
    import os

    output_dir, input_path, output_path = Path(output_dir), Path(input_path), Path(output_path)
    recipe = load_output_recipe(output_dir, overrides)
    records = read_jsonl(input_path)
    task, tokenizer = _restore_task(output_dir, recipe)
    task.check_inputs(records, str(input_path))
    model = _restore_model(output_dir, recipe, task)
    results = task.predict(model, tokenizer, records, batch_size, where=str(input_path))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(output_path.name + ".partial")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in results:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, output_path)  # never leave a half-written output file
    return len(results)


def export_merged(output_dir: str | Path, target: str | Path) -> Path:
    """`hf-finetune export --merge`: fold a LoRA/IA3 adapter (and its head) into a standalone model directory.

    The result loads with plain ``AutoModelFor...from_pretrained`` and works with `eval` and `predict`. It is
    written next to the target and renamed into place, so a failure leaves nothing half-written.
    """
    import os
    import shutil

    output_dir, target = Path(output_dir), Path(target)
    recipe = load_output_recipe(output_dir)
    if not is_adapter_dir(output_dir):
        raise FinetuneError(
            f"{output_dir}: holds a full model, not a peft adapter ({ADAPTER_CONFIG} missing); it is standalone already."
        )
    if target.exists() and any(target.iterdir()):
        raise FinetuneError(f"--output {target}: exists and is not empty; give a new directory.")
    saved = load_recipe(output_dir / RECIPE_FILE)
    if saved.peft.method not in ("lora", "ia3"):
        raise FinetuneError(
            f"{output_dir}: a {saved.peft.method} adapter adds virtual tokens at run time and cannot be merged "
            "into the weights; use the adapter directory with `eval` and `predict`."
        )
    task, tokenizer = _restore_task(output_dir, recipe)
    model = _restore_model(output_dir, recipe, task).merge_and_unload()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    saved.peft = type(saved.peft)()  # the merged model is a plain one
    saved.model.name_or_path = str(target.absolute())
    saved.save(partial / RECIPE_FILE, header=f"# Merged from the adapter in {output_dir.absolute()}\n")
    if target.exists():
        target.rmdir()
    os.replace(partial, target)
    return target


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"--input: file not found: {path}. Give a JSON Lines file, one object per line.")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {number}: not valid JSON ({exc.msg}); each line must be one JSON object."
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}.")
            records.append(record)
    if not records:
        raise DataError(f"{path}: no input lines; give one JSON object per line.")
    return records
