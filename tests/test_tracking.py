"""Experiment tracking (`training.report_to`): TensorBoard, trackio and MLflow log offline into local stores,
read back here with each tracker's own reader; a bench with `bench.report_to` makes one run per cell, grouped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hf_finetune import cli, tracking
from hf_finetune.config.load import load_recipe
from hf_finetune.pipeline import train

from .conftest import tiny_recipe, write_recipe, write_sentiment_files
from .test_bench import _bench_file, calibrated  # noqa: F401 (a fixture)

#: the trackers' own variables, which would send the stores elsewhere
TRACKER_ENV = (
    "TENSORBOARD_LOGGING_DIR",
    "TRACKIO_DIR",
    "TRACKIO_SPACE_ID",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "MLFLOW_TAGS",
    tracking.ROOT_ENV,
    tracking.TAGS_ENV,
)
PROJECT = "tiny-tracking"


def _clean_env(mp: pytest.MonkeyPatch) -> None:
    for name in TRACKER_ENV:
        mp.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir, tmp_path_factory):
    """One tiny training (4 epochs of 20 steps, a loss every 5 steps, an evaluation per epoch) reporting to
    all three trackers; its output dir, metrics and the Trainer's log history."""
    root = tmp_path_factory.mktemp("tracked")
    files = write_sentiment_files(root / "data")
    raw = tiny_recipe(
        tiny_model_dir,
        files,
        root / "out",
        training={"report_to": ["tensorboard", "trackio", "mlflow"], "project": PROJECT},
    )
    with pytest.MonkeyPatch.context() as mp:
        _clean_env(mp)
        for name in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):  # unset here, and again afterwards
            mp.setenv(name, "")
            mp.delenv(name)
        metrics = train(load_recipe(raw))
        metrics["MLFLOW_DISABLE_TELEMETRY"] = os.environ.get("MLFLOW_DISABLE_TELEMETRY")
    history = json.loads((root / "out" / "trainer_state.json").read_text())["log_history"]
    return root / "out", metrics, history


def _losses(history) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def _accuracies(history) -> dict[int, float]:
    return {e["step"]: e["eval_accuracy"] for e in history if "eval_accuracy" in e}


def _learned(losses: dict[int, float], accuracy: dict[int, float]) -> None:
    """The curves read back from a store show learning: the loss falls, the last evaluation is right."""
    values = [losses[s] for s in sorted(losses)]
    assert sum(values[-2:]) / 2 < 0.6 * sum(values[:2]) / 2, values
    assert accuracy[max(accuracy)] >= 0.9, accuracy


def test_the_run_learns_and_its_stores_land_in_the_output_dir(tracked_run):
    out, metrics, history = tracked_run
    assert metrics["eval_accuracy"] >= 0.9, metrics
    assert metrics["MLFLOW_DISABLE_TELEMETRY"] == "true"  # MLflow's usage telemetry stays off
    store = out / "tracking"
    assert (store / "mlflow.db").is_file()
    assert (store / "trackio" / f"{PROJECT}.db").is_file()
    assert list((store / "tensorboard" / "out").glob("events.out.tfevents.*"))
    assert not (Path.cwd() / "mlruns").exists() and not (Path.cwd() / "mlflow.db").exists()
    assert sorted(_losses(history)) == list(range(5, 81, 5))  # 16 losses, 4 evaluations (+ the final one)
    assert sorted(set(_accuracies(history))) == [20, 40, 60, 80]


