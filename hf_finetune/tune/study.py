"""The optuna study of a search: its storage (SQLite in the tune dir, or any optuna storage given with
--storage, shared by workers on any number of machines), the pruner (the median rule at the same percent of
each trial's schedule), opening, continuing or joining it, the lock on the tune dir, the heartbeat of a running
trial, and the status of each trial (ok, pruned, failed; interrupted and budget trials are queued to run
again, as are the trials of a worker that stopped sending heartbeats).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import statistics
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from ..errors import FinetuneError
from ..outputs import drop_weights
from .setup import LOCK, STUDY_DB, Tune, sqlite_url, trial_dir
from .space import PrunerSettings
from .storage import open_storage, shown_url

logger = logging.getLogger("hf_finetune")

#: seconds between two heartbeats of a running trial; a test shortens them through this variable
HEARTBEAT_ENV = "HF_FINETUNE_TUNE_HEARTBEAT_S"
HOST_ENV = "HF_FINETUNE_TUNE_HOST"
DEFAULT_HEARTBEAT_S = 20.0
#: a running trial with no heartbeat for this many intervals has lost its worker: it is queued again
STALE_AFTER = 6
#: a trial stopped (budget, signal) this many times in a row is recorded as failed instead of queued again
MAX_ATTEMPTS = 3
#: trial statuses that count towards --trials; `interrupted` and `budget` trials run again
COUNTED = ("ok", "pruned", "failed")
#: a trial a worker asked for when the count was already made up elsewhere, and gave back (not shown)
SURPLUS = "surplus"


# ------------------------------------------------------------------------------------------------
# Storage and pruner
# ------------------------------------------------------------------------------------------------
def storage_url(tune: Tune) -> str:
    """The study's storage: --storage, else the SQLite file in the tune dir."""
    return tune.storage_url or sqlite_url(tune.output_dir)


def heartbeat_s() -> float:
    try:
        return max(float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S)), 0.2)
    except ValueError:
        return DEFAULT_HEARTBEAT_S


def host_name() -> str:
    """This machine, as the workers of a shared study name it: $HF_FINETUNE_TUNE_HOST, else the host name
    (set the variable where machines share a host name, as containers may)."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def worker_id() -> str:
    """This process, as other workers of a shared study name it: host and pid."""
    return f"{host_name()}:{os.getpid()}"


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


def load_trial(url: str, study_name: str, number: int) -> optuna.trial.Trial:
    """Trial ``number`` of study ``study_name`` at ``url``, as a trial process reports to it (with the
    study's pruner)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    summary = optuna.load_study(study_name=study_name, storage=storage)
    settings = PrunerSettings.from_dict(summary.user_attrs.get("pruner"))
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(settings))
    return optuna.trial.Trial(study, trial_id(storage, study_name, number))


# ------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------
def open_study(tune: Tune) -> optuna.Study:
    """Create the study, or continue the one in the tune dir or at --storage (which must be of the same
    search); with --join, the study must exist.

    A search that starts on the SQLite study of its own tune dir holds the dir's lock: trials left running
    there are those of a search that was killed, and are queued again now. On --storage, or with --join,
    they may be running on another worker: `fail_stale` queues them again once their worker's heartbeats
    stop."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(tune)
    if tune.join and not tune.storage_url and not (tune.output_dir / STUDY_DB).is_file():
        raise FinetuneError(
            f"--join: {tune.output_dir} holds no search ({STUDY_DB}); give the search's --storage URL, or "
            "start the search first (the same command without --join)."
        )
    tune.output_dir.mkdir(parents=True, exist_ok=True)
    storage = tune.storage = open_storage(url)
    exists = tune.study_name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if tune.join and not exists:
        raise FinetuneError(
            f"--join: {shown_url(url)} holds no study named {tune.study_name!r}; start the search first (the "
            "same command without --join), or give its --study-name."
        )
    if (
        not exists
        and not tune.storage_url
        and any(p for p in tune.output_dir.iterdir() if p.name not in (STUDY_DB, LOCK))
    ):
        raise FinetuneError(
            f"--output-dir {tune.output_dir}: is not empty and holds no search; give a new or empty directory."
        )
    study = optuna.create_study(
        study_name=tune.study_name,
        storage=storage,
        direction=tune.direction,
        pruner=make_pruner(tune.space.pruner),
        load_if_exists=True,
    )
    saved = study.user_attrs.get("fingerprint")
    for _ in range(100):  # a study its starter has just created: its settings follow in a moment
        if saved is not None or not tune.join:
            break
        time.sleep(0.1)
        saved = optuna.load_study(study_name=tune.study_name, storage=storage).user_attrs.get("fingerprint")
    if saved is None and not tune.join:
        study.set_user_attr("fingerprint", tune.fingerprint)
        pruner = tune.space.pruner
        study.set_user_attr("pruner", None if pruner is None else pruner.to_dict())
        study.set_user_attr("metric", tune.metric)
        study.set_user_attr("search", tune.invocation)
        for i, start in enumerate(tune.space.start_with):
            params = tune.space.fixed_params(
                tune.start_values(start), tune.base_value, tune.layers, f"start_with[{i}]", start == "recipe"
            )
            study.enqueue_trial(params, user_attrs={"start": "recipe" if start == "recipe" else "given"})
    elif saved != tune.fingerprint:
        now = tune.fingerprint
        changed = [k for k in {**(saved or {}), **now} if (saved or {}).get(k) != now.get(k)]
        where = (
            f"--storage {shown_url(url)} (study {tune.study_name!r})"
            if tune.storage_url
            else (f"--output-dir {tune.output_dir}")
        )
        raise FinetuneError(
            f"{where}: holds a search with another {', '.join(changed)}; continue it with the same recipe, "
            "overrides, space and options, or give a new "
            + ("--study-name." if tune.storage_url else "--output-dir.")
        )
    study.sampler = _sampler(tune, len(study.trials))
    if tune.storage_url or tune.join:  # other searches may be running trials of this study now
        fail_stale(tune, study)
    else:
        for trial in running(study):
            # left running by a search that was killed (the lock says no other search is using the
            # directory; a live worker of this machine that joined it is left alone)
            if _alive_here(trial.user_attrs.get("worker")):
                continue
            logger.info("trial %d did not finish (its search was stopped); it runs again", trial.number)
            stop_trial(tune, study, trial.number, "interrupted", "its search was stopped (killed)")
    return study


def _sampler(tune: Tune, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The TPE sampler. A resumed search draws on from another seed (the sampler's RNG restarts, and must not
    repeat draws). On a shared study each worker draws from its own seed, and trials running elsewhere count
    as if they had scored their worst (optuna's constant liar), so that workers do not sample one point."""
    sampler = tune.space.sampler
    seed = tune.seed + trials_so_far
    if tune.shared:
        seed = (seed + zlib.crc32(worker_id().encode())) % 2**32
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=sampler.n_startup_trials,
        n_ei_candidates=sampler.n_ei_candidates,
        multivariate=sampler.multivariate,
        group=sampler.multivariate,  # conditional parameters: modelled jointly within each group
        constant_liar=tune.shared,
    )


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
def trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of study ``study_name``."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def set_attr(tune: Tune, study, number: int, key: str, value: Any) -> None:
    """Set a user attribute of trial ``number``, which another (maybe dead) process may have created."""
    optuna.trial.Trial(study, trial_id(tune.storage, study.study_name, number)).set_user_attr(key, value)


