"""Test sets: a labelled test split is scored once after training (test_* metrics in all_results.json and the
card, predictions_test.jsonl), an unlabelled one is predicted only, neither changes training; and
`hf-finetune eval RUN --file` scores any labelled file through the saved model's labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import DataError
from hf_finetune.pipeline import train, validate

from .conftest import sentiment_rows, tiny_recipe, write_jsonl

NAMES = {"negative", "positive"}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Three trainings of one recipe on string labels: with a labelled test file (`data.files.test`), with
    an unlabelled one (GLUE style: the label column holds -1 everywhere), and without a test split."""
    root = tmp_path_factory.mktemp("test-split")
    files = {
        "train": str(write_jsonl(root / "train.jsonl", sentiment_rows(320, seed=1, as_names=True))),
        "validation": str(write_jsonl(root / "validation.jsonl", sentiment_rows(96, seed=2, as_names=True))),
    }
    test_rows = sentiment_rows(80, seed=3, as_names=True)
    labelled = str(write_jsonl(root / "test.jsonl", test_rows))
    unlabelled = str(write_jsonl(root / "blind.jsonl", [{**row, "label": -1} for row in test_rows]))
    outs = {}
    for name, extra, data in (
        ("labelled", {"test": labelled}, {}),
        ("unlabelled", {"blind": unlabelled}, {"test_split": "blind"}),
        ("none", {}, {}),
    ):
        out = root / name
        recipe = tiny_recipe(tiny_model_dir, {**files, **extra}, out)
        recipe["data"].update(data)
        train(load_recipe(recipe))
        outs[name] = out
    outs["test_file"] = Path(labelled)
    return outs


def test_a_labelled_test_split_is_scored_once_and_predicted(runs):
    out = runs["labelled"]
    assert (
        yaml.safe_load((out / "recipe.yaml").read_text())["data"]["test_split"] == "test"
    )  # data.files.test
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] >= 0.85, results  # it learned: the cue words decide, chance is 0.5
    assert results["test_accuracy"] >= 0.85, results
    assert results["test_samples"] == 80 and "test_loss" in results and "test_f1" in results
    assert json.loads((out / "test_results.json").read_text())["test_accuracy"] == results["test_accuracy"]
    # scored after training, never during it: no evaluation in the log saw the test split
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert not [key for entry in history for key in entry if key.startswith("test_")]

    predictions = _lines(out / "predictions_test.jsonl")
    gold = _lines(runs["test_file"])
    assert len(predictions) == len(gold) == 80
    for row, source in zip(predictions, gold):
        assert set(row) == {"sentence", "label", "score"} and row["sentence"] == source["sentence"]
        assert row["label"] in NAMES and 0.5 <= row["score"] <= 1.0
    # the predictions are the scored model's: their accuracy is test_accuracy
    right = sum(row["label"] == source["label"] for row, source in zip(predictions, gold))
    assert right / len(gold) == pytest.approx(results["test_accuracy"])

    card = (out / "README.md").read_text()
    assert "## Test results" in card and "held-out `test` split (80 examples)" in card
    assert f"- accuracy: {results['test_accuracy']:.4f}" in card.split("## Test results")[1]
    meta = yaml.safe_load(card.split("---")[1])
    splits = {
        entry["dataset"]["split"]: {m["type"]: m["value"] for m in entry["metrics"]}
        for entry in meta["model-index"][0]["results"]
    }
    assert splits["test"]["accuracy"] == pytest.approx(results["test_accuracy"])
    assert splits["validation"]["accuracy"] == pytest.approx(results["eval_accuracy"])


def test_an_unlabelled_test_split_is_predicted_only(runs):
    out = runs["unlabelled"]
    results = json.loads((out / "all_results.json").read_text())
    assert not [key for key in results if key.startswith("test_")]
    assert not (out / "test_results.json").exists()
    assert "## Test results" not in (out / "README.md").read_text()
    predictions = _lines(out / "predictions_blind.jsonl")
    assert len(predictions) == 80 and {row["label"] for row in predictions} <= NAMES
    # the same model as the labelled run's: the same predictions
    assert predictions == _lines(runs["labelled"] / "predictions_test.jsonl")


def test_the_test_split_does_not_change_training(runs):
    without = _weights(runs["none"])
    for name in ("labelled", "unlabelled"):
        weights = _weights(runs[name])
        assert weights.keys() == without.keys()
        assert all((weights[k] == without[k]).all() for k in without), name
    results = json.loads((runs["none"] / "all_results.json").read_text())
    labelled = json.loads((runs["labelled"] / "all_results.json").read_text())
    assert results["eval_accuracy"] == labelled["eval_accuracy"]
    assert not (runs["none"] / "predictions_test.jsonl").exists()


