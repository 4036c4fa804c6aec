"""Early stopping (`training.early_stopping`): what it monitors, checked before any weights load, the Trainer
callback that stops the run, and what the run records about it.

The recipe loader (`config.load`) makes the training settings fit: evaluations during training, a checkpoint at
each one and the best one loaded at the end. What is monitored is the task's headline metric (the one a bench
or a search scores a run by) unless `training.metric_for_best_model` names another; `settle` checks it
against the metrics the task's evaluation reports once the data has settled the labels (regression reports
Pearson, not accuracy), so a wrong name fails `validate`, not the first evaluation. The callback is
transformers' `EarlyStoppingCallback`, whose patience counter also survives an interruption and `--resume`.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import EarlyStoppingCallback

from .config.schema import Recipe, plain
from .errors import RecipeError, close_matches
from .outputs import finite

logger = logging.getLogger("hf_finetune")

#: what the patience counts when the recipe sets `eval_strategy: steps` without `eval_steps` of its own
DEFAULT_EVAL_STEPS = 0.1


def eval_key(metric: str) -> str:
    """The evaluation results key the Trainer compares for ``training.metric_for_best_model``."""
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def default_metric(recipe: Recipe) -> str:
    """The key monitored when the recipe names none: the task's headline metric, as far as the recipe alone
    tells (`settle` confirms it once the data has settled the labels)."""
    from .tasks.base import score_key

    return score_key(recipe, {})


# ------------------------------------------------------------------------------------------------
# Before any weights load
# ------------------------------------------------------------------------------------------------
def settle(recipe: Recipe, task: Any) -> str:
    """Check (and, when the recipe names none, choose) the monitored metric against what the prepared
    ``task``'s evaluation reports; sets it on ``recipe.training``. Returns the line `validate` shows."""
    args = recipe.training
    explicit = "metric_for_best_model" in recipe.training_fields
    keys = evaluation_keys(recipe, task)
    if keys is not None:
        if explicit:
            key = eval_key(args.metric_for_best_model)
            if key not in keys and not key.endswith("_loss"):
                raise RecipeError(
                    "training.metric_for_best_model",
                    f"{args.metric_for_best_model!r} is not among the metrics this run's evaluation reports"
                    f"{close_matches(key, keys)}; early stopping compares one of: {', '.join(sorted(keys))} "
                    "(or eval_loss).",
                )
        else:
            from .tasks.base import lower_is_better, score_key

            key = score_key(recipe, dict.fromkeys(keys, 0.0))
            if key not in keys:
                raise RecipeError(
                    "training.early_stopping",
                    f"monitors the task's headline metric, but this run's evaluation reports no "
                    f"{key.removeprefix('eval_')}; set `training.metric_for_best_model` to the metric to "
                    f"monitor, one of: {', '.join(sorted(keys))} (or eval_loss).",
                )
            args.metric_for_best_model = key
            if "greater_is_better" not in recipe.training_fields:
                args.greater_is_better = not lower_is_better(key)
    return describe(recipe)


def evaluation_keys(recipe: Recipe, task: Any) -> set[str] | None:
    """The ``eval_*`` metric keys an evaluation of this run reports (the task's metric modules run on a
    few made-up examples), or None when the task does not say which metrics it computes."""
    names = (task.describe() or {}).get("metrics")
    if not names:
        return None
    reported: set[str] = set()
    try:
        for name in names:
            reported.update(_probe(name))
    except Exception as exc:  # a metric that cannot be probed: the first evaluation will tell
        logger.debug("could not list the metrics of %s: %s", names, exc)
        return None
    splits = recipe.data.eval_splits
    prefixes = [f"eval_{split}_" for split in splits] if len(splits) > 1 else ["eval_"]
    return {prefix + name for prefix in prefixes for name in reported}


def _probe(name: str) -> list[str]:
    """The result names of the package's metric module ``name`` (computed on four made-up examples)."""
    from .metrics import load_metric

    module = load_metric(name)
    features = module.features[0] if isinstance(module.features, list) else module.features
    result = module.compute(**{column: _examples(feature) for column, feature in features.items()})
    return list(result)