def test_tensorboard_event_files_hold_the_losses_and_evaluations(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, history = tracked_run
    events = EventAccumulator(str(out / "tracking" / "tensorboard" / "out"))
    events.Reload()
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    accuracy = {e.step: e.value for e in events.Scalars("eval/accuracy")}
    assert losses == pytest.approx(_losses(history))
    assert sorted(accuracy) == [20, 40, 60, 80]
    assert accuracy == pytest.approx(_accuracies(history))
    _learned(losses, accuracy)
    tags = json.loads(events.Tensors("tags/text_summary")[0].tensor_proto.string_val[0])
    assert tags["task"] == "text-classification" and tags["seed"] == "7"


def test_mlflow_store_holds_one_run_with_the_metric_history(tracked_run):
    from mlflow import MlflowClient

    out, metrics, history = tracked_run
    client = MlflowClient(f"sqlite:///{out / 'tracking' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(PROJECT)  # training.project is the experiment
    assert experiment.artifact_location.startswith((out / "tracking").resolve().as_uri())
    (run,) = client.search_runs([experiment.experiment_id])  # one run: the final evaluation included
    assert run.info.run_name == "out" and run.info.status == "FINISHED"
    assert run.data.tags["task"] == "text-classification" and run.data.tags["seed"] == "7"
    assert float(run.data.params["learning_rate"]) == 3e-3
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    accuracy = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval_accuracy")}
    assert losses == pytest.approx(_losses(history))
    assert accuracy == pytest.approx(_accuracies(history))
    _learned(losses, accuracy)
    # what is computed after the Trainer's own evaluation (calibrated scores) reaches the run too
    for key in ("eval_temperature", "eval_ece", "eval_ece_calibrated"):
        assert run.data.metrics[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_trackio_database_holds_the_run_and_nothing_left_the_machine(tracked_run):
    out, _, history = tracked_run
    tracking.use_trackio_dir(out / "tracking" / "trackio")
    from trackio.sqlite_storage import SQLiteStorage

    assert SQLiteStorage.get_projects() == [PROJECT]
    assert SQLiteStorage.get_runs(PROJECT) == ["out"]
    logs = SQLiteStorage.get_logs(PROJECT, "out")
    losses = {e["step"]: e["train/loss"] for e in logs if "train/loss" in e}
    accuracy = {e["step"]: e["eval/accuracy"] for e in logs if "eval/accuracy" in e}
    assert losses == pytest.approx(_losses(history))  # at the Trainer's steps, not trackio's own count
    assert accuracy == pytest.approx(_accuracies(history))
    _learned(losses, accuracy)
    config = SQLiteStorage.get_run_config(PROJECT, "out")
    assert config["task"] == "text-classification" and config["learning_rate"] == 3e-3
    assert SQLiteStorage.get_space_id(PROJECT) is None  # no Space, no Hub
    import huggingface_hub.constants

    assert not (Path(huggingface_hub.constants.HF_HOME) / "trackio").exists()  # trackio's default dir


def test_a_finished_runs_recipe_loads_without_its_trackers(tracked_run, monkeypatch):
    """eval, predict and push read the saved recipe.yaml: they need no tracker installed."""
    out, _, _ = tracked_run
    for name in tracking.TRACKERS:
        monkeypatch.setitem(sys.modules, name, None)
    saved = load_recipe(out / "recipe.yaml", defaults=False)
    assert saved.training.report_to == ["tensorboard", "trackio", "mlflow"]


def test_a_trackers_own_variable_wins_over_the_output_dir(tmp_path, monkeypatch):
    _clean_env(monkeypatch)
    root = tracking.store_root(tmp_path / "out")
    assert root == tmp_path / "out" / "tracking"
    assert tracking.tensorboard_dir(root, "run") == root / "tensorboard" / "run"
    assert tracking.trackio_dir(root) == root / "trackio"
    assert tracking.mlflow_uri(root) == f"sqlite:///{(root / 'mlflow.db').resolve()}"
    monkeypatch.setenv(tracking.ROOT_ENV, str(tmp_path / "shared"))
    assert tracking.store_root(tmp_path / "out") == tmp_path / "shared"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "tio"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert tracking.tensorboard_dir(root, "run") == tmp_path / "tb"
    assert tracking.trackio_dir(root) == tmp_path / "tio"
    assert tracking.mlflow_uri(root) == "http://localhost:5000"
    assert "mlflow ui --backend-store-uri http://localhost:5000" in tracking.how_to_open(
        "mlflow", root, "r", "p"
    )
    # bench and tune: a TENSORBOARD_LOGGING_DIR of the user's gets a directory per run under it
    env = tracking.child_env(["tensorboard"], tmp_path / "bench", "alpha/full/seed1", {"seed": 1})
    assert env["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tb" / "alpha" / "full" / "seed1")
    assert env[tracking.ROOT_ENV] == str(tmp_path / "shared")  # the user's root stays
    assert json.loads(env[tracking.TAGS_ENV]) == {"seed": "1"}
    assert tracking.child_env([], tmp_path, "x", {}) is None  # no trackers: the inherited environment


@pytest.mark.parametrize("tracker", ["tensorboard", "trackio", "mlflow"])
def test_a_tracker_that_is_not_installed_fails_before_the_model_loads(
    tracker, tmp_path, tiny_model_dir, sentiment_files, no_weights, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, tracker, None)  # importlib finds no such package
    recipe = tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "out")
    args = ["train", write_recipe(tmp_path / "recipe.yaml", recipe), f"training.report_to={tracker}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"`training.report_to`: {tracker} is not installed" in err, err
    assert "pip install 'hf-finetune[track]'" in err
    assert not (tmp_path / "out").exists()


def test_a_tune_search_names_and_tags_a_run_per_trial(tmp_path, tiny_model_dir, monkeypatch):
    from hf_finetune.tune import prepare_tune
    from hf_finetune.tune.setup import tracked

    _clean_env(monkeypatch)
    files = write_sentiment_files(tmp_path / "data")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tiny_model_dir, files, tmp_path / "unused"))
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  training.learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    out = tmp_path / "search"
    tune = prepare_tune(recipe, [], space, output_dir=out, trials=2, report_to=["mlflow", "trackio"])
    values = {"training.learning_rate": 0.002}
    overrides, env = tracked(tune, out / "trials" / "trial-003", None, values)
    assert overrides == [
        'training.report_to=["mlflow", "trackio"]',
        'training.project="search"',
        'training.run_name="trial-003"',
    ]
    assert env[tracking.ROOT_ENV] == str((out / "tracking").resolve())
    assert json.loads(env[tracking.TAGS_ENV]) == {
        "tune": "search",
        "seed": "7",
        "trial": "3",
        "group": "trial-003",
        "training.learning_rate": "0.002",
    }
    # the overrides load: the trial's run is named, in the search's project
    trial = load_recipe(recipe, overrides)
    assert trial.training.run_name == "trial-003" and trial.training.project == "search"
    assert tracked(tune, out / "trials" / "trial-003" / "seed5", 5, values)[0][-1] == (
        'training.run_name="trial-003/seed5"'
    )
    assert tracked(tune, out / "confirm" / "best" / "seed11", 11, values)[0][-1] == (
        'training.run_name="confirm/best/seed11"'
    )
    tune.report_to = []
    assert tracked(tune, out / "trials" / "trial-003", None, values) == ([], None)


@pytest.mark.usefixtures("calibrated")
def test_a_bench_with_tracking_makes_one_run_per_cell_in_one_store(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    _clean_env(monkeypatch)
    strategies = {"full": {}, "frozen-emb": {"strategy": {"freeze_embeddings": True}}}
    bench_file = _bench_file(tmp_path, tiny_model_dir, strategies, tasks=("alpha",))
    overrides = ["bench.report_to=[tensorboard, trackio, mlflow]", "training.logging_steps=2"]
    assert cli.main(["bench", bench_file, *overrides, "--no-progress"]) == 0
    assert "2 cells: 2 ran" in capsys.readouterr().out
    out = tmp_path / "bench-out"
    records = {r["strategy"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    labels = {f"alpha/{s}/seed1" for s in strategies}
    store = out / "tracking"  # one store for the bench, none in the cells' run dirs
    assert not list((out / "cells").rglob("tracking"))

    # TensorBoard: a run directory per cell
    runs = {str(p.parent.relative_to(store / "tensorboard")) for p in store.rglob("events.out.tfevents.*")}
    assert runs == labels

    # MLflow: the bench is the experiment, a run per cell, tagged, its score the cell's
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bench-out")
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in found) == sorted(labels)
    for run in found:
        tags = run.data.tags
        assert run.info.run_name == f"{tags['task']}/{tags['strategy']}/seed{tags['seed']}"
        assert tags["bench"] == "bench-out" and tags["group"] == f"alpha/{tags['strategy']}"
        assert run.data.metrics["eval_accuracy"] == pytest.approx(records[tags["strategy"]]["score"])
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in losses] == [2, 4]  # bench.max_steps=4 reached the cell
    assert [e.name for e in client.search_experiments()] in (["bench-out", "Default"], ["bench-out"])

    # trackio: the bench is the project, a run per cell
    tracking.use_trackio_dir(store / "trackio")
    from trackio.sqlite_storage import SQLiteStorage

    assert sorted(SQLiteStorage.get_runs("bench-out")) == sorted(labels)
    for strategy in strategies:
        logs = SQLiteStorage.get_logs("bench-out", f"alpha/{strategy}/seed1")
        (accuracy,) = [e["eval/accuracy"] for e in logs if "eval/accuracy" in e]
        assert accuracy == pytest.approx(records[strategy]["score"])
