"""Confirmation runs (--confirm-seeds): after the search, the recipe as given and the best recipe retrained
once per seed, each in its own process, into ``confirm/ARM/seedS``; each run's record appended to
``confirm.jsonl``. A seed the search selected on cannot confirm it (`prepare_tune` refuses those).
`finish` ends a search: its outputs, the confirmation, the summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..launch import progress_bar, run_training, sigterm_as_exit
from ..outputs import RESULTS_FILE, append_jsonl, drop_weights, read_jsonl, run_results
from ..tasks.base import score_key
from .report import best_row, changed_values, confirmation, trial_rows, write_outputs
from .setup import CONFIRM, CONFIRM_DIR, Tune, run_overrides, tracked, train_overrides
from .study import counted

#: what trains one confirmation run: `confirm_run` or a stand-in with its signature
ConfirmRun = Callable[[Tune, dict[str, Any], Path, int], dict[str, Any]]


def confirm_run(tune: Tune, values: dict[str, Any], run_dir: Path, seed: int) -> dict[str, Any]:
    """Train the recipe with ``values`` and ``seed`` into ``run_dir`` in a child process; its record."""
    recipe = tune.trial_recipe(values, run_overrides(tune.base, run_dir, seed=seed))
    track_overrides, env = tracked(tune, run_dir, seed, values)
    overrides = [*train_overrides(tune, values, run_dir, seed), *track_overrides]
    launched = run_training(tune.recipe_path, overrides, run_dir, env=env)
    drop_weights(run_dir, tune.keep_models)
    results = run_results(run_dir) if launched.code == 0 else None
    if results is None:
        return {"status": "failed", "error": launched.error(), "time_s": launched.wall_s}
    key = score_key(recipe, results, tune.metric)
    score = results.get(key)
    if score is None or not math.isfinite(score):
        error = f"{key} is {score} in {run_dir / RESULTS_FILE}"
        return {"status": "failed", "error": error, "time_s": launched.wall_s}
    return {"status": "ok", "metric": key.removeprefix("eval_"), "score": score, "time_s": launched.wall_s}


def confirm(
    tune: Tune, study, best: dict[str, Any], progress: bool = True, run: ConfirmRun = confirm_run
) -> dict[str, Any]:
    """Train the recipe as given and the best recipe (trial row ``best``) once per --confirm-seeds seed, each
    with ``run``; runs already in confirm.jsonl for the same best trial are kept. Returns the summary."""
    path = tune.output_dir / CONFIRM
    records = read_jsonl(path)
    done = {(r["recipe"], r["seed"], r.get("best_trial")) for r in records if r.get("status") == "ok"}
    arms = {"recipe": {}, "best": best["params"]}
    if not changed_values(tune, best):  # the recipe as given won: one set of runs answers for both
        del arms["best"]
    todo = [
        (arm, seed)
        for seed in tune.confirm_seeds
        for arm in arms
        if (arm, seed, best["trial"] if arm == "best" else None) not in done
    ]
    total = len(tune.confirm_seeds) * len(arms)
    bar = progress_bar(total, total - len(todo), progress, "confirm runs", "run")
    try:
        with sigterm_as_exit():
            for arm, seed in todo:
                run_dir = tune.output_dir / CONFIRM_DIR / arm / f"seed{seed}"
                record = run(tune, arms[arm], run_dir, seed)
                record.update(
                    {"recipe": arm, "seed": seed, "best_trial": best["trial"] if arm == "best" else None}
                )
                append_jsonl(path, record)
                bar.write(
                    f"confirm {arm} seed {seed}: "
                    + (
                        f"{record['score']:.4f}"
                        if record["status"] == "ok"
                        else f"failed: {record.get('error')}"
                    )
                )
                bar.update(1)
    finally:
        bar.close()
    return confirmation(tune, best)


def finish(tune: Tune, study, progress: bool) -> dict[str, Any]:
    """After the search: the outputs, the --confirm-seeds runs (outside the budget; not on a --join worker)
    and the summary (counted trials, the best, the confirmation)."""
    write_outputs(tune, study)
    best = best_row(tune, trial_rows(study))
    confirmed = None
    if tune.confirm_seeds and best is not None:
        confirmed = confirm(tune, study, best, progress)
        write_outputs(tune, study)
    return {
        "counted": counted(study),
        "best_trial": best["trial"] if best else None,
        "best_score": best["score"] if best else None,
        "output_dir": str(tune.output_dir),
        "confirm": confirmed,
    }