def stop_trial(tune: Tune, study, number: int, status: str, error: str) -> str | None:
    """End running trial ``number`` as FAIL without a verdict on its values (`budget`, `interrupted`): they
    are queued to run again first, unless this was their MAX_ATTEMPTS-th stop, which makes it `failed`.
    Returns the status; None when another process ended the trial first (it then queued the rerun)."""
    storage = tune.storage
    frozen = storage.get_trial(trial_id(storage, study.study_name, number))
    attempt = frozen.user_attrs.get("attempt", 1)
    if attempt >= MAX_ATTEMPTS:
        status, error = "failed", f"{error}; stopped {attempt} times in a row, so not queued again"
    with signals_held():  # ended and queued again, or neither: a signal must not fall between the two
        try:
            set_attr(tune, study, number, "status", status)
            set_attr(tune, study, number, "error", error)
            # one process wins this change of state: only it queues the rerun
            study.tell(number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            return None
        if status != "failed":
            again = {"retry_of": number, "attempt": attempt + 1}
            if "start" in frozen.user_attrs:  # the baseline stays the baseline
                again["start"] = frozen.user_attrs["start"]
            study.enqueue_trial(dict(frozen.params), user_attrs=again)
    drop_weights(trial_dir(tune, number), tune.keep_models)
    return status


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block has run (in the main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def running(study) -> list:
    """The study's trials that are running now (here or on other workers)."""
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


@contextlib.contextmanager
def heartbeat(tune: Tune, study, number: int) -> Iterator[None]:
    """While the block runs, trial ``number`` carries this worker's name and a heartbeat that changes every
    `heartbeat_s`: the other workers of a shared study take the trial as lost when it stops changing
    (`fail_stale`)."""
    storage = tune.storage
    tid = trial_id(storage, study.study_name, number)
    storage.set_trial_user_attr(tid, "worker", worker_id())
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while True:
            count += 1
            try:
                storage.set_trial_user_attr(tid, "heartbeat", [time.time(), count])
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # ended (here, or by another worker that took it for lost)
            except Exception as exc:  # the database is away for a moment: the next beat tries again
                logger.debug("trial %d: heartbeat not recorded: %s", number, exc)
            if stop.wait(heartbeat_s()):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _alive_here(worker: str | None) -> bool:
    """Whether ``worker`` (host:pid) is a process of this machine that is running (not this one)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != host_name() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale(tune: Tune, study, worker: str | None = None, why: str | None = None) -> list[int]:
    """Queue again the running trials whose worker is gone, and return their numbers.

    ``worker`` given: every trial of that worker, which its parent saw end (``why``). Else: a trial whose
    worker is a process of this machine that no longer runs, and a trial of another machine whose heartbeat
    has not changed for `STALE_AFTER` intervals, timed by this process's clock from when it first saw that
    heartbeat (clocks of different machines are never compared)."""
    now = time.monotonic()
    limit = STALE_AFTER * heartbeat_s()
    seen = tune.heartbeats_seen
    lost = []
    for trial in running(study):
        owner = trial.user_attrs.get("worker")
        if worker is not None:
            if owner != worker:
                continue
            error = f"its worker ({worker}) {why}"
        elif owner is not None and owner.rpartition(":")[0] == host_name():
            if _alive_here(owner) or owner == worker_id():
                continue
            error = f"its worker ({owner}) is gone"
        else:
            beat = json.dumps(trial.user_attrs.get("heartbeat"))
            first_seen = seen.get(trial.number)
            if first_seen is None or first_seen[0] != beat:
                seen[trial.number] = (beat, now)
                continue
            if now - first_seen[1] <= limit:
                continue
            error = f"its worker ({owner or 'unknown'}) stopped: no heartbeat for {now - first_seen[1]:.0f} s"
        if stop_trial(tune, study, trial.number, "interrupted", error) is not None:
            logger.warning("trial %d: %s; it runs again", trial.number, error)
            lost.append(trial.number)
    return lost


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
