"""The one Trainer: `transformers.Trainer` with a recipe attached. Public hooks only."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .errors import RecipeError
from .outputs import PARTIAL_PREFIX, RECIPE_FILE, TRAINER_STATE
from .strategies.peft import is_peft_model

# A checkpoint is written under PARTIAL_PREFIX and renamed to checkpoint-N once complete; the name never
# matches transformers' checkpoint pattern, so resume and rotation never see a half-written one.


class FinetuneTrainer(Trainer):
    """A `Trainer` that knows the recipe it runs.

    Every directory it saves a model to (the final output and each ``checkpoint-N``) also gets the
    resolved ``recipe.yaml``, so `hf-finetune eval` and `predict` work on any of them.
    The strategy plugs in through public hooks, not a custom loop: `create_optimizer` builds the
    parameter groups of the strategy plan (layer-wise learning rates, head multiplier), and gradual
    unfreezing is a callback whose not-yet-unfrozen gradients `training_step` drops after each backward.
    Checkpoints are written to a ``.partial-checkpoint-N`` directory and renamed when complete.
    A task's own loss (class weights, focal loss: `hf_finetune.losses`) comes in as the Trainer's
    ``compute_loss_func``: the Trainer then counts the step's labels (``num_items_in_batch``) and neither
    divides that loss by the accumulation steps nor leaves it to DDP's averaging, as the loss is normalised
    by that count already.
    """

    _staging_dir: Path | None = None

    def __init__(
        self, *args, recipe=None, strategy_plan=None, distiller=None, eval_by_length: bool = False, **kwargs
    ):
        from .strategies.unfreezing import GradualUnfreezing

        self.recipe = recipe
        #: evaluate in batches of similar lengths (longest first), the metrics computed in the rows' order
        self.eval_by_length = eval_by_length
        self._eval_order = None  # the row order of the evaluation running now, under eval_by_length
        if eval_by_length and kwargs.get("compute_metrics") is not None:
            kwargs["compute_metrics"] = self._in_row_order(kwargs["compute_metrics"])
        self.distiller = distiller  # strategy.distill: `strategies.distill.Distiller`, else None
        self.strategy_plan = strategy_plan
        self.unfreezing = (
            GradualUnfreezing(strategy_plan)
            if strategy_plan is not None and strategy_plan.unfreeze_every is not None
            else None
        )
        callbacks = list(kwargs.pop("callbacks", None) or [])
        self.token_count = _TokensThisRun()
        callbacks.append(self.token_count)
        if self.unfreezing is not None:
            callbacks.append(self.unfreezing)
        super().__init__(*args, callbacks=callbacks or None, **kwargs)
        if self.model_accepts_loss_kwargs and not loss_counts_items(self.model):
            # transformers takes a forward(**kwargs) to mean that the loss divides by the batch's label count
            # (num_items_in_batch), and then neither divides it by the gradient-accumulation steps nor leaves it
            # to DDP's averaging (it multiplies it by the world size). Encoder heads compute a local mean
            # (CrossEntropyLoss), so that would scale the gradients by accumulation steps x processes.
            self.model_accepts_loss_kwargs = False
        if distiller is not None:
            if self.compute_loss_func is None:  # without it the Trainer counts no num_items_in_batch
                raise ValueError("a distiller needs the task's hard loss as compute_loss_func")
            self.loss_is_scaled_for_ga = True  # both terms divide by the step's num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training batches under `strategy.distill`: the teacher's soft targets mixed with the hard loss
        (`strategies.distill`); evaluation batches, and every batch without it: the Trainer's own loss."""
        if self.distiller is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = self.distiller.loss(
            model, inputs, num_items_in_batch, autocast=self.accelerator.autocast
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as the Trainer does for a loss normalised by the global item count: DDP averages the gradients
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        if self.distiller is not None and "loss" in logs:  # a training log: the two terms of the loss
            logs = {**logs, **self.distiller.take_logs(self.args.gradient_accumulation_steps)}
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        """The strategy's parameter groups (trainable parameters only), each with its own lr and decay.

        Runs where the Trainer creates its optimizer; with delayed creation (FSDP) ``model`` is the
        Accelerate-wrapped model, so the groups are looked up on the unwrapped one (same tensors).
        """
        plan = self.strategy_plan
        if self.optimizer is not None or plan is None or not plan.custom_lr:
            return super().create_optimizer(model)
        from transformers.trainer_optimizer import is_optimizer_factory

        opt_model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(
            optimizer_kwargs
        ):
            raise RecipeError(
                "training.optim",
                f"{self.args.optim} builds its own parameter groups, so it cannot take the strategy's per-group "
                "learning rates; use an AdamW- or SGD-style optimizer, or drop `strategy.layerwise_lr_decay` "
                "and `strategy.head_lr_multiplier`.",
            )
        groups = plan.optimizer_groups(self.accelerator.unwrap_model(opt_model))
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.unfreezing is not None:
            # after backward (and DDP's all-reduce), before clipping and the optimizer step
            self.unfreezing.drop_held_gradients()
        return loss

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation reads its rows in order, also under ``train_sampling_strategy: group_by_length`` (which
        transformers applies to evaluation too, shuffled): tasks map prediction rows back to their examples
        (question answering's windows, text classification's windows of long documents). Under
        ``eval_by_length`` it reads them longest first, and `_in_row_order` puts the predictions back."""
        self._eval_order = None
        columns = getattr(eval_dataset, "column_names", None) or ()
        if self.eval_by_length and self.args.world_size <= 1 and "input_ids" in columns:
            import numpy as np

            lengths = np.array([len(ids) for ids in eval_dataset["input_ids"]])
            self._eval_order = np.argsort(-lengths, kind="stable")
            return [int(i) for i in self._eval_order]
        if str(self.args.train_sampling_strategy) != "group_by_length":
            return super()._get_eval_sampler(eval_dataset)
        from torch.utils.data import SequentialSampler
        from transformers.trainer_utils import has_length

        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def _in_row_order(self, compute_metrics):
        """``compute_metrics`` on predictions and labels put back in the dataset's row order (they come in the
        length order of `_get_eval_sampler`); the metrics, and what a task keeps of them, are the same."""
        from transformers import EvalPrediction

        def unsort(values):
            if values is None or self._eval_order is None:
                return values
            if isinstance(values, (tuple, list)):
                return type(values)(unsort(v) for v in values)
            restored = values.copy()
            restored[self._eval_order] = values
            return restored

        def in_order(prediction):
            return compute_metrics(
                EvalPrediction(
                    predictions=unsort(prediction.predictions),
                    label_ids=unsort(prediction.label_ids),
                    inputs=unsort(prediction.inputs),
                    losses=unsort(prediction.losses),
                )
            )

        return in_order

    def _get_output_dir(self, trial) -> str:
        if self._staging_dir is not None:  # inside _save_checkpoint: everything goes to the staging dir
            return str(self._staging_dir)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written into a staging directory and renamed into place when complete.

        A process killed during the save leaves only the staging directory behind (ignored by resume and
        by checkpoint rotation, deleted by the next save or resume); the previous checkpoints are intact.
        """
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / f"{PARTIAL_PREFIX}{name}"
        if self.args.should_save and staging.exists():
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            # the Trainer saves into <staging>/checkpoint-N; its rotation there sees only this checkpoint
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        best = self.state.best_model_checkpoint
        if best and Path(best).parent == staging:  # the best checkpoint is this one: record its final path
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            if self.args.should_save:
                self.state.save_to_json(str(staging / name / TRAINER_STATE))
        self.accelerator.wait_for_everyone()  # every rank has written its part (RNG states, shards)
        if self.args.should_save:
            publish_dir(staging / name, run_dir / name)
            shutil.rmtree(staging, ignore_errors=True)  # empty unless something else wrote there
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            target = Path(output_dir or self.args.output_dir)
            target.mkdir(parents=True, exist_ok=True)
            if is_peft_model(self.model):
                # a peft adapter dir: also the model config, with the label maps, for eval/predict/export
                self.model.get_base_model().config.save_pretrained(target)
            if self.recipe is not None:
                self.recipe.save(target / RECIPE_FILE, header=recipe_header(self.recipe))


