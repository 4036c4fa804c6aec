"""`hf-finetune tune ... --workers N [--devices 0,1]`: N trials at once on this machine.

The process the user started creates (or continues) the study, then starts N worker processes, each the
same `hf-finetune tune` with ``--join`` on the study's storage: every worker asks the study for a trial, trains
it in a child process, tells the study, and asks again, until --trials count or the budget is spent. optuna
is the scheduler: the workers share nothing but the study, so workers started by hand on other machines
(``--storage URL --join``) take part in the same way.

- Devices: with --devices, worker i sees one device, the i-th of the list in turn (CUDA_VISIBLE_DEVICES).
- Threads: on the CPU the cores are split between the workers (OMP_NUM_THREADS, MKL_NUM_THREADS in their
  environment, which their trials' processes inherit), so N trials do not each start a thread per core.
- A worker that dies (SIGKILL, out of memory): this process sees it end and queues its running trial again at
  once; the other workers run it. A worker that dies on another machine is found by its heartbeats stopping
  (`hf_finetune.tune.study.fail_stale`).
- Ctrl-C or SIGTERM here stops every worker, and each stops its trial and queues it again; a later run of
  the same command continues the study.
- When the workers have ended, this process writes the outputs and runs the --confirm-seeds retraining.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..launch import STOP_GRACE_S, progress_bar, sigterm_as_exit
from ..launch import worker_env as launch_worker_env
from .confirm import finish
from .report import write_outputs
from .storage import pass_url, shown_url
from .study import counted, fail_stale, host_name, lock, open_study, storage_url

logger = logging.getLogger("hf_finetune")

#: seconds between two looks at the workers and the study
POLL_S = 1.0


def worker_command(tune, index: int, budget_minutes: float | None, env: dict[str, str]) -> list[str]:
    """The command of worker ``index``: this search, joined on its storage, as that worker (a storage URL
    with a password goes in ``env``, not on the command line)."""
    url = pass_url(storage_url(tune), env)
    cmd = [sys.executable, "-m", "hf_finetune", "tune", tune.recipe_path, *tune.overrides]
    cmd += ["--space", str(Path(tune.space.path).resolve()), "--output-dir", str(tune.output_dir)]
    cmd += ["--storage", url, "--study-name", tune.study_name, "--join", "--worker", str(index)]
    cmd += ["--seed", str(tune.seed), "--direction", tune.direction, "--no-progress"]
    if tune.trials is not None:
        cmd += ["--trials", str(tune.trials)]
    if budget_minutes is not None:
        cmd += ["--budget-minutes", f"{budget_minutes:.4f}"]
    if tune.metric:
        cmd += ["--metric", tune.metric]
    if tune.trial_seeds:
        cmd += ["--trial-seeds", *map(str, tune.trial_seeds)]
    if tune.folds:
        cmd += ["--folds", str(tune.folds)]
    if tune.keep_models:
        cmd += ["--keep-models"]
    if tune.report_to:
        cmd += ["--report-to", *tune.report_to]
    return cmd


def worker_env(tune, index: int) -> dict[str, str]:
    """Worker ``index``'s environment: its device (--devices, in turn) and its share of the CPU threads."""
    return launch_worker_env(index, tune.workers, tune.devices)


def run_workers(tune, progress: bool = True) -> dict[str, Any]:
    """Start --workers processes on the study and wait for them; then the outputs and --confirm-seeds."""
    held = lock(tune)
    try:
        return _run_workers(tune, progress)
    finally:
        held.close()


def _run_workers(tune, progress: bool) -> dict[str, Any]:
    started = time.time()
    study = open_study(tune)
    write_outputs(tune, study)
    before = counted(study)
    host = host_name()
    procs: dict[int, subprocess.Popen] = {}
    ended: dict[int, int] = {}
    bar = progress_bar(tune.trials, counted(study), progress, "tune trials", "trial")
    try:
        with sigterm_as_exit():
            for index in range(tune.workers):
                left = None
                if tune.budget_minutes:
                    left = max(tune.budget_minutes - (time.time() - started) / 60, 0.01)
                env = worker_env(tune, index)
                # in a session of its own: Ctrl-C reaches this process only, which stops each worker once;
                # its lines (a trial line as it ends, warnings) go where this process prints
                procs[index] = subprocess.Popen(
                    worker_command(tune, index, left, env), env=env, start_new_session=True
                )
            logger.info(
                "%d workers on %s%s",
                tune.workers,
                shown_url(storage_url(tune)) if tune.storage_url else tune.output_dir,
                f", devices {', '.join(tune.devices)}" if tune.devices else "",
            )
            while len(ended) < len(procs):
                for index, proc in procs.items():
                    if index in ended or proc.poll() is None:
                        continue
                    ended[index] = proc.returncode
                    if proc.returncode != 0:
                        why = f"ended with exit code {proc.returncode}"
                        lost = fail_stale(tune, study, worker=f"{host}:{proc.pid}", why=why)
                        again = (
                            f"; trial {', '.join(map(str, lost))} runs again on another worker"
                            if lost
                            else ""
                        )
                        bar.write(f"worker {index} {why}{again}")
                bar.n = counted(study)
                bar.refresh()
                time.sleep(POLL_S)
    except (KeyboardInterrupt, SystemExit):
        _stop(procs)
        write_outputs(tune, study)
        raise
    finally:
        bar.close()
    summary = finish(tune, study, progress)
    done = summary["counted"]
    if tune.trials is not None and done < tune.trials and not tune.budget_minutes:
        summary["stopped_by"] = "workers"  # every worker ended before the count was made up
    else:
        summary["stopped_by"] = "trials" if tune.trials is not None and done >= tune.trials else "budget"
    summary["ran"] = done - before
    summary["workers"] = {str(i): code for i, code in sorted(ended.items())}
    return summary


def _stop(procs: dict[int, subprocess.Popen]) -> None:
    """SIGTERM every worker still running, once (each stops its trial and queues it again; a second signal
    would cut that short), then SIGKILL those still running after three times the grace a trial gets."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 3 * STOP_GRACE_S
    for proc in procs.values():
        try:
            proc.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
