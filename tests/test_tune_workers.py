"""`hf-finetune tune` beyond one process: --workers N on this machine, workers joining a study on a real
PostgreSQL server (--storage URL --join), a worker killed mid-trial (its trial runs again, once, and is
counted once), `tune report`, and the storage errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hf_finetune import cli

from .conftest import REPO
from .helpers import mysql
from .helpers.postgres import postgres_server, server_bin
from .test_tune import SEARCH, _processes_with, _recipe, _rows, _space, _wait_until

#: every trial: the recipe's two epochs of the tiny model; the space of test_tune without a fixed start
SPACE = {**SEARCH, "start_with": []}
COUNTED = ("ok", "pruned", "failed")


def _env() -> dict[str, str]:
    # heartbeats every 0.5 s: a worker that stopped beating for 3 s has lost its trial
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_FINETUNE_TUNE_HEARTBEAT_S": "0.5"}


def _study(url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from hf_finetune.tune import STUDY_NAME, open_storage

    storage = open_storage(url)
    if STUDY_NAME not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        return None
    return optuna.load_study(study_name=STUDY_NAME, storage=storage)


def _running_on(url: str, pids: set[int]):
    """The first running trial of a worker among ``pids`` whose training process has started, or None."""
    study = _study(url)
    if study is None:
        return None
    for trial in study.get_trials(deepcopy=False):
        worker = trial.user_attrs.get("worker", "")
        if trial.state.name == "RUNNING" and worker:
            pid = int(worker.rsplit(":", 1)[1])
            out = trial.user_attrs.get("output_dir")
            if pid in pids and out and _processes_with(out):
                return trial.number, pid
    return None


def _check_the_count(url: str, killed: int, trials: int = 6) -> list:
    """``trials`` counted trials, each once; ``killed`` interrupted and its values run once more; nothing
    left running or queued. Returns the ended trials."""
    study = _study(url)
    frozen = study.get_trials(deepcopy=False)
    states = {t.state.name for t in frozen}
    assert not states & {"RUNNING", "WAITING"}, states
    status = {t.number: t.user_attrs.get("status") for t in frozen}
    counted = [t for t in frozen if status[t.number] in COUNTED]
    assert len(counted) == trials, status
    assert status[killed] == "interrupted", status
    reruns = [t for t in frozen if t.user_attrs.get("retry_of") == killed]
    assert len(reruns) == 1 and status[reruns[0].number] == "ok", status
    assert reruns[0].params == frozen[killed].params
    # no values trained twice among the counted trials: each is its own draw (or the one rerun)
    drawn = [json.dumps(t.params, sort_keys=True) for t in counted]
    assert len(set(drawn)) == len(drawn)
    return frozen


@pytest.mark.skipif(server_bin() is None and not os.environ.get("CI"), reason="no PostgreSQL server here")
def test_two_workers_on_postgres_share_six_trials_and_a_killed_worker_s_trial_runs_again(
    tmp_path, tiny_model_dir
):
    recipe = _recipe(tmp_path, tiny_model_dir)
    space = _space(tmp_path, SPACE)
    with postgres_server() as url:
        base = [sys.executable, "-m", "hf_finetune", "tune", recipe, "--space", space, "--trials", "6"]
        base += ["--storage", url, "--no-progress"]
        first = subprocess.Popen(
            [*base, "--output-dir", str(tmp_path / "a")],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _wait_until(lambda: _study(url) is not None, "the study being created", timeout=300)
        # the second worker names its machine node-b: to the first it is on another machine, whose death
        # only its stopped heartbeat tells
        second = subprocess.Popen(
            [*base, "--join", "--output-dir", str(tmp_path / "b")],
            env={**_env(), "HF_FINETUNE_TUNE_HOST": "node-b"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # SIGKILL the joined worker while its trial trains: nothing of it can record anything
        found = []
        _wait_until(
            lambda: found.append(_running_on(url, {second.pid})) or found[-1], "a trial on worker 2", 600
        )
        killed, _ = found[-1]
        second.kill()
        second_out = second.communicate(timeout=120)[0]
        assert second.returncode == -signal.SIGKILL
        out = first.communicate(timeout=900)[0]
        assert first.returncode == 0, out + second_out

        frozen = _check_the_count(url, killed)
        assert "no heartbeat for" in frozen[killed].user_attrs["error"]
        workers = {t.user_attrs["worker"] for t in frozen if t.user_attrs.get("status") in COUNTED}
        assert f"{socket.gethostname()}:{first.pid}" in workers
        assert f"trial {killed} " in out or f"trial {killed}:" in out  # the survivor said it ran it again

        # the leaderboard, written by the worker that finished and by `tune report` from the study alone
        rows = _rows(tmp_path / "a")
        assert sum(r["status"] in COUNTED for r in rows) == 6
        assert [r["trial"] for r in rows if r["status"] == "interrupted"] == [killed]
        report = tmp_path / "report"
        code = cli.main(["tune", "report", "--storage", url, "--output-dir", str(report)])
        assert code == 0
        assert _rows(report) == rows
        board = (report / "leaderboard.md").read_text()
        assert ". 7 trials: 6 finished" in board and "1 stopped and run again" in board
        assert (report / "best_recipe.yaml").is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_2_on_sqlite_share_the_trials_and_a_killed_worker_s_trial_runs_again(
    tmp_path, tiny_model_dir
):
    recipe = _recipe(tmp_path, tiny_model_dir)
    space = _space(tmp_path, SPACE)
    out = tmp_path / "tune"
    url = f"sqlite:///{out / 'study.db'}"
    cmd = [sys.executable, "-m", "hf_finetune", "tune", recipe, "--space", space, "--trials", "6"]
    cmd += ["--workers", "2", "--output-dir", str(out), "--no-progress"]
    search = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def workers() -> set[int]:
        # the two worker processes: `hf-finetune tune ... --worker I`, children of the search
        return {p for p in _processes_with("--worker ") if _parent(p) == search.pid}

    found = []
    _wait_until(
        lambda: (out / "study.db").is_file() and (found.append(_running_on(url, workers())) or found[-1]),
        "a trial on a worker",
        600,
    )
    killed, pid = found[-1]
    os.kill(pid, signal.SIGKILL)
    output = search.communicate(timeout=900)[0]
    assert search.returncode == 0, output
    assert "ended with exit code -9" in output
    frozen = _check_the_count(url, killed)
    # the search saw its worker end, or the other worker saw its process gone: whichever came first
    error = frozen[killed].user_attrs["error"]
    assert "ended with exit code -9" in error or f":{pid}) is gone" in error, error
    assert frozen[killed].user_attrs["worker"].endswith(f":{pid}")
    (rerun,) = [t for t in frozen if t.user_attrs.get("retry_of") == killed]
    assert rerun.user_attrs["worker"] != frozen[killed].user_attrs["worker"]  # the surviving worker ran it
    assert "6 trials (" in output and "best: trial" in output
    rows = _rows(out)
    assert sum(r["status"] in COUNTED for r in rows) == 6 and len(rows) == 7
    # and the killed trial's processes are gone with it
    _wait_until(lambda: not _processes_with(frozen[killed].user_attrs["output_dir"]), "its processes ending")


@pytest.mark.skipif(not mysql.installed() and not os.environ.get("CI"), reason="no MariaDB server here")
def test_workers_2_on_a_mariadb_study_share_the_trials_and_tune_report_reads_it(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir, epochs=1)
    space = _space(tmp_path, SPACE)
    with mysql.mariadb_server() as url:  # mysql://: the storage adds PyMySQL, the installed driver
        cmd = [sys.executable, "-m", "hf_finetune", "tune", recipe, "--space", space, "--trials", "4"]
        cmd += ["--workers", "2", "--storage", url, "--output-dir", str(tmp_path / "a"), "--no-progress"]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        frozen = _study(url).get_trials(deepcopy=False)
        assert all(t.state.name in ("COMPLETE", "PRUNED") for t in frozen), [t.state for t in frozen]
        counted = [t for t in frozen if t.user_attrs.get("status") in COUNTED]
        assert len(counted) == 4 and len({json.dumps(t.params, sort_keys=True) for t in counted}) == 4
        assert len({t.user_attrs["worker"] for t in counted}) == 2  # both workers trained
        rows = _rows(tmp_path / "a")
        assert sum(r["status"] in COUNTED for r in rows) == 4
        code = cli.main(["tune", "report", "--storage", url, "--output-dir", str(tmp_path / "report")])
        assert code == 0
        assert _rows(tmp_path / "report") == rows


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_workers_are_told_their_device_and_their_share_of_the_cores(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from hf_finetune.tune.workers import worker_command, worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    tune = SimpleNamespace(
        devices=["0", "3"],
        workers=4,
        recipe_path="/r.yaml",
        overrides=["a=1"],
        space=SimpleNamespace(path="/s.yaml"),
        output_dir=tmp_path,
        storage_url=None,
        study_name="s",
        seed=0,
        direction="maximize",
        trials=8,
        metric=None,
        trial_seeds=[1, 2],
        folds=None,
        keep_models=False,
        report_to=[],
    )
    envs = [worker_env(tune, i) for i in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "3", "0", "3"]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"4"}
    env = {}
    cmd = worker_command(tune, 2, 1.5, env)
    assert cmd[cmd.index("--worker") + 1] == "2" and "--join" in cmd
    assert cmd[cmd.index("--storage") + 1] == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    assert cmd[cmd.index("--budget-minutes") + 1] == "1.5000" and cmd[cmd.index("--trials") + 1] == "8"
    assert cmd[cmd.index("--trial-seeds") + 1 : cmd.index("--trial-seeds") + 3] == ["1", "2"]
    assert env == {}
    # a password stays off the command line (ps shows it to every user): the URL goes in the environment
    tune.storage_url = "postgresql://tune:secret@db/studies"
    cmd = worker_command(tune, 0, None, env)
    assert "secret" not in " ".join(cmd) and env["HF_FINETUNE_TUNE_STORAGE"] == tune.storage_url
    assert cmd[cmd.index("--storage") + 1] == "env:HF_FINETUNE_TUNE_STORAGE"


def test_a_worker_gives_back_a_trial_asked_for_when_the_count_is_made_up(tmp_path, monkeypatch):
    import types

    import optuna

    from hf_finetune.tune.search import _surplus
    from hf_finetune.tune.study import status_of

    monkeypatch.setenv("HF_FINETUNE_TUNE_HEARTBEAT_S", "0.2")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="hf-finetune-tune", storage=storage)
    tune = types.SimpleNamespace(storage=storage, trials=2)
    study.tell(study.ask(), 1.0)  # trial 0: counted
    study.enqueue_trial({"x": 1.0}, user_attrs={"retry_of": 0, "attempt": 2})
    rerun = study.ask()  # trial 1, from the queue: the second of the two trials
    late = study.ask()  # trial 2, asked by another worker at the same moment: one too many
    assert rerun.user_attrs["retry_of"] == 0
    assert not _surplus(tune, study, rerun)
    assert _surplus(tune, study, late)
    assert status_of(study.get_trials()[late.number]) == "surplus"
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    # a trial from the queue that turns out surplus goes back to the queue, values and attributes kept
    assert _surplus(types.SimpleNamespace(storage=storage, trials=1), study, rerun)
    (queued,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == {"x": 1.0}
    assert queued.user_attrs == {"retry_of": 0, "attempt": 2}


def test_a_journal_file_holds_the_study_and_tune_report_reads_it(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir, epochs=1)
    space = _space(tmp_path, SPACE)
    journal = f"journal:{tmp_path / 'study.journal'}"
    args = ["tune", recipe, "--space", space, "--trials", "2", "--storage", journal, "--no-progress"]
    assert cli.main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    rows = _rows(tmp_path / "a")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert not (tmp_path / "a" / "study.db").exists()  # the study is in the journal, not the tune dir
    # a worker joining a finished study finds the count made up and trains nothing
    assert cli.main([*args, "--join", "--output-dir", str(tmp_path / "b")]) == 0
    assert "2 trials (0 this run" in capsys.readouterr().out
    assert cli.main(["tune", "report", "--storage", journal, "--output-dir", str(tmp_path / "r")]) == 0
    assert _rows(tmp_path / "r") == rows


@pytest.mark.parametrize(
    ("url", "packages", "extra"),
    [
        ("mysql://user@127.0.0.1/tune", "pymysql, mysqlclient", "mysql"),
        ("postgresql://user:secret@127.0.0.1/tune", "psycopg, psycopg2-binary", "postgres"),
    ],
)
def test_a_database_url_without_an_installed_driver_names_the_packages_and_the_extra(
    monkeypatch, url, packages, extra
):
    from hf_finetune.errors import FinetuneError
    from hf_finetune.tune import storage

    monkeypatch.setattr(storage.importlib.util, "find_spec", lambda name: None)  # no driver anywhere
    with pytest.raises(FinetuneError) as info:
        storage.with_driver(url)
    message = str(info.value)
    assert f"install one of {packages} (pip install 'hf-finetune[{extra}]')." in message
    assert "secret" not in message  # the password stays hidden


def test_a_database_url_gets_the_first_installed_driver(monkeypatch):
    from hf_finetune.tune import storage

    installed = {"mysqldb"}  # only the second candidate
    monkeypatch.setattr(
        storage.importlib.util, "find_spec", lambda name: object() if name in installed else None
    )
    assert storage.with_driver("mysql://user:pw@db/tune") == "mysql+mysqldb://user:pw@db/tune"
    assert storage.with_driver("mysql+pymysql://u@db/t") == "mysql+pymysql://u@db/t"  # a named driver is kept
    assert storage.with_driver("sqlite:///x.db") == "sqlite:///x.db"