@contextmanager
def eval_trainer(
    task,
    model,
    tokenizer,
    batch_size: int,
    *,
    use_cpu: bool = True,
    bf16: bool = False,
    fp16: bool = False,
    bf16_full_eval: bool = False,
    full_logits: bool = False,
    progress: bool = False,
    by_length: bool = False,
) -> Iterator[FinetuneTrainer]:
    """A `FinetuneTrainer` that only evaluates or predicts ``model`` with ``task``'s collator and metrics, its
    scratch output dir removed on exit. The defaults are fp32 on the CPU; ``full_logits`` keeps the model's
    whole outputs (no `preprocess_logits_for_metrics`), as a parity check compares them; ``progress`` shows
    the progress bar; ``by_length`` evaluates in batches of similar lengths (`FinetuneTrainer.eval_by_length`)."""
    from transformers import TrainingArguments

    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_eval_batch_size=batch_size,
            report_to="none",
            use_cpu=use_cpu,
            bf16=bf16,
            fp16=fp16,
            bf16_full_eval=bf16_full_eval,
            disable_tqdm=not progress,
        )
        yield FinetuneTrainer(
            model=model,
            args=args,
            processing_class=tokenizer,
            data_collator=task.data_collator(tokenizer, args),
            compute_metrics=task.compute_metrics(),
            preprocess_logits_for_metrics=None if full_logits else task.preprocess_logits_for_metrics(),
            eval_by_length=by_length,
        )


