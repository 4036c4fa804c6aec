"""Each bad input stops before any weights load, exits 2 and prints one message naming the field or file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_finetune import cli

from .conftest import sentiment_rows, tiny_recipe, write_jsonl, write_recipe


@pytest.fixture(autouse=True)
def _every_test_refuses_weights(no_weights):
    """Every error in this module must come before any weights load (conftest.no_weights)."""


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.fixture()
def good(tiny_model_dir, sentiment_files, tmp_path):
    return tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "out")


def test_good_recipe_validates(capsys, good, tmp_path):
    code, err = run_cli(capsys, "validate", write_recipe(tmp_path / "r.yaml", good))
    assert code == 0, err


def test_yaml_syntax_error(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task:\n  name: [text-classification\n")
    code, err = run_cli(capsys, "validate", str(path))
    assert code == 2 and "bad.yaml: YAML syntax error at line" in err


def test_unknown_key(capsys, good, tmp_path):
    good["data"]["max_train_sampels"] = 10
    code, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", good))
    assert code == 2 and "`data.max_train_sampels`: unknown field (did you mean: max_train_samples" in err


def test_wrong_type(capsys, good, tmp_path):
    code, err = run_cli(
        capsys, "train", write_recipe(tmp_path / "r.yaml", good), "training.num_train_epochs=many"
    )
    assert code == 2 and "`training.num_train_epochs`: expected a number, got 'many'" in err


def test_missing_data_file(capsys, good, tmp_path):
    good["data"]["files"]["validation"] = str(tmp_path / "nope.jsonl")
    code, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", good))
    assert code == 2 and "`data.files.validation`: file not found:" in err and "nope.jsonl" in err


def test_unknown_column(capsys, good, tmp_path):
    good["task"]["text_column"] = "review"
    code, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", good))
    assert code == 2
    assert (
        "`task.text_column`: column 'review' not found in the train split; columns are: idx, sentence, label"
        in err
    )


def test_unseen_label_in_validation(capsys, good, tmp_path):
    rows = sentiment_rows(20, seed=5, as_names=True)
    rows[3]["label"] = "neutral"
    good["data"]["files"] = {
        "train": str(write_jsonl(tmp_path / "t.jsonl", sentiment_rows(40, 6, as_names=True))),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", rows)),
    }
    code, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", good))
    assert code == 2
    assert "`task.labels`: label values in the validation split (column 'label') not in the label list" in err
    assert "'neutral' (row 3)" in err


def test_empty_split(capsys, good, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("sentence,label\n")
    good["data"]["files"]["validation"] = str(empty)
    code, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", good))
    assert code == 2 and "split 'validation' is empty" in err


def test_non_string_text_field(capsys, good, tmp_path):
    good["task"]["text_column"] = "idx"
    code, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", good))
    assert (
        code == 2
        and "`task.text_column`: column 'idx' in the train split holds int64 values, not text" in err
    )


def test_num_labels_contradicts_the_data(capsys, good, tmp_path):
    good["data"]["files"] = {
        s: str(write_jsonl(tmp_path / f"{s}.jsonl", sentiment_rows(30, i, as_names=True)))
        for i, s in enumerate(("train", "validation"))
    }
    good["task"]["num_labels"] = 3
    code, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", good))
    assert (
        code == 2
        and "`task.num_labels`: is 3, but the string labels in the training split give 2 labels" in err
    )


def test_integer_labels_beyond_num_labels(capsys, good, tmp_path):
    good["task"]["labels"] = ["only-one", "two"]
    rows = sentiment_rows(30, 1)
    rows[0]["label"] = 2
    good["data"]["files"]["train"] = str(write_jsonl(tmp_path / "t.jsonl", rows))
    code, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", good))
    assert code == 2 and "label ids in the train split" in err and "2 (row 0)" in err


def test_missing_recipe_file(capsys, tmp_path):
    code, err = run_cli(capsys, "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and "recipe file not found" in err


def test_eval_of_a_directory_that_is_not_an_output(capsys, tmp_path):
    code, err = run_cli(capsys, "eval", str(tmp_path))
    assert code == 2 and "not an hf-finetune output directory" in err


def test_cli_prints_no_traceback_and_exits_2(good, tmp_path):
    good["task"]["label_column"] = "stars"
    path = write_recipe(tmp_path / "r.yaml", good)
    proc = subprocess.run(
        [sys.executable, "-m", "hf_finetune", "validate", path], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hf-finetune: error:")]
    assert errors == [
        "hf-finetune: error: `task.label_column`: column 'stars' not found in the train split; "
        "columns are: idx, sentence, label. Set `task.label_column` to one of them."
    ]


def test_validate_json_summary(capsys, good, tmp_path):
    code = cli.main(["validate", write_recipe(tmp_path / "r.yaml", good), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["splits"] == {"train": 320, "validation": 96}
    assert summary["labels"] == ["0", "1"] and summary["metrics"] == ["classification/binary"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "model.config_overrides.hiden_dropout_prob=0",
            "`model.config_overrides.hiden_dropout_prob`: BertConfig has no attribute 'hiden_dropout_prob' "
            "(did you mean: hidden_dropout_prob",
        ),
        ("model.config_overrides.num_labels=3", "`model.config_overrides.num_labels`: is set by the task"),
    ],
)
def test_bad_model_config_override(capsys, good, tmp_path, override, expected):
    code, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", good), override)
    assert code == 2 and expected in err, err
