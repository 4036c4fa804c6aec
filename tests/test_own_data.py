"""Users' own files as a new user brings them: labels written as floats (pandas), one class only, a Latin-1
CSV (`data.encoding`), a JSON Lines file with a broken line. Each works, or fails naming the file, the line
and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_finetune import cli
from hf_finetune.cache import preprocessing_key
from hf_finetune.config.load import load_recipe
from hf_finetune.conll import read_conll
from hf_finetune.data import load_splits, read_data_file
from hf_finetune.errors import DataError, RecipeError
from hf_finetune.labels import REGRESSION, SINGLE, build_schema, class_id
from hf_finetune.pipeline import make_task, train
from hf_finetune.textfile import first_bad_json_line, first_undecodable

from .conftest import sentiment_rows, tiny_recipe, write_jsonl

CAFE = "un café crème très bon"


def _as_floats(rows: list[dict]) -> list[dict]:
    return [{**row, "label": float(row["label"])} for row in rows]


def _prepared(model_dir, tmp_path, train_rows, validation_rows=None, **task):
    files = {"train": str(write_jsonl(tmp_path / "train.jsonl", train_rows))}
    files["validation"] = str(write_jsonl(tmp_path / "validation.jsonl", validation_rows or train_rows[:8]))
    prepared = make_task(load_recipe(tiny_recipe(model_dir, files, tmp_path / "out", task=task)))
    prepared.prepare(prepared.load(prepared.splits_for("validate")))
    return prepared


# ------------------------------------------------------------------------------------------------ labels


def test_whole_floats_are_class_ids():
    assert [class_id(v) for v in (1, 1.0, 0.0, 2.5, True, None, float("nan"), "1")] == [
        1,
        1,
        0,
        None,
        None,
        None,
        None,
        None,
    ]
    schema = build_schema(problem_type=SINGLE, values=[1.0, 0.0, 2.0])
    assert schema.names == ["0", "1", "2"] and schema.encode(2.0) == 2
    schema.check_values([0.0, 1.0, 2.0], "train", "label")
    named = build_schema(problem_type=SINGLE, values=[1.0, 0.0], recipe_labels=["neg", "pos"])
    assert named.encode(1.0) == 1


def test_float_labels_from_pandas_train_as_classes(tiny_model_dir, tmp_path):
    """JSON Lines written by pandas after a missing value: labels 1.0 / 0.0. The model learns the two classes."""
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", _as_floats(sentiment_rows(320, seed=1)))),
        "validation": str(write_jsonl(tmp_path / "dev.jsonl", _as_floats(sentiment_rows(96, seed=2)))),
    }
    assert '"label": 1.0' in Path(files["train"]).read_text()
    metrics = train(load_recipe(tiny_recipe(tiny_model_dir, files, tmp_path / "out")))
    assert metrics["eval_accuracy"] >= 0.9, metrics  # chance is 0.5
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and config["problem_type"] == SINGLE


def test_non_integral_floats_mean_regression_and_a_single_label_says_so(tiny_model_dir, tmp_path):
    rows = [{"sentence": f"review {i}", "label": i / 8} for i in range(24)]
    task = _prepared(tiny_model_dir, tmp_path, rows)
    assert task.labels.problem_type == REGRESSION
    with pytest.raises(DataError, match=r"set `task.problem_type: regression`"):
        _prepared(tiny_model_dir, tmp_path, rows, problem_type=SINGLE)


def test_unusable_labels_say_what_was_found(tiny_model_dir, tmp_path):
    rows = [{"sentence": f"review {i}", "label": bool(i % 2)} for i in range(12)]
    with pytest.raises(DataError) as caught:
        _prepared(tiny_model_dir, tmp_path, rows)
    message = str(caught.value)
    assert "`task.label_column`: column 'label' of the training split holds no usable labels" in message
    assert "12 values: 12 bool (e.g. False, True)" in message and "class ids (whole numbers" in message


def test_a_missing_label_names_its_rows(tiny_model_dir, tmp_path):
    rows = _as_floats(sentiment_rows(20, seed=1))
    rows[3]["label"] = rows[11]["label"] = None
    with pytest.raises(DataError, match=r"have no label \(null or empty\) in column 'label': rows 3, 11\."):
        _prepared(tiny_model_dir, tmp_path, rows)


def test_one_class_is_an_error_naming_it(tiny_model_dir, tmp_path):
    rows = [{"sentence": f"a fine film {i}", "label": "positive"} for i in range(30)]
    with pytest.raises(DataError) as caught:
        _prepared(tiny_model_dir, tmp_path, rows)
    assert (
        "every row of the train split (30 rows) has the label 'positive' (column 'label'): a classifier needs "
        "examples of at least two classes" in str(caught.value)
    )
    with pytest.raises(DataError, match=r"\(such as negative, which the label list has\)"):
        _prepared(tiny_model_dir, tmp_path, rows, labels=["negative", "positive"])
    mixed = sentiment_rows(40, seed=3)
    first = sorted(mixed, key=lambda r: r["label"])  # the first 10 rows are all negative
    with pytest.raises(DataError, match=r"\(10 rows, the first `data.max_train_samples`\) has the label '0'"):
        files = {"train": str(write_jsonl(tmp_path / "sorted.jsonl", first))}
        recipe = load_recipe(
            tiny_recipe(tiny_model_dir, {**files, "validation": files["train"]}, tmp_path / "out"),
            ["data.max_train_samples=10"],
        )
        task = make_task(recipe)
        task.prepare(task.load(task.splits_for("validate")))


def test_multi_label_rows_that_all_agree_are_an_error(tiny_model_dir, tmp_path):
    rows = [{"sentence": f"film {i}", "label": ["drama", "comedy"]} for i in range(10)]
    with pytest.raises(DataError, match=r"has the labels \[comedy, drama\] .* learns nothing"):
        _prepared(tiny_model_dir, tmp_path, rows)
    rows[4]["label"] = ["drama"]
    assert _prepared(tiny_model_dir, tmp_path, rows).labels.names == ["comedy", "drama"]


def test_one_class_fails_validate_before_weights(tiny_model_dir, tmp_path, no_weights, capsys):
    rows = [{"sentence": f"a fine film {i}", "label": 1} for i in range(30)]
    files = {"train": str(write_jsonl(tmp_path / "t.jsonl", rows)), "validation": str(tmp_path / "t.jsonl")}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, files, tmp_path / "out")))
    assert cli.main(["validate", str(recipe)]) == 2
    assert "has the label '1'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- encoding


def _latin1_csv(path: Path) -> Path:
    lines = ["sentence,label", "a plain review,0", f"{CAFE},1", "another one,0", "last,1"]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return path


def _data(**data):
    return load_recipe({"task": "text-classification", "data": data, "training": {"output_dir": "x"}}).data


def test_a_latin1_csv_names_the_line_and_byte_and_data_encoding_reads_it(tmp_path):
    path = _latin1_csv(tmp_path / "reviews.csv")
    with pytest.raises(DataError) as caught:
        load_splits(_data(files={"train": str(path)}, eval_split=None), ["train"])
    message = str(caught.value)
    offset = path.read_bytes().index(b"\xe9")
    assert (
        f"`data.files.train`: {path} is not UTF-8 text: line 3 (byte {offset} of the file) has 0xe9"
        in message
    )
    assert "'é' in latin-1" in message and "in 'un caf\ufffd cr" in message
    assert "Save the file as UTF-8, or set `data.encoding` to the encoding it was saved in" in message
    assert "`data.encoding: latin-1`" in message
    splits, _ = load_splits(_data(files={"train": str(path)}, eval_split=None, encoding="latin-1"), ["train"])
    assert splits["train"]["sentence"][1] == CAFE


def test_data_encoding_reads_json_lines_and_conll(tmp_path):
    jsonl = tmp_path / "train.jsonl"
    rows = [{"sentence": "plain", "label": 0}, {"sentence": CAFE, "label": 1}]
    line = "\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    jsonl.write_bytes((line + "\n").encode("cp1252"))
    offset = jsonl.read_bytes().index(b"\xe9")
    with pytest.raises(DataError, match=rf"is not UTF-8 text: line 2 \(byte {offset} of the file\) has 0xe9"):
        read_data_file(str(jsonl), "data.files.train")
    assert read_data_file(str(jsonl), "data.files.train", "cp1252")["sentence"] == ["plain", CAFE]
    conll = tmp_path / "train.conll"
    conll.write_bytes("EU B-ORG\n\nMüller B-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"is not UTF-8 text: line 3 \(byte 11 of the file\) has 0xfc"):
        read_conll([str(conll)], "data.files.train")
    assert read_conll([str(conll)], "data.files.train", "latin-1")["tokens"] == [["EU"], ["Müller"]]
    utf16 = tmp_path / "u16.csv"
    utf16.write_text(f"sentence,label\n{CAFE},1\n", encoding="utf-16")
    assert read_data_file(str(utf16), "data.files.train", "utf-16")["sentence"] == [CAFE]
    with pytest.raises(DataError, match=r"is not ascii text: line 3 .* Set `data.encoding` \(now ascii\)"):
        read_data_file(str(_latin1_csv(tmp_path / "odd.csv")), "data.files.train", "ascii")


def test_unknown_encoding_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"`data.encoding`: unknown encoding 'latin-7x'"):
        _data(files={"train": "t.csv"}, encoding="latin-7x")


def test_first_undecodable_across_chunk_boundaries(tmp_path, monkeypatch):
    import hf_finetune.textfile as textfile

    monkeypatch.setattr(textfile, "CHUNK", 7)
    path = tmp_path / "x.txt"
    text = "ab\nçé\nxyz\n€ ok\n"
    path.write_bytes(text.encode("utf-8") + b"tail \xff here\n")
    problem = first_undecodable(path, None)
    assert (problem.line, problem.offset, problem.bad) == (5, len(text.encode()) + 5, b"\xff")
    assert problem.excerpt == "tail \ufffd here"
    path.write_bytes(text.encode("utf-8"))
    assert first_undecodable(path, None) is None
    path.write_bytes(text.encode("utf-8")[:-3] + "€".encode()[:2])  # cut in the middle of a character
    assert first_undecodable(path, None).reason == "unexpected end of data"


def test_the_cache_key_follows_the_encoding(tiny_model_dir, tmp_path):
    """The same bytes read with another encoding are other text: another raw fingerprint and another key."""
    from transformers import AutoTokenizer

    path = tmp_path / "train.csv"
    path.write_bytes(f"sentence,label\n{CAFE},1\nplain,0\n".encode())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    keys, fingerprints, texts = [], [], []
    for encoding in (None, "latin-1", None):
        files = {"train": str(path), "validation": str(path)}
        recipe = tiny_recipe(tiny_model_dir, files, tmp_path / "out", data={"encoding": encoding})
        task = make_task(load_recipe(recipe))
        raw = task.load(["train"])
        task.prepare(raw)
        texts.append(raw["train"]["sentence"][0])
        fingerprints.append(raw["train"]._fingerprint)
        keys.append(preprocessing_key(task, raw["train"], "train", tokenizer))
    assert texts[0] == CAFE and texts[1] == CAFE.encode().decode("latin-1")
    assert fingerprints[0] != fingerprints[1] and fingerprints[0] == fingerprints[2]
    assert keys[0] != keys[1] and keys[0] == keys[2]


# -------------------------------------------------------------------------------------------------- JSON


def test_a_broken_json_line_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [json.dumps(r) for r in sentiment_rows(5, seed=1)]
    rows[2] = '{"sentence": "a good film" "label": 1}'
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as caught:
        read_data_file(str(path), "data.files.train")
    assert str(caught.value) == (
        f"`data.files.train`: could not read {path} as JSON Lines: line 3 is not valid JSON (Expecting ',' "
        """delimiter at column 28): '{"sentence": "a good film" "label": 1}'. Each line must hold one JSON """
        """object, such as {"text": "...", "label": "..."}; fix or delete line 3."""
    )


def test_other_json_shapes(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    bad = first_bad_json_line(path, None)
    assert (bad.line, bad.problem) == (3, "holds a list, not a JSON object")
    path.write_text('{\n  "data": [{"a": 1}]\n}\n')
    assert "spans the whole file" in first_bad_json_line(path, None).problem
    path.write_text('[\n  {"a": 1},\n  {"a": 2,}\n]\n')
    bad = first_bad_json_line(path, None)
    assert (bad.kind, bad.line) == ("JSON", 3) and "one JSON list of objects" in bad.fix
    path.write_text('\ufeff{"a": 1}\n{"a": 2}\n')
    assert first_bad_json_line(path, None) is None


# -------------------------------------------------------------------------------------------------- init


def test_init_names_the_encoding_and_writes_data_encoding(tmp_path, capsys, no_weights):
    rows = ["text,label"] + [
        f"{CAFE if i % 2 else 'a dull evening and nothing more'} {i},{'pos' if i % 2 else 'neg'}"
        for i in range(40)
    ]
    path = tmp_path / "reviews.csv"
    path.write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    out = tmp_path / "recipe.yaml"
    assert cli.main(["init", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"`DATA_FILE`: {path} is not UTF-8 text: line 3" in err
    assert "or give the encoding it was saved in with --encoding (e.g. --encoding latin-1" in err
    assert not out.exists()
    assert cli.main(["init", str(path), "--encoding", "latin-1", "--output", str(out)]) == 0, (
        capsys.readouterr()
    )
    written = out.read_text()
    assert "--encoding latin-1" in written.splitlines()[0]
    recipe = yaml.safe_load(written)
    assert recipe["data"]["encoding"] == "latin-1" and recipe["task"]["labels"] == ["neg", "pos"]
    assert cli.main(["validate", str(out)]) == 0
    assert cli.main(["init", str(path), "--encoding", "latin-7x", "--output", str(out), "--force"]) == 2
    assert "`--encoding`: unknown encoding 'latin-7x'" in capsys.readouterr().err


def test_init_reads_float_labels(tmp_path, capsys, no_weights):
    rows = _as_floats(sentiment_rows(40, seed=4))
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": r["sentence"], "label": r["label"]} for r in rows])
    out = tmp_path / "recipe.yaml"
    assert cli.main(["init", str(path), "--output", str(out)]) == 0, capsys.readouterr().err
    text = " ".join(out.read_text().replace("#", " ").split())
    assert yaml.safe_load(out.read_text())["task"]["labels"] == ["0", "1"]
    negatives = sum(r["label"] == 0.0 for r in rows)
    assert f"balance in 40 rows: 0 {negatives} ({negatives / 40:.1%})" in text
