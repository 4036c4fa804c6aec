"""Cross-validation: `data.folds`/`data.fold` carve one fold of the training split as the evaluation split,
and `hf-finetune tune --folds K` scores each trial by the mean over the K folds."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import FinetuneError
from hf_finetune.tasks import get_task

from .conftest import tiny_recipe
from .test_tune import _recipe, _rows, _space


def _fold(tiny_model_dir, sentiment_files, tmp_path, folds: int, fold: int, **data):
    recipe = tiny_recipe(
        tiny_model_dir,
        {"train": sentiment_files["train"]},
        tmp_path / "out",
        data={"folds": folds, "fold": fold, "eval_split": "fold", **data},
    )
    loaded = load_recipe(recipe)
    task = get_task(loaded.task.name).task_class(loaded)
    return task.load(["train", "fold"])


def test_the_folds_partition_the_training_split_stratified_and_the_same_every_run(
    tiny_model_dir, sentiment_files, tmp_path
):
    every = Counter()
    labels = Counter(json.loads(line)["label"] for line in open(sentiment_files["train"]))
    for fold in range(4):
        raw = _fold(tiny_model_dir, sentiment_files, tmp_path, 4, fold)
        held, rest = set(raw["fold"]["idx"]), set(raw["train"]["idx"])
        assert not held & rest and len(held | rest) == 320  # a fold and the rest: the whole split, once
        every.update(held)
        # stratified: each fold holds each label's share, within one row
        for label, count in Counter(raw["fold"]["label"]).items():
            assert abs(count - labels[label] / 4) <= 1
        again = _fold(tiny_model_dir, sentiment_files, tmp_path, 4, fold)
        assert again["fold"]["idx"] == raw["fold"]["idx"]
    assert set(every.values()) == {1} and len(every) == 320  # every row is evaluated on exactly once
    other_seed = _fold(tiny_model_dir, sentiment_files, tmp_path, 4, 0, split_seed=1)
    assert other_seed["fold"]["idx"] != _fold(tiny_model_dir, sentiment_files, tmp_path, 4, 0)["fold"]["idx"]


def test_a_label_with_fewer_rows_than_folds_is_an_error(tiny_model_dir, sentiment_files, tmp_path):
    with pytest.raises(FinetuneError, match=r"`data.folds`: 200 folds of the 320 rows .* too few rows"):
        _fold(tiny_model_dir, sentiment_files, tmp_path, 200, 0)


def test_tune_folds_scores_each_trial_by_the_mean_over_the_folds(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, tiny_model_dir, epochs=1)
    space = _space(
        tmp_path,
        {
            "start_with": ["recipe"],
            "pruner": "none",
            "parameters": {"training.learning_rate": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
        },
    )
    out = tmp_path / "tune"
    args = ["tune", recipe, "--space", space, "--output-dir", str(out), "--trials", "2", "--folds", "3"]
    assert cli.main([*args, "--no-progress", "--confirm-seeds", "5"]) == 0
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:
        scores = row["fold_scores"]
        assert list(scores) == ["0", "1", "2"]
        assert row["score"] == pytest.approx(sum(scores.values()) / 3)
        # the pruner saw the running mean after folds 1 and 2 (at 33% and 67%), not the last
        assert row["intermediate"] == pytest.approx(
            {"33": scores["0"], "67": (scores["0"] + scores["1"]) / 2}
        )
        for fold in range(3):  # each fold trained on the others and evaluated on its own rows
            saved = load_recipe(f"{row['output_dir']}/fold{fold}/recipe.yaml")
            assert (saved.data.folds, saved.data.fold, saved.data.eval_split) == (3, fold, "fold")
            assert saved.training.learning_rate == row["params"]["training.learning_rate"]
    board = (out / "leaderboard.md").read_text()
    assert "per fold" in board and "once per fold of the training split" in board
    # the best recipe and the confirmation train on the whole training split, scored on its evaluation split
    best = load_recipe(out / "best_recipe.yaml")
    assert best.data.folds is None and best.data.eval_split == "validation"
    confirmed = [json.loads(line) for line in (out / "confirm.jsonl").read_text().splitlines()]
    assert {c["status"] for c in confirmed} == {"ok"}
