"""`training.early_stopping`: the settings it implies, its checks before weights load, a run that stops when
the metric plateaus (and one that keeps training while it improves), the best model kept, resume, bench, tune."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import RecipeError
from hf_finetune.pipeline import recipe_differences, train, validate

from .conftest import REPO, sentiment_rows, tiny_recipe, write_jsonl, write_recipe, write_sentiment_files

PATIENCE = 2
EVAL_EVERY = 20  # an epoch of the 320 training rows
# the tiny BERT learns the cue words in its third epoch (accuracy 0.59, 0.98, 1.0); nothing is left to gain
# after that, so the run stops two evaluations later, long before the 10 epochs (200 steps) it is given
STOPPING = {"patience": PATIENCE, "threshold": 0.01}


def _recipe(model_dir, files, out, **training) -> dict:
    recipe = tiny_recipe(
        model_dir,
        files,
        out,
        training={
            "num_train_epochs": 10,
            "eval_strategy": "steps",
            "eval_steps": EVAL_EVERY,
            "early_stopping": STOPPING,
            **training,
        },
    )
    recipe["training"].pop("save_strategy")  # early stopping picks it
    return recipe


def _results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def _evaluations(out: Path, metric: str = "eval_accuracy") -> dict[int, float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h[metric] for h in history if metric in h}


# ------------------------------------------------------------------------------------------------
# The recipe
# ------------------------------------------------------------------------------------------------
def test_the_loader_sets_what_early_stopping_needs_and_the_saved_recipe_keeps_it(
    tmp_path, tiny_model_dir, sentiment_files
):
    recipe = load_recipe(_recipe(tiny_model_dir, sentiment_files, tmp_path / "out"))
    args = recipe.training
    assert (recipe.early_stopping.patience, recipe.early_stopping.threshold) == (2, 0.01)
    assert args.load_best_model_at_end is True
    assert (str(args.save_strategy.value), args.save_steps) == (
        "steps",
        EVAL_EVERY,
    )  # a checkpoint per evaluation
    assert (args.metric_for_best_model, args.greater_is_better) == ("eval_accuracy", True)  # the headline
    # one checkpoint would be the best alone once training ends (also when a signal stops it): no resume
    assert args.save_total_limit is None or args.save_total_limit >= 2
    saved = recipe.to_dict()["training"]
    assert saved["early_stopping"] == STOPPING and saved["load_best_model_at_end"] is True
    assert "metric_for_best_model" not in saved  # derived from the task, as each load does again
    path = tmp_path / "recipe.yaml"
    recipe.save(path)
    assert recipe_differences(path, recipe) == []  # a resume sees the same run
    again = load_recipe(path)
    assert again.early_stopping == recipe.early_stopping and again.to_dict() == recipe.to_dict()

    # the short forms; off by default
    base = tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "o")
    del base["training"]["save_strategy"]
    assert load_recipe(base).early_stopping is None
    assert load_recipe(base, ["training.early_stopping=true"]).early_stopping.patience == 3
    assert load_recipe(base, ["training.early_stopping=4"]).early_stopping.patience == 4
    assert load_recipe(base, ["training.early_stopping=null"]).early_stopping is None
    epoch = load_recipe(base, ["training.early_stopping=true"]).training
    assert str(epoch.save_strategy.value) == "epoch"  # follows eval_strategy: epoch
    # steps without eval_steps of the recipe's own: 10 evaluations a run, a checkpoint at each
    steps = load_recipe(base, ["training.early_stopping=true", "training.eval_strategy=steps"]).training
    assert (steps.eval_steps, steps.save_steps) == (0.1, 0.1)
    # a loss-like metric is better lower; the recipe's own greater_is_better wins
    loss = load_recipe(base, ["training.early_stopping=true", "training.metric_for_best_model=loss"]).training
    assert (loss.metric_for_best_model, loss.greater_is_better) == ("loss", False)
    mse = load_recipe(
        base,
        [
            "training.early_stopping=true",
            "training.metric_for_best_model=mse",
            "training.greater_is_better=true",
        ],
    ).training
    assert mse.greater_is_better is True
    # a checkpoint every other evaluation is the recipe's choice, and the Trainer's rule allows it
    every_other = load_recipe(
        base,
        [
            "training.early_stopping=true",
            "training.eval_strategy=steps",
            "training.eval_steps=5",
            "training.save_strategy=steps",
            "training.save_steps=10",
        ],
    ).training
    assert (every_other.eval_steps, every_other.save_steps) == (5, 10)


def test_bad_settings_fail_naming_the_fields(tmp_path, tiny_model_dir, sentiment_files):
    base = _recipe(tiny_model_dir, sentiment_files, tmp_path / "out")
    cases = [
        (["training.early_stopping.threshold=-0.1"], "training.early_stopping.threshold", "0 or a positive"),
        (
            ["training.early_stopping.patients=2"],
            "training.early_stopping.patients",
            "did you mean: patience",
        ),
        (["training.early_stopping=often"], "training.early_stopping", "expected"),
        (["training.save_strategy=epoch"], "training.save_strategy", "`training.eval_strategy` is `steps`"),
        (["training.save_total_limit=1"], "training.save_total_limit", "set it to 2 (the best checkpoint"),
    ]
    for overrides, field, text in cases:
        with pytest.raises(RecipeError) as caught:
            load_recipe(base, overrides)
        assert caught.value.field == field and text in str(caught.value), str(caught.value)


def test_validate_shows_it_and_monitors_the_metric_the_evaluation_reports(
    tmp_path, tiny_model_dir, sentiment_files, no_weights
):
    summary = validate(load_recipe(_recipe(tiny_model_dir, sentiment_files, tmp_path / "out")))
    assert summary["early_stopping"] == (
        "patience 2 evaluations on eval_accuracy (higher is better, threshold 0.01); evaluates every 20 steps, "
        "saves a checkpoint at each evaluation (steps) and loads the best at the end"
    )
    # regression reports Pearson, not accuracy: the headline metric follows once the data says regression
    scores = [{"sentence": r["sentence"], "label": r["label"] + 0.5} for r in sentiment_rows(40, seed=3)]
    files = {
        "train": str(write_jsonl(tmp_path / "reg" / "train.jsonl", scores)),
        "validation": str(write_jsonl(tmp_path / "reg" / "validation.jsonl", scores[:10])),
    }
    recipe = load_recipe(_recipe(tiny_model_dir, files, tmp_path / "reg-out"))
    summary = validate(recipe)
    assert recipe.training.metric_for_best_model == "eval_pearson" and recipe.training.greater_is_better
    assert "on eval_pearson (higher is better" in summary["early_stopping"]
    # multi-label reports F1 and subset accuracy: no headline metric among them, so the recipe must name one
    tags = [{"sentence": r["sentence"], "label": ["a", "b"][: 1 + r["label"]]} for r in sentiment_rows(40, 4)]
    files = {
        "train": str(write_jsonl(tmp_path / "ml" / "train.jsonl", tags)),
        "validation": str(write_jsonl(tmp_path / "ml" / "validation.jsonl", tags[:10])),
    }
    with pytest.raises(RecipeError) as caught:
        validate(load_recipe(_recipe(tiny_model_dir, files, tmp_path / "ml-out")))
    assert caught.value.field == "training.early_stopping"
    assert "set `training.metric_for_best_model`" in str(caught.value) and "eval_f1_micro" in str(
        caught.value
    )
    chosen = load_recipe(
        _recipe(tiny_model_dir, files, tmp_path / "ml-out"), ["training.metric_for_best_model=f1_micro"]
    )
    assert "on eval_f1_micro" in validate(chosen)["early_stopping"]


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def test_a_plateau_stops_the_run_and_the_best_model_is_the_one_saved(
    tmp_path, tiny_model_dir, sentiment_files
):
    out = tmp_path / "out"
    # every checkpoint kept (up to 5), so the last one is there to compare with
    results = train(load_recipe(_recipe(tiny_model_dir, sentiment_files, out, save_total_limit=5)))
    evaluations = _evaluations(out)
    best, stopped = results["best_step"], results["stopped_at_step"]
    assert results["early_stopping"] == {
        "patience": PATIENCE,
        "threshold": 0.01,
        "metric": "eval_accuracy",
        "greater_is_better": True,
    }
    assert results["stopped_early"] is True and results["scheduled_steps"] == 200
    # it learned, then stopped after `patience` evaluations without a gain over the threshold
    assert results["best_metric"] == evaluations[best] >= 0.9
    assert stopped == best + PATIENCE * EVAL_EVERY < 200 and max(evaluations) == stopped
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == stopped
    assert all(evaluations[s] <= evaluations[best] + 0.01 for s in evaluations if s > best)
    # the model saved is the best evaluation's: its weights, and its score in the final evaluation
    assert results["eval_accuracy"] == evaluations[best]
    final = load_file(out / "model.safetensors")
    at_best = load_file(out / f"checkpoint-{best}" / "model.safetensors")
    at_stop = load_file(out / f"checkpoint-{stopped}" / "model.safetensors")  # the last model, not kept
    assert final.keys() == at_best.keys() == at_stop.keys()
    assert all((final[k] == at_best[k]).all() for k in final)
    assert not all((final[k] == at_stop[k]).all() for k in final)
    card = (out / "README.md").read_text()
    assert (
        f"Training stopped early at step {stopped} of 200 (patience 2 on accuracy); best at step {best}"
        in card
    )
    assert "- early_stopping: patience 2, threshold 0.01, on accuracy" in card


def test_a_metric_that_keeps_improving_keeps_the_run_going(tmp_path, tiny_model_dir, sentiment_files):
    # the validation loss falls at every evaluation of this run (0.69, 0.68, 0.21, 0.03, 0.02): no reason to stop
    out = tmp_path / "out"
    recipe = _recipe(
        tiny_model_dir,
        sentiment_files,
        out,
        num_train_epochs=5,
        metric_for_best_model="loss",
        early_stopping={"patience": PATIENCE},
    )
    results = train(load_recipe(recipe))
    losses = _evaluations(out, "eval_loss")
    assert results["stopped_early"] is False and results["stopped_at_step"] is None
    assert max(losses) == results["scheduled_steps"] == 100  # every scheduled step trained
    assert results["early_stopping"]["greater_is_better"] is False
    assert list(losses.values()) == sorted(losses.values(), reverse=True)
    assert results["best_step"] == 100 and losses[100] < 0.1  # it learned, to the last step
    assert results["eval_accuracy"] == 1.0
    assert "did not stop the run" in (out / "README.md").read_text()


# ------------------------------------------------------------------------------------------------
# Resume
# ------------------------------------------------------------------------------------------------
CHILD = REPO / "tests" / "helpers" / "faulty_train.py"


def _run(recipe_path: str, *args: str, fault: str = "none", step: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(CHILD), fault, str(step), "train", recipe_path, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_an_interrupted_run_resumes_with_its_patience_and_stops_where_a_straight_run_does(
    tmp_path, tiny_model_dir, sentiment_files
):
    straight = tmp_path / "straight"
    path = write_recipe(tmp_path / "straight.yaml", _recipe(tiny_model_dir, sentiment_files, straight))
    proc = _run(path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _results(straight)
    best, stopped = expected["best_step"], expected["stopped_at_step"]
    assert expected["stopped_early"] and stopped == best + PATIENCE * EVAL_EVERY

    # stopped by SIGTERM between the two evaluations without a gain: its checkpoint holds a patience count of 1
    out = tmp_path / "interrupted"
    path = write_recipe(tmp_path / "interrupted.yaml", _recipe(tiny_model_dir, sentiment_files, out))
    stop_at = best + EVAL_EVERY + 2
    proc = _run(path, fault="SIGTERM", step=stop_at)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    state = json.loads((out / f"checkpoint-{stop_at}" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["EarlyStopping"]["attributes"]["early_stopping_patience_counter"] == 1
    assert state["best_global_step"] == best

    proc = _run(path, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = _results(out)
    for key in ("stopped_early", "stopped_at_step", "best_step", "best_metric", "eval_accuracy"):
        assert resumed[key] == expected[key], key
    assert _evaluations(out) == _evaluations(straight)
    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


# ------------------------------------------------------------------------------------------------
# Bench and tune
# ------------------------------------------------------------------------------------------------
def test_a_bench_cell_keeps_the_evaluations_and_records_where_it_stopped(tmp_path, tiny_model_dir):
    from hf_finetune.bench import load_bench, read_results

    files = write_sentiment_files(tmp_path / "data")
    recipe = tiny_recipe(tiny_model_dir, files, tmp_path / "unused", training={"num_train_epochs": 10})
    (tmp_path / "alpha.yaml").write_text(yaml.safe_dump(recipe))
    overlay = {
        "training": {
            "early_stopping": STOPPING,
            "eval_strategy": "steps",
            "eval_steps": EVAL_EVERY,
            "save_strategy": "steps",
        }
    }
    bench = {
        "bench": {"output_dir": str(tmp_path / "bench-out"), "seeds": [1], "max_steps": None},
        "tasks": {"alpha": "alpha.yaml"},
        "strategies": {"stopping": overlay, "plain": {}},
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench, sort_keys=False))

    cells = {c.strategy: c for c in load_bench(path).cells()}
    plain, stopping = cells["plain"].recipe.training, cells["stopping"].recipe.training
    assert str(plain.eval_strategy.value) == "no" and not plain.load_best_model_at_end  # one evaluation
    assert str(stopping.eval_strategy.value) == "steps" and stopping.load_best_model_at_end

    del bench["strategies"]["plain"]  # only the cell with early stopping trains
    path.write_text(yaml.safe_dump(bench, sort_keys=False))
    assert cli.main(["bench", str(path), "--no-progress"]) == 0
    record = {r["strategy"]: r for r in read_results(tmp_path / "bench-out" / "results.jsonl")}["stopping"]
    assert record["status"] == "ok" and record["stopped_early"] is True
    assert record["train_steps"] == record["stopped_at_step"] == record["best_step"] + PATIENCE * EVAL_EVERY
    assert record["scheduled_steps"] == 200 and record["score"] >= 0.9
    cell_dir = tmp_path / "bench-out" / "cells" / "alpha" / "stopping" / "seed1"
    assert not list(cell_dir.glob("checkpoint-*")) and not list(cell_dir.glob("*.safetensors"))
    table = (tmp_path / "bench-out" / "results.md").read_text()
    assert f"| {record['train_steps']} (stopped early: 1/1) |" in table


def test_a_tune_trial_stopped_early_is_finished_and_told_apart_from_a_pruned_one(tmp_path, tiny_model_dir):
    # trial 0 learns and stops early on its recipe's patience; trial 1 cannot learn and is pruned
    files = write_sentiment_files(tmp_path / "data")
    recipe = _recipe(tiny_model_dir, files, tmp_path / "unused", eval_strategy="epoch")  # 10 evaluations
    del recipe["training"]["eval_steps"]
    recipe_path = write_recipe(tmp_path / "recipe.yaml", recipe)
    space = {
        "start_with": [{"training.learning_rate": 3.0e-3}, {"training.learning_rate": 1.0e-7}],
        "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
        "parameters": {"training.learning_rate": {"choices": [3.0e-3, 1.0e-7]}},
    }
    space_path = tmp_path / "space.yaml"
    space_path.write_text(yaml.safe_dump(space, sort_keys=False))
    out = tmp_path / "tune"
    args = ["tune", recipe_path, "--space", str(space_path), "--trials", "2", "--output-dir", str(out)]
    assert cli.main([*args, "--no-progress"]) == 0
    good, bad = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert good["status"] == "ok" and good["stopped_early"] is True
    assert good["stopped_at_percent"] < 100 and good["score"] >= 0.9
    # its last report to the study was the evaluation it stopped at (an epoch: 20 of its 200 steps)
    assert int(max(good["intermediate"], key=int)) == good["stopped_at_percent"]
    assert good["stopped_at_step"] == 2 * good["stopped_at_percent"]
    assert bad["status"] == "pruned" and "stopped_early" not in bad
    assert bad["pruned_at_percent"] <= good["stopped_at_percent"]
    board = (out / "leaderboard.md").read_text()
    assert f"| ok (stopped early at {good['stopped_at_percent']}%) |" in board and "| pruned |" in board
    assert "(1 stopped early by the recipe's early stopping)" in board
    # the best recipe trains as the trial did: early stopping and its checkpoints kept
    best = yaml.safe_load((out / "best_recipe.yaml").read_text())["training"]
    assert best["early_stopping"] == STOPPING and best.get("save_strategy") != "no"
    assert best["load_best_model_at_end"] is True
