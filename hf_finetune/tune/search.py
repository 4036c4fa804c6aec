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
import os
import shutil
import signal
import statistics
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import FinetuneError
from ..launch import ReportTo, die_with_parent, progress_bar, run_training, sigterm_as_exit
from ..outputs import RESULTS_FILE, drop_weights, run_results
from ..tasks.base import score_key
from .confirm import finish
from .report import best_row, trial_rows, write_outputs
from .setup import Tune, run_overrides, tracked, train_overrides, trial_dir
from .space import show
from .storage import pass_url
from .study import (
    SURPLUS,
    counted,
    fail_stale,
    fail_trial,
    heartbeat,
    heartbeat_s,
    lock,
    open_study,
    running,
    set_attr,
    signals_held,
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
    with --confirm-seeds, retrain the recipe as given and the best recipe per seed. With --workers N, start
    N worker processes on the study instead and wait for them (`hf_finetune.tune.workers`)."""
    if tune.workers > 1 and tune.worker is None:
        from .workers import run_workers

        return run_workers(tune, progress)
    if tune.worker is not None:  # started by `--workers`: stop (and queue the trial again) if it dies
        die_with_parent(signal.SIGTERM)
    if tune.devices and tune.worker is None:  # --devices with one device: the trials' processes see it alone
        os.environ["CUDA_VISIBLE_DEVICES"] = tune.devices[0]
    held = None if tune.join else lock(tune)  # a worker searches beside others: its starter holds the lock
    try:
        return _run_tune(tune, progress)
    finally:
        if held is not None:
            held.close()


def _run_tune(tune: Tune, progress: bool) -> dict[str, Any]:
    started = time.time()
    deadline = started + 60 * tune.budget_minutes if tune.budget_minutes else None
    study = open_study(tune)
    bar = progress_bar(tune.trials, counted(study), progress, "tune trials", "trial")
    ran = 0
    stopped_by = "trials"
    current = None  # the number of the trial this process runs
    try:
        with sigterm_as_exit():
            write_outputs(tune, study)
            while True:
                if tune.shared:
                    fail_stale(tune, study)  # trials of workers that died: queued again
                    bar.n = counted(study)
                    bar.refresh()
                if tune.trials is not None and counted(study) >= tune.trials:
                    break
                if deadline is not None and not _time_for_a_trial(study, deadline):
                    stopped_by = "budget"
                    break
                if tune.trials is not None and counted(study) + len(running(study)) >= tune.trials:
                    # the last trials run on other workers; one of them may yet be stopped and queued again
                    time.sleep(min(heartbeat_s(), 5.0))
                    continue
                trial = study.ask()
                current = trial.number
                if tune.shared and _surplus(tune, study, trial):
                    current = None
                    continue
                values = tune.space.sample(trial, tune.base_value, tune.layers)
                bar.set_postfix_str(_postfix(tune, study, trial.number), refresh=True)
                try:
                    with heartbeat(tune, study, trial.number):
                        outcome = run_trial(tune, study, trial, values, deadline)
                except optuna.exceptions.UpdateFinishedTrialError:
                    # another worker took this trial for lost (its heartbeats did not reach the database)
                    # and queued it again: its result is that run's now
                    outcome = {"status": "taken over", "error": "ended by another worker", "time_s": 0.0}
                current = None
                ran += 1
                bar.write(_worker_prefix(tune) + _trial_line(trial.number, outcome, values))
                bar.n = counted(study)
                bar.refresh()
                write_outputs(tune, study)
                if outcome["status"] == "budget":
                    stopped_by = "budget"
                    break
    except (KeyboardInterrupt, SystemExit):
        if current is not None and _is_running(study, current):  # runs again next time (or on another worker)
            stop_trial(tune, study, current, "interrupted", "stopped by Ctrl-C or SIGTERM")
        write_outputs(tune, study)
        raise
    except Exception as exc:  # a bug, not the trial's values: recorded, not queued again
        if current is not None and _is_running(study, current):
            set_attr(tune, study, current, "status", "failed")
            set_attr(tune, study, current, "error", f"the search failed: {type(exc).__name__}: {exc}")
            study.tell(current, state=TrialState.FAIL)
        write_outputs(tune, study)
        raise
    finally:
        bar.close()
    return {**finish(tune, study, progress), "ran": ran, "stopped_by": stopped_by}


def _is_running(study, number: int) -> bool:
    return study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING


def _surplus(tune: Tune, study, trial) -> bool:
    """Whether ``trial``, just asked for, would run past --trials: the trials counted and those running with
    lower numbers (asked before it, here or on other workers) already make up the count. Two workers may
    both see room for the last trial and ask at once; the later one gives its trial back: ended as
    `surplus` (not counted, not shown), its values queued again if they were queued (a rerun, a start)."""
    if tune.trials is None:
        return False
    earlier = [t for t in running(study) if t.number < trial.number]
    if counted(study) + len(earlier) < tune.trials:
        return False
    frozen = tune.storage.get_trial(trial._trial_id)
    fixed = frozen.system_attrs.get("fixed_params")
    with signals_held():  # given back and queued again, or neither
        trial.set_user_attr("status", SURPLUS)
        study.tell(trial, state=TrialState.FAIL)
        if fixed is not None:
            study.enqueue_trial(dict(fixed), user_attrs=dict(frozen.user_attrs))
    time.sleep(min(heartbeat_s(), 5.0))
    return True


def _worker_prefix(tune: Tune) -> str:
    return "" if tune.worker is None else f"worker {tune.worker}: "


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
    """One trial: a process per run of `tune.runs` (each seed of --trial-seeds, or each fold of --folds), in
    turn; tells the study how it ended (the mean score over the runs). Returns the trial's outcome.

    The pruner watches the first seed's run (its evaluations during training), or with --folds the running
    mean over the folds done so far (at 100 x folds done / K percent)."""
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
    for index, (name, seed, fold) in enumerate(tune.runs):
        seed_dir = run_dir / name if name else run_dir
        which = f"{name.replace('seed', 'seed ').replace('fold', 'fold ')}: " if name else ""
        timeout = None if deadline is None else max(deadline - time.time(), 1.0)
        # only the first seed's run reports to the pruner (folds: this process reports the running mean)
        first = index == 0 and fold is None
        track_overrides, env = tracked(tune, seed_dir, seed, values)
        report_to = None
        if first:  # a storage URL with a password reaches the trial's process in its environment
            env = dict(os.environ) if env is None else env
            url = pass_url(storage_url(tune), env)
            report_to = ReportTo(url, tune.study_name, trial.number, tune.metric)
        launched = run_training(
            tune.recipe_path,
            [*train_overrides(tune, values, seed_dir, seed, fold), *track_overrides],
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
                "status": status or "budget",
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
            return {"status": status or "interrupted", "error": f"stopped (exit {code})", "time_s": wall}
        results = run_results(seed_dir) if code == 0 else None
        if results is None:
            return fail_trial(study, trial, which + launched.error(), wall)
        key = score_key(recipe, results, tune.metric)
        score = results.get(key)
        if score is None or not math.isfinite(score):
            return fail_trial(study, trial, f"{which}{key} is {score} in {seed_dir / RESULTS_FILE}", wall)
        scores[str(seed if fold is None else fold)] = score
        runtime += results.get("train_runtime") or 0.0
        if results.get("stopped_early"):  # the recipe's early stopping: finished (ok), not pruned
            stopped[str(seed if fold is None else fold)] = _stopped_at(results)
        if seed is not None:
            trial.set_user_attr("seed_scores", scores)
        if fold is not None:
            trial.set_user_attr("fold_scores", scores)
        trial.set_user_attr("trainable_params", results.get("trainable_params"))
        if fold is not None and fold + 1 < tune.folds:  # the pruner sees the running mean over the folds
            step = round(100 * (fold + 1) / tune.folds)
            trial.report(statistics.fmean(scores.values()), step)
            if trial.should_prune():
                trial.set_user_attr("status", "pruned")
                trial.set_user_attr("metric", key.removeprefix("eval_"))
                study.tell(trial, state=TrialState.PRUNED)
                return {
                    "status": "pruned",
                    "score": statistics.fmean(scores.values()),
                    "step": step,
                    "time_s": wall,
                }
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