def evaluation_only(args):
    """A copy of the `TrainingArguments` ``args`` for a trainer that trains nothing and evaluates when asked,
    in fp32 (no mixed precision, no evaluation or saving schedule, no best checkpoint to load). It keeps the
    output dir, reporting and batch sizes of ``args``."""
    args = copy.copy(args)
    args.bf16 = args.fp16 = args.bf16_full_eval = args.fp16_full_eval = False
    args.mixed_precision = "no"  # what the AcceleratorState reads, beside the two flags
    args.eval_strategy = args.save_strategy = "no"
    args.load_best_model_at_end = False
    return args


def publish_dir(source: Path, target: Path) -> None:
    """Move the complete directory ``source`` to ``target`` with one rename (replacing an older ``target``)."""
    old = None
    if target.exists():  # a rename cannot replace a non-empty directory: move the old one aside first
        old = target.with_name(f"{PARTIAL_PREFIX}old-{target.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories of ``output_dir`` that hold a trainer state, oldest step first."""
    found = []
    for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name[len(PREFIX_CHECKPOINT_DIR) + 1 :]
        if step.isdigit() and path.is_dir() and (path / TRAINER_STATE).is_file():
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def remove_partial(output_dir: Path) -> list[str]:
    """Delete the staging directories that killed saves left behind; returns their names."""
    removed = []
    for path in Path(output_dir).glob(f"{PARTIAL_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def loss_counts_items(model) -> bool:
    """Whether ``model``'s loss normalises by ``num_items_in_batch`` (the Trainer's global label count).

    transformers models that do route the loss through ``self.loss_function(..., **kwargs)`` (causal and
    masked LM heads); the sequence-classification, token-classification and question-answering heads
    of BERT-style encoders call ``CrossEntropyLoss()`` and ignore it. A model may say so itself with an
    ``accepts_loss_kwargs`` attribute; when the source cannot be read, transformers' decision stands.
    """
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    declared = getattr(base, "accepts_loss_kwargs", None)
    if declared is not None:
        return bool(declared)
    try:
        source = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return True
    return "loss_function" in source


class _TokensThisRun(TrainerCallback):
    """Tokens trained on by this `train()` call (the Trainer's running count also covers resumed steps)."""

    def __init__(self) -> None:
        self.start = 0
        self.state = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.state = state.num_input_tokens_seen, state

    @property
    def tokens(self) -> int:
        return 0 if self.state is None else self.state.num_input_tokens_seen - self.start


def recipe_header(recipe) -> str:
    from . import __version__

    return (
        f"# Resolved recipe written by hf-finetune {__version__}.\n"
        f"# Reproduce the run:  hf-finetune train {Path(recipe.training.output_dir) / RECIPE_FILE}\n"
    )