def _examples(feature: Any) -> list[Any]:
    inner = getattr(feature, "feature", None)
    if inner is not None:  # a sequence per example: multi-hot rows, tag lists, lists of answers
        values = _examples(inner)
        return [values[i:] + values[:i] for i in range(4)]
    dtype = str(getattr(feature, "dtype", "string"))
    if dtype.startswith(("int", "uint")):
        return [0, 1, 1, 0]
    if dtype.startswith("float"):
        return [0.0, 1.0, 0.5, 0.25]
    return ["O", "O", "O", "O"]


def describe(recipe: Recipe) -> str:
    """What `validate` says about early stopping: the metric, the patience, the cadence."""
    config, args = recipe.early_stopping, recipe.training
    strategy = _name(args.eval_strategy)
    if strategy == "epoch":
        cadence = "every epoch"
    elif args.eval_steps is not None and args.eval_steps < 1:
        cadence = f"every {args.eval_steps:.0%} of the steps"
    else:
        cadence = f"every {args.eval_steps:g} steps"
    return (
        f"patience {config.patience} evaluations on {eval_key(args.metric_for_best_model)} "
        f"({'higher' if args.greater_is_better else 'lower'} is better, threshold {config.threshold:g}); "
        f"evaluates {cadence}, saves a checkpoint at each evaluation ({_name(args.save_strategy)}) and loads "
        "the best at the end"
    )


def _name(strategy: Any) -> str:
    return str(plain(strategy))


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
class EarlyStopping(EarlyStoppingCallback):
    """transformers' `EarlyStoppingCallback`, plus what a run needs of it: its patience counter restored on
    `--resume` (the Trainer saves it in each checkpoint's trainer_state.json, but restores it only with
    `restore_callback_states_from_checkpoint`), the step it stopped at, and no warning for the metrics of
    the other evaluation splits (the Trainer reports each split on its own)."""

    def __init__(self, early_stopping_patience: int = 3, early_stopping_threshold: float = 0.0):
        super().__init__(early_stopping_patience, early_stopping_threshold)
        self.stopped_at_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        attributes = (saved or {}).get("attributes") or {}
        self.early_stopping_patience_counter = attributes.get("early_stopping_patience_counter", 0)
        self.stopped_at_step = attributes.get("stopped_at_step")
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            # resumed from the checkpoint of the evaluation that decided to stop: stop again
            control.should_training_stop = True
        return control

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if eval_key(args.metric_for_best_model) not in metrics:
            return control  # another evaluation split's metrics (the Trainer reports each split on its own)
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if (
            self.early_stopping_patience_counter >= self.early_stopping_patience
            and self.stopped_at_step is None
        ):
            self.stopped_at_step = state.global_step
            logger.info(
                "early stopping: %s has not improved for %d evaluations; stopping at step %d of %d "
                "(best: %s at step %s)",
                eval_key(args.metric_for_best_model),
                self.early_stopping_patience_counter,
                state.global_step,
                state.max_steps,
                state.best_metric,
                state.best_global_step,
            )
        return control

    def state(self) -> dict:
        saved = super().state()
        saved["attributes"]["stopped_at_step"] = self.stopped_at_step
        return saved


def callback(recipe: Recipe) -> EarlyStopping | None:
    """The callback the recipe's `training.early_stopping` asks for, or None."""
    config = recipe.early_stopping
    if config is None:
        return None
    return EarlyStopping(config.patience, config.threshold)


def results(recipe: Recipe, trainer: Any) -> dict[str, Any]:
    """What all_results.json records about early stopping ({} without it): the settings and the monitored
    metric, whether and where the run stopped early, and the best evaluation (the model saved)."""
    config = recipe.early_stopping
    if config is None:
        return {}
    state, args = trainer.state, trainer.args
    found = next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStopping)), None)
    stopped_at = found.stopped_at_step if found is not None else None
    stopped = stopped_at is not None and stopped_at < state.max_steps
    return {
        "early_stopping": {
            "patience": config.patience,
            "threshold": config.threshold,
            "metric": eval_key(args.metric_for_best_model),
            "greater_is_better": bool(args.greater_is_better),
        },
        "stopped_early": stopped,
        "stopped_at_step": stopped_at if stopped else None,
        "scheduled_steps": state.max_steps,
        "best_step": state.best_global_step,
        "best_metric": finite(state.best_metric),
    }
