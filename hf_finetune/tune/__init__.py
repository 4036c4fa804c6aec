"""`hf-finetune tune`: choose a recipe's strategy and Trainer settings from its validation score (optuna).

    hf-finetune tune recipes/glue/rte.yaml --trials 12 [--space recipes/tune/default-space.yaml]
                     [--budget-minutes 30] [--output-dir runs/tune/rte] [--trial-seeds 42 43]
                     [--confirm-seeds 1 2 3] [overrides]

With ``--trial-seeds 42 43`` a trial trains once per seed (in turn, each in its own process) and its score is
the mean: on a small dev set one seed's score can differ from the next by more than the settings do, and a
search that selects on a single seed picks a lucky seed as often as a better recipe. The first seed's run
reports to the pruner; a pruned trial does not train the other seeds.

With ``--folds K`` a trial trains once per fold of the training split and its score is the mean over the
folds; the pruner sees the running mean. ``--workers N`` runs N trials at once, each worker its own process on
the study; ``--storage URL`` puts the study in any optuna storage (PostgreSQL, MySQL, SQLite, a journal file),
where ``--join`` adds workers from other machines, and ``tune report`` writes the outputs from the study.

Modules, bottom up: `space` (the search space file), `setup` (`Tune`, `prepare_tune`, the tune dir's
layout), `storage` (an optuna storage from a URL), `study` (the study, the pruner, heartbeats, trial status),
`trial` (what a trial's process runs), `report` (trials.jsonl, leaderboard.md, best_recipe.yaml,
importance.png, `tune report`), `confirm` (--confirm-seeds runs), `search` (`run_tune`, a worker's loop),
`workers` (--workers: the worker processes).
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
    report_from_study,
    trial_rows,
    write_outputs,
)
from .search import run_trial, run_tune
from .setup import (
    STUDY_NAME,
    Tune,
    prepare_tune,
    recipe_value,
    result_overrides,
    run_overrides,
    value_overrides,
)
from .space import Param, PrunerSettings, SamplerSettings, Space, load_space
from .storage import open_storage, shown_url
from .study import (
    COUNTED,
    MAX_ATTEMPTS,
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
    "open_storage",
    "open_study",
    "param_importances",
    "plot_importance",
    "prepare_tune",
    "recipe_value",
    "report_callback",
    "report_from_study",
    "result_overrides",
    "run_overrides",
    "run_trial",
    "run_tune",
    "shown_url",
    "status_of",
    "stop_trial",
    "trial_rows",
    "value_overrides",
    "write_outputs",
]
