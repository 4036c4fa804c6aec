"""What a trial's own process runs (`python -m hf_finetune.child train ... --report URL STUDY TRIAL METRIC`): the
training of its recipe, each evaluation reported to the study at step = percent of the schedule done, and a
stop when the pruner says so.
"""

from __future__ import annotations

import sys

from ..config import Recipe
from ..tasks.base import score_key

#: exit code of a trial process that the pruner stopped
EXIT_PRUNED = 3


def report_callback(trial, recipe: Recipe, metric: str | None):
    """A TrainerCallback: each evaluation during training goes to the study at step = percent of the
    schedule done; when the pruner says so, training stops by raising optuna.TrialPruned."""
    import optuna
    from transformers import TrainerCallback

    class ReportToStudy(TrainerCallback):
        finished = False
        last_step = -1

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self.finished or not metrics:
                return
            key = score_key(recipe, metrics, metric)
            if key not in metrics:  # another eval split (MNLI mismatched): the first split decides
                return
            step = round(100 * state.global_step / max(state.max_steps, 1))
            if step <= self.last_step:  # two evaluations in one percent: the first one stands
                return
            self.last_step = step
            trial.report(float(metrics[key]), step)
            # a run that stops at this evaluation anyway (its recipe's early stopping) finishes, not pruned
            stopping = control.should_training_stop
            if state.global_step < state.max_steps and not stopping and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {step}% of its schedule ({key} {metrics[key]:.4f})")

        def on_train_end(self, args, state, control, **kwargs):
            self.finished = True  # the final evaluation after training is the score, not a report

    return ReportToStudy()


def train_reporting(recipe: Recipe, storage_url: str, study: str, number: int, metric: str | None) -> int:
    """Train ``recipe``, reporting to trial ``number`` of study ``study`` at ``storage_url``; 0, or EXIT_PRUNED
    when the pruner stopped it. A FinetuneError propagates (the child prints it)."""
    import optuna

    from ..pipeline import train
    from .study import load_trial

    trial = load_trial(storage_url, study, number)
    try:
        train(recipe, callbacks=[report_callback(trial, recipe, metric)])
    except optuna.TrialPruned as exc:
        print(f"hf-finetune: trial {number} {exc}", file=sys.stderr)
        return EXIT_PRUNED
    return 0
