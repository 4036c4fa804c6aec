"""The optuna study of a search: its storage (SQLite in the tune dir), the pruner (the median rule at the
same percent of each trial's schedule), opening or continuing it, the lock on the tune dir, and the status
of each trial (ok, pruned, failed; interrupted and budget trials are queued to run again).
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from ..errors import FinetuneError
from ..outputs import drop_weights
from .setup import LOCK, STUDY_DB, Tune, trial_dir
from .space import PrunerSettings

logger = logging.getLogger("hf_finetune")

STUDY_NAME = "hf-finetune-tune"
#: a trial stopped (budget, signal) this many times in a row is recorded as failed instead of queued again
MAX_ATTEMPTS = 3
#: trial statuses that count towards --trials; `interrupted` and `budget` trials run again
COUNTED = ("ok", "pruned", "failed")


# ------------------------------------------------------------------------------------------------
# Storage and pruner
# ------------------------------------------------------------------------------------------------
def storage_url(tune: Tune) -> str:
    return f"sqlite:///{(tune.output_dir / STUDY_DB).resolve()}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage; the search and its trials' processes write to it at the same time, so a
    writer waits up to two minutes for the database lock."""
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def make_pruner(settings: PrunerSettings | None) -> optuna.pruners.BasePruner:
    """The median stopping rule at the same point of each trial's own schedule (percent of its steps);
    None: no pruning."""
    if settings is None:
        return optuna.pruners.NopPruner()
    return MedianAtProgressPruner(settings.n_startup_trials, settings.n_warmup_steps, settings.n_min_trials)


class MedianAtProgressPruner(optuna.pruners.BasePruner):
    """Prune when the trial's best score so far is worse than the median, over the finished trials, of
    each one's latest score at or before the same percent of its schedule.

    optuna's MedianPruner compares trials only at the very same step; trials of 2 and 8 epochs evaluate
    at 50% / 100% and at 12.5% steps, so they would meet only at 100%, when there is nothing to save.
    Never prunes at 100% (the trial has finished training).
    """

    def __init__(self, n_startup_trials: int, n_warmup_steps: int, n_min_trials: int) -> None:
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.n_min_trials = n_min_trials

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps or step >= 100:
            return False
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(finished) < self.n_startup_trials:
            return False
        others = []
        for other in finished:
            earlier = [s for s in other.intermediate_values if s <= step]
            if earlier and math.isfinite(other.intermediate_values[max(earlier)]):
                others.append(other.intermediate_values[max(earlier)])
        if len(others) < self.n_min_trials:
            return False
        mine = [v for s, v in trial.intermediate_values.items() if s <= step and math.isfinite(v)]
        if not mine:
            return True  # nothing but NaN so far
        median = statistics.median(others)
        if study.direction == StudyDirection.MAXIMIZE:
            return max(mine) < median
        return min(mine) > median


