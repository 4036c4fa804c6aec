"""The search loop: ask the study for a trial, train it (one child process per seed, `hf_finetune.launch`),
tell the study how it ended, redraw the outputs; until --trials count or --budget-minutes is spent.

Every trial is one `hf-finetune train` of the recipe with the trial's values laid over it, in its own
process: a fresh model, seeded (the recipe's training.seed) before its head is built, exactly as a plain run,
so `best_recipe.yaml` retrains to the best trial's score. The first seed's run reports every evaluation to
the study (step = percent of its own schedule) and stops when the median rule prunes it; a pruned trial
does not train its other seeds.
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import time
from typing import Any

from optuna.trial import TrialState

from ..errors import FinetuneError
from ..launch import ReportTo, progress_bar, run_training, sigterm_as_exit
from ..outputs import RESULTS_FILE, drop_weights, run_results
from ..tasks.base import score_key
from .confirm import confirm
from .report import best_row, trial_rows, write_outputs
from .setup import Tune, run_overrides, tracked, train_overrides, trial_dir
from .space import show
from .study import (
    COUNTED,
    counted,
    fail_trial,
    lock,
    open_study,
    set_attr,
    status_of,
    stop_trial,
    storage_url,
)
from .trial import EXIT_PRUNED

logger = logging.getLogger("hf_finetune")

#: exit codes of a trial process stopped by SIGINT / SIGTERM from outside the search (not the budget: ours)
STOPPED_CODES = (130, 143, -2, -15)


def run_tune(tune: Tune, progress: bool = True) -> dict[str, Any]:
    """Run trials until --trials count or the budget is spent; write the outputs after each trial; then,
    with --confirm-seeds, retrain the recipe as given and the best recipe per seed."""
    held = lock(tune)
    try:
        return _run_tune(tune, progress)
    finally:
        held.close()


def _run_tune(tune: Tune, progress: bool) -> dict[str, Any]:
    started = time.time()
    deadline = started + 60 * tune.budget_minutes if tune.budget_minutes else None
    study = open_study(tune)
    bar = progress_bar(tune.trials, counted(study), progress, "tune trials", "trial")
    ran = 0
    stopped_by = "trials"
    try:
        with sigterm_as_exit():
            write_outputs(tune, study)
            while tune.trials is None or counted(study) < tune.trials:
                if deadline is not None and not _time_for_a_trial(study, deadline):
                    stopped_by = "budget"
                    break
                trial = study.ask()
                values = tune.space.sample(trial, tune.base_value, tune.layers)
                bar.set_postfix_str(_postfix(tune, study, trial.number), refresh=True)
                outcome = run_trial(tune, study, trial, values, deadline)
                ran += 1
                bar.write(_trial_line(trial.number, outcome, values))
                if outcome["status"] in COUNTED:
                    bar.update(1)
                write_outputs(tune, study)
                if outcome["status"] == "budget":
                    stopped_by = "budget"
                    break
    except (KeyboardInterrupt, SystemExit):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # runs again next time
            stop_trial(tune, study, t.number, "interrupted", "stopped by Ctrl-C or SIGTERM")
        write_outputs(tune, study)
        raise
    except Exception as exc:  # a bug, not the trial's values: recorded, not queued again
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            set_attr(tune, study, t.number, "status", "failed")
            set_attr(tune, study, t.number, "error", f"the search failed: {type(exc).__name__}: {exc}")
            study.tell(t.number, state=TrialState.FAIL)
        write_outputs(tune, study)
        raise
    finally:
        bar.close()
    best = best_row(tune, trial_rows(study))
    confirmed = None
    if tune.confirm_seeds and best is not None:  # after the search, outside its budget
        confirmed = confirm(tune, study, best, progress)
        write_outputs(tune, study)
    return {
        "ran": ran,
        "counted": counted(study),
        "stopped_by": stopped_by,
        "best_trial": best["trial"] if best else None,
        "best_score": best["score"] if best else None,
        "output_dir": str(tune.output_dir),
        "confirm": confirmed,
    }


def _time_for_a_trial(study, deadline: float) -> bool:
    """Whether another trial can start before the deadline: some time is left, and no less than the median
    time of the trials that ended so far (a trial that cannot finish would only be stopped and queued)."""
    left = deadline - time.time()
    times = [
        t.user_attrs["time_s"] for t in study.get_trials(deepcopy=False) if status_of(t) in ("ok", "pruned")
    ]
    needed = statistics.median(times) if times else 0.0
    if left <= 0 or left < needed:
        if left > 0:
            logger.info(
                "not starting another trial: %.1f min of the budget left, trials take %.1f min (median)",
                left / 60,
                needed / 60,
            )
        return False
    return True


def run_trial(tune: Tune, study, trial, values: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    """One trial: a process per seed of `tune.seeds`, in turn; tells the study how it ended (the mean score
    over the seeds). Returns the trial's outcome."""
    run_dir = trial_dir(tune, trial.number)
    trial.set_user_attr("values", values)
    trial.set_user_attr("output_dir", str(run_dir))
    try:
        recipe = tune.trial_recipe(values, run_overrides(tune.base, run_dir))
    except FinetuneError as exc:  # a combination the recipe refuses (checked before any weights load)
        return fail_trial(study, trial, str(exc), 0.0)
    shutil.rmtree(run_dir, ignore_errors=True)
    wall = 0.0
    peaks: list[float] = []
    scores: dict[str, float] = {}
    stopped: dict[str, dict[str, int]] = {}
    runtime = 0.0
    for index, seed in enumerate(tune.seeds):
        seed_dir = run_dir if seed is None else run_dir / f"seed{seed}"
        which = "" if seed is None else f"seed {seed}: "
        timeout = None if deadline is None else max(deadline - time.time(), 1.0)
        # only the first seed's run reports to the pruner
        report_to = ReportTo(storage_url(tune), trial.number, tune.metric) if index == 0 else None
        track_overrides, env = tracked(tune, seed_dir, seed, values)
        launched = run_training(
            tune.recipe_path,
            [*train_overrides(tune, values, seed_dir, seed), *track_overrides],
            seed_dir,
            timeout=timeout,
            env=env,
            report_to=report_to,
        )
        code = launched.code
        wall = round(wall + launched.wall_s, 2)
        trial.set_user_attr("time_s", wall)
        if launched.peak_rss_mb is not None:
            peaks.append(launched.peak_rss_mb)
            trial.set_user_attr("peak_memory_mb", max(peaks))
        drop_weights(seed_dir, tune.keep_models)
        if launched.timed_out:
            status = stop_trial(
                tune,
                study,
                trial.number,
                "budget",
                f"{which}stopped at the end of --budget-minutes={tune.budget_minutes:g}",
            )
            return {
                "status": status,
                "error": f"--budget-minutes={tune.budget_minutes:g} ran out",
                "time_s": wall,
            }
        if code == EXIT_PRUNED:  # only the first seed reports, so only it is pruned
            trial.set_user_attr("status", "pruned")
            study.tell(trial, state=TrialState.PRUNED)
            reported = study.get_trials(deepcopy=False)[trial.number].intermediate_values
            step = max(reported) if reported else None
            return {"status": "pruned", "score": reported.get(step), "step": step, "time_s": wall}
        if code in STOPPED_CODES:
            status = stop_trial(
                tune,
                study,
                trial.number,
                "interrupted",
                f"{which}the trial process was stopped (exit {code})",
            )
            return {"status": status, "error": f"stopped (exit {code})", "time_s": wall}
        results = run_results(seed_dir) if code == 0 else None
        if results is None:
            return fail_trial(study, trial, which + launched.error(), wall)
        key = score_key(recipe, results, tune.metric)
        score = results.get(key)
        if score is None or not math.isfinite(score):
            return fail_trial(study, trial, f"{which}{key} is {score} in {seed_dir / RESULTS_FILE}", wall)
        scores[str(seed)] = score
        runtime += results.get("train_runtime") or 0.0
        if results.get("stopped_early"):  # the recipe's early stopping: finished (ok), not pruned
            stopped[str(seed)] = _stopped_at(results)
        if seed is not None:
            trial.set_user_attr("seed_scores", scores)
        trial.set_user_attr("trainable_params", results.get("trainable_params"))
    score = statistics.fmean(scores.values())
    trial.set_user_attr("status", "ok")
    trial.set_user_attr("metric", key.removeprefix("eval_"))
    trial.set_user_attr("train_runtime", round(runtime, 4))
    if stopped:
        first = next(iter(stopped.values()))
        trial.set_user_attr("stopped_early", True)
        trial.set_user_attr("stopped_at_step", first["step"])
        trial.set_user_attr("stopped_at_percent", first["percent"])
        if tune.trial_seeds:
            trial.set_user_attr("seeds_stopped_early", {s: v["step"] for s, v in stopped.items()})
    study.tell(trial, score)
    return {
        "status": "ok",
        "score": score,
        "time_s": wall,
        "seed_scores": scores if tune.trial_seeds else None,
        "stopped_at_percent": next(iter(stopped.values()))["percent"] if stopped else None,
    }