def test_eval_file_scores_any_labelled_file_like_its_validation_split(runs, tmp_path, capsys):
    out = runs["labelled"]
    heldout = write_jsonl(tmp_path / "heldout.jsonl", sentiment_rows(50, seed=11, as_names=True))
    # the same file as the run's validation split, through its recipe
    assert cli.main(["eval", str(out), f"data.files.validation={heldout}"]) == 0
    as_validation = json.loads(capsys.readouterr().out)
    assert as_validation["split"] == "validation"
    # and as a file: no training data named, its own results file
    assert cli.main(["eval", str(out), "--file", str(heldout)]) == 0
    as_file = json.loads(capsys.readouterr().out)
    written = json.loads((out / "eval_heldout_results.json").read_text())
    assert written == as_file and as_file["split"] == "heldout" and as_file["file"] == str(heldout)
    for key in ("eval_accuracy", "eval_f1", "eval_loss"):
        assert as_file[key] == pytest.approx(as_validation[key]), key
    assert as_file["eval_samples"] == 50 and as_file["eval_accuracy"] >= 0.85
    assert not (out / "predictions_heldout.jsonl").exists()

    assert cli.main(["eval", str(out), "--file", str(heldout), "--name", "mine", "--predictions"]) == 0
    capsys.readouterr()
    assert (
        json.loads((out / "eval_mine_results.json").read_text())["eval_accuracy"] == as_file["eval_accuracy"]
    )
    predictions = _lines(out / "predictions_mine.jsonl")
    assert len(predictions) == 50 and {row["label"] for row in predictions} <= NAMES


def test_a_question_answering_test_split_scores_its_own_examples(tiny_model_dir, tmp_path):
    """QA maps features back to examples: the test split is scored against its own answers (test file =
    validation file gives the validation scores), and its predictions are spans of their contexts."""
    from .test_question_answering import colour_files, qa_recipe

    files = colour_files(tmp_path / "data", n_train=160, n_eval=30)
    recipe = qa_recipe(tiny_model_dir, {**files, "test": files["validation"]}, tmp_path / "out")
    recipe["training"].update(num_train_epochs=3, eval_strategy="no", train_sampling_strategy="random")
    results = train(load_recipe(recipe))
    assert results["eval_exact_match"] >= 80, results  # it learned (measured: 100)
    for metric in ("exact_match", "f1"):
        assert results[f"test_{metric}"] == pytest.approx(results[f"eval_{metric}"])
    assert results["test_samples"] == 30
    predictions = _lines(tmp_path / "out" / "predictions_test.jsonl")
    assert len(predictions) == 30
    for row in predictions:
        assert set(row) == {"question", "context", "answer", "score", "start", "end"}
        assert row["context"][row["start"] : row["end"]] == row["answer"]


def test_labelled_means_a_label_column_with_values(tiny_model_dir, tmp_path, no_weights):
    """`validate` says what training will do with the test split, without weights; the test split is kept
    whole (max_eval_samples cuts evaluation splits only)."""
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", sentiment_rows(40, seed=1))),
        "validation": str(write_jsonl(tmp_path / "validation.jsonl", sentiment_rows(30, seed=2))),
    }
    tests = {
        "labelled": sentiment_rows(30, seed=3),
        "partly-null": [
            {**r, "label": None if i % 2 else r["label"]} for i, r in enumerate(sentiment_rows(4, 3))
        ],
        "minus-one": [{**r, "label": -1} for r in sentiment_rows(30, seed=3)],
        "null": [{**r, "label": None} for r in sentiment_rows(30, seed=3)],
        "no-column": [{"sentence": r["sentence"]} for r in sentiment_rows(30, seed=3)],
    }
    for name, rows in tests.items():
        test = str(write_jsonl(tmp_path / f"{name}.jsonl", rows))
        recipe = tiny_recipe(tiny_model_dir, {**files, "test": test}, tmp_path / "out")
        recipe["data"]["max_eval_samples"] = 10
        if name == "partly-null":  # labelled, so every row needs a label: the error names the rows
            with pytest.raises(DataError, match=r"test split.*rows? 1\b"):
                validate(load_recipe(recipe))
            continue
        summary = validate(load_recipe(recipe))
        assert summary["splits"] == {"train": 40, "validation": 10, "test": len(rows)}
        expected = "test (labelled)" if name == "labelled" else "test (no labels)"
        assert summary["test_split"].startswith(expected), (name, summary["test_split"])