def load_trial(url: str, number: int) -> optuna.trial.Trial:
    """Trial ``number`` of the study at ``url``, as a trial process reports to it (with the study's pruner)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    summary = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    settings = PrunerSettings.from_dict(summary.user_attrs.get("pruner"))
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=make_pruner(settings))
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(STUDY_NAME), number
    )
    return optuna.trial.Trial(study, trial_id)


# ------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------
def open_study(tune: Tune) -> optuna.Study:
    """Create the study, or continue the one in the tune dir (which must be of the same search)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune.output_dir.mkdir(parents=True, exist_ok=True)
    storage = tune.storage = open_storage(storage_url(tune))
    exists = STUDY_NAME in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if not exists and any(p for p in tune.output_dir.iterdir() if p.name not in (STUDY_DB, LOCK)):
        raise FinetuneError(
            f"--output-dir {tune.output_dir}: is not empty and holds no search; give a new or empty directory."
        )
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction=tune.direction,
        pruner=make_pruner(tune.space.pruner),
        load_if_exists=True,
    )
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        study.set_user_attr("fingerprint", tune.fingerprint)
        pruner = tune.space.pruner
        study.set_user_attr("pruner", None if pruner is None else pruner.to_dict())
        study.set_user_attr("metric", tune.metric)
        for i, start in enumerate(tune.space.start_with):
            params = tune.space.fixed_params(
                tune.start_values(start), tune.base_value, tune.layers, f"start_with[{i}]", start == "recipe"
            )
            study.enqueue_trial(params, user_attrs={"start": "recipe" if start == "recipe" else "given"})
    elif saved != tune.fingerprint:
        now = tune.fingerprint
        changed = [k for k in {**saved, **now} if saved.get(k) != now.get(k)]
        raise FinetuneError(
            f"--output-dir {tune.output_dir}: holds a search with another {', '.join(changed)}; continue it with "
            "the same recipe, overrides, space and options, or give a new --output-dir."
        )
    # a resumed search draws on from another seed: the sampler's RNG restarts, and must not repeat draws
    sampler = tune.space.sampler
    study.sampler = optuna.samplers.TPESampler(
        seed=tune.seed + len(study.trials),
        n_startup_trials=sampler.n_startup_trials,
        n_ei_candidates=sampler.n_ei_candidates,
        multivariate=sampler.multivariate,
        group=sampler.multivariate,  # conditional parameters: modelled jointly within each group
    )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # left running by a search that was killed (the lock says no other search is using the directory)
        logger.info("trial %d did not finish (its search was stopped); it runs again", trial.number)
        stop_trial(tune, study, trial.number, "interrupted", "its search was stopped (killed)")
    return study


def lock(tune: Tune):
    """An exclusive lock on the tune dir for this run (a second search there would corrupt the first);
    the open file that holds it: close it to release."""
    import fcntl

    tune.output_dir.mkdir(parents=True, exist_ok=True)
    handle = (tune.output_dir / LOCK).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise FinetuneError(
            f"--output-dir {tune.output_dir}: another `hf-finetune tune` is running on it; wait for it to "
            "end, or give another --output-dir."
        ) from None
    return handle


# ------------------------------------------------------------------------------------------------
# Trial status
# ------------------------------------------------------------------------------------------------
def set_attr(tune: Tune, study, number: int, key: str, value: Any) -> None:
    """Set a user attribute of trial ``number``, which another (maybe dead) process may have created."""
    storage = tune.storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number
    )
    optuna.trial.Trial(study, trial_id).set_user_attr(key, value)


def stop_trial(tune: Tune, study, number: int, status: str, error: str) -> str:
    """End running trial ``number`` as FAIL without a verdict on its values (`budget`, `interrupted`): they
    are queued to run again first, unless this was their MAX_ATTEMPTS-th stop, which makes it `failed`."""
    frozen = study.get_trials(deepcopy=False)[number]
    attempt = frozen.user_attrs.get("attempt", 1)
    if attempt >= MAX_ATTEMPTS:
        status, error = "failed", f"{error}; stopped {attempt} times in a row, so not queued again"
    set_attr(tune, study, number, "status", status)
    set_attr(tune, study, number, "error", error)
    study.tell(number, state=TrialState.FAIL)
    drop_weights(trial_dir(tune, number), tune.keep_models)
    if status != "failed":
        again = {"retry_of": number, "attempt": attempt + 1}
        if "start" in frozen.user_attrs:  # the baseline stays the baseline
            again["start"] = frozen.user_attrs["start"]
        study.enqueue_trial(dict(frozen.params), user_attrs=again)
    return status


def fail_trial(study, trial, error: str, wall: float) -> dict[str, Any]:
    """A verdict on the trial's values (an error, a refused combination): recorded, counted, not rerun."""
    trial.set_user_attr("status", "failed")
    trial.set_user_attr("error", error)
    study.tell(trial, state=TrialState.FAIL)
    return {"status": "failed", "error": error, "time_s": wall}


def status_of(trial) -> str:
    if trial.state == TrialState.COMPLETE:
        return "ok"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("status", "failed")
    return trial.state.name.lower()


def counted(study) -> int:
    return sum(status_of(t) in COUNTED for t in study.get_trials(deepcopy=False))