def _stopped_at(results: dict[str, Any]) -> dict[str, int]:
    """Where a run stopped early: the step, and the percent of its schedule (as the pruner counts)."""
    step = int(results.get("stopped_at_step") or 0)
    return {"step": step, "percent": round(100 * step / max(int(results.get("scheduled_steps") or 1), 1))}


# ------------------------------------------------------------------------------------------------
# Progress lines
# ------------------------------------------------------------------------------------------------
def _postfix(tune: Tune, study, running: int) -> str:
    best = best_row(tune, trial_rows(study))
    if best is None:
        return f"running trial {running}"
    return f"best {best['score']:.4f} (trial {best['trial']}) | running trial {running}"


def _trial_line(number: int, outcome: dict[str, Any], values: dict[str, Any]) -> str:
    shown = ", ".join(f"{k.split('.')[-1]}={show(v)}" for k, v in values.items())
    minutes = f"{outcome['time_s'] / 60:.1f} min"
    if outcome["status"] == "ok":
        seeds = outcome.get("seed_scores")
        each = f" (seeds {', '.join(f'{s} {v:.4f}' for s, v in seeds.items())})" if seeds else ""
        early = outcome.get("stopped_at_percent")
        early_text = f", stopped early at {early}%" if early is not None else ""
        return f"trial {number}: {outcome['score']:.4f}{each} in {minutes}{early_text} ({shown})"
    if outcome["status"] == "pruned":
        last = outcome.get("score")
        at = f" at {outcome['step']}% ({last:.4f})" if last is not None else ""
        return f"trial {number}: pruned{at} after {minutes} ({shown})"
    return f"trial {number}: {outcome['status']}: {outcome.get('error')} ({shown})"
