"""`hf-finetune tune`: choose a recipe's strategy and Trainer settings from its validation score (optuna).

    hf-finetune tune recipes/glue/rte.yaml --trials 12 [--space recipes/tune/default-space.yaml]
                     [--budget-minutes 30] [--output-dir runs/tune/rte] [--trial-seeds 42 43]
                     [--confirm-seeds 1 2 3] [overrides]

With ``--trial-seeds 42 43`` a trial trains once per seed (in turn, each in its own process) and its score is
the mean: on a small dev set one seed's score can differ from the next by more than the settings do, and a
search that selects on a single seed picks a lucky seed as often as a better recipe. The first seed's run
reports to the pruner; a pruned trial does not train the other seeds.

Modules, bottom up: `space` (the search space file), `setup` (`Tune`, `prepare_tune`, the tune dir's
layout), `study` (optuna storage, the pruner, trial status), `trial` (what a trial's process runs),
`report` (trials.jsonl, leaderboard.md, best_recipe.yaml, importance.png), `confirm` (--confirm-seeds runs),
`search` (`run_tune`, the loop).
"""

from .confirm import confirm, confirm_run
from .report import (
    baseline_row,
    best_row,
    changed_values,
    confirmation,
    format_leaderboard,
    param_importances,
    plot_importance,
    trial_rows,
    write_outputs,
)
from .search import run_trial, run_tune
from .setup import Tune, prepare_tune, recipe_value, result_overrides, run_overrides, value_overrides
from .space import Param, PrunerSettings, SamplerSettings, Space, load_space
from .study import (
    COUNTED,
    MAX_ATTEMPTS,
    STUDY_NAME,
    MedianAtProgressPruner,
    counted,
    make_pruner,
    open_study,
    status_of,
    stop_trial,
)
from .trial import EXIT_PRUNED, report_callback

__all__ = [
    "COUNTED",
    "EXIT_PRUNED",
    "MAX_ATTEMPTS",
    "STUDY_NAME",
    "MedianAtProgressPruner",
    "Param",
    "PrunerSettings",
    "SamplerSettings",
    "Space",
    "Tune",
    "baseline_row",
    "best_row",
    "changed_values",
    "confirm",
    "confirm_run",
    "confirmation",
    "counted",
    "format_leaderboard",
    "load_space",
    "make_pruner",
    "open_study",
    "param_importances",
    "plot_importance",
    "prepare_tune",
    "recipe_value",
    "report_callback",
    "result_overrides",
    "run_overrides",
    "run_trial",
    "run_tune",
    "status_of",
    "stop_trial",
    "trial_rows",
    "value_overrides",
    "write_outputs",
]
