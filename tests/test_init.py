"""`hf-finetune init DATA_FILE` and `data.validation_size`.

init on the real data of the mirror (SST-2 as a CSV with string labels, CoNLL-2003 as a CoNLL column file,
SQuAD as JSON Lines, MRPC as a pair CSV): each recipe it writes validates and trains a few steps (the tiny
model stands in for MiniLM when training; init itself measures lengths with the real MiniLM tokenizer).
Ambiguity asks (exit 2, naming the flag) and writes nothing. validation_size: stratified shares, the same
rows every time, and its errors.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import DataError, RecipeError
from hf_finetune.pipeline import make_task

from .conftest import MINILM, tiny_recipe, write_jsonl

BUCKETS = (64, 128, 256, 384, 512)


def _rows(root: Path, name: str, n: int, split: str = "train") -> list[dict]:
    with (root / name / f"{split}.jsonl").open() as handle:
        return [json.loads(line) for _, line in zip(range(n), handle)]


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _flat(text: str) -> str:
    """Text with the comment marks and line breaks taken out (comments are wrapped at 100 columns)."""
    return " ".join(text.replace("#", " ").split())


def _init(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["init", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _lengths(texts, pairs=None, words=False) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    enc = tokenizer(texts, pairs, is_split_into_words=words, truncation=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def _smallest_bucket(lengths: list[int]) -> int:
    return next(b for b in BUCKETS if sum(n > b for n in lengths) / len(lengths) <= 0.01)


def _validates_and_trains(capsys, recipe: str, model_dir: Path, out: Path, *overrides: str) -> dict:
    assert cli.main(["validate", recipe]) == 0, capsys.readouterr().err
    capsys.readouterr()
    argv = [
        "train",
        recipe,
        f"model.name_or_path={model_dir}",
        f"training.output_dir={out}",
        "training.max_steps=3",
        "training.per_device_train_batch_size=8",
        "data.max_train_samples=48",
        "data.max_eval_samples=24",
        *overrides,
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads((out / "all_results.json").read_text())


# ------------------------------------------------------------------------------------------------ init


def test_init_on_a_csv_with_string_labels(shared_data, tiny_model_dir, tmp_path, monkeypatch, capsys):
    rows = [
        {**r, "label": ["negative", "positive"][r["label"]]} for r in _rows(shared_data, "glue/sst2", 400)
    ]
    monkeypatch.chdir(tmp_path)
    _write_csv(tmp_path / "data" / "sst2.csv", rows, ["sentence", "label", "idx"])
    code, out, err = _init(capsys, "data/sst2.csv")
    assert code == 0, err
    text = (tmp_path / "recipe.yaml").read_text()
    recipe = yaml.safe_load(text)
    assert recipe["task"] == {
        "name": "text-classification",
        "text_column": "sentence",
        "label_column": "label",
        "labels": ["negative", "positive"],
    }
    assert recipe["data"]["files"] == {"train": "data/sst2.csv"}  # relative, as given
    assert recipe["data"]["validation_size"] == 0.1
    assert recipe["model"]["name_or_path"] == MINILM
    assert recipe["training"]["output_dir"] == "runs/sst2"
    assert recipe["training"]["metric_for_best_model"] == "accuracy"
    # the balance, the lengths and the validation split: printed and commented
    counts = Counter(r["label"] for r in rows)
    balance = f"negative {counts['negative']} ({counts['negative'] / 400:.1%}), positive {counts['positive']}"
    lengths = _lengths([r["sentence"] for r in rows])
    assert recipe["data"]["max_seq_length"] == _smallest_bucket(lengths)
    for expected in (
        f"balance in 400 rows: {balance}",
        f"max {max(lengths)}",
        "10% of the training rows are held out",
        "stratified",
        "idx (integers, 400 distinct)",
    ):
        assert expected in _flat(out), expected
    assert f"balance in 400 rows: {balance}" in _flat(text) and f"max {max(lengths)}" in _flat(text)
    assert text.startswith("# Starter recipe for data/sst2.csv, written by: hf-finetune init data/sst2.csv\n")
    assert "hf-finetune train recipe.yaml" in text and "hf-finetune validate recipe.yaml" in out
    assert "wrote recipe.yaml" in out
    # it validates, trains, and `eval` of the run carves the same validation rows again
    results = _validates_and_trains(capsys, "recipe.yaml", tiny_model_dir, tmp_path / "run")
    assert results["eval_samples"] == 24 and "eval_accuracy" in results
    assert cli.main(["eval", str(tmp_path / "run"), "data.max_eval_samples=null"]) == 0
    assert json.loads(capsys.readouterr().out)["eval_samples"] == 40


def test_init_on_a_conll_file_uses_the_dev_file_next_to_it(shared_data, tiny_model_dir, tmp_path, capsys):
    def conll(path: Path, rows: list[dict]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join("".join(f"{w} {t}\n" for w, t in zip(r["tokens"], r["ner_tags"])) + "\n" for r in rows)
        )
        return path

    rows = _rows(shared_data, "conll2003", 200)
    train = conll(tmp_path / "ner" / "train.conll", rows)
    dev = conll(tmp_path / "ner" / "dev.conll", _rows(shared_data, "conll2003", 60, "validation"))
    output = tmp_path / "ner.yaml"
    code, out, err = _init(capsys, str(train), "--output", str(output))
    assert code == 0, err
    text = output.read_text()
    recipe = yaml.safe_load(text)
    kinds = sorted({t[2:] for r in rows for t in r["ner_tags"] if t != "O"})
    assert recipe["task"] == {
        "name": "token-classification",
        "tokens_column": "tokens",
        "tags_column": "ner_tags",
        "labels": ["O"] + [f"{p}-{k}" for k in kinds for p in "BI"],
    }
    assert recipe["data"]["files"] == {"train": str(train), "validation": str(dev)}
    assert "validation_size" not in recipe["data"]
    assert f"validation: {dev}, found next to {train}" in _flat(text)
    entities = Counter(t[2:] for r in rows for t in r["ner_tags"] if t.startswith("B-"))
    assert "entities (B- tags) in 200 sentences: " + ", ".join(f"{k} {entities[k]}" for k in kinds) in _flat(
        text
    )
    lengths = _lengths([r["tokens"] for r in rows], words=True)
    assert recipe["data"]["max_seq_length"] == _smallest_bucket(lengths)
    assert "subword tokens per sentence" in _flat(text) and f"max {max(lengths)}" in _flat(text)
    assert recipe["training"]["metric_for_best_model"] == "f1"
    results = _validates_and_trains(capsys, str(output), tiny_model_dir, tmp_path / "run")
    assert "eval_f1" in results


def test_init_on_squad_json_lines(shared_data, tiny_model_dir, tmp_path, capsys):
    rows = _rows(shared_data, "squad", 120)
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    output = tmp_path / "qa.yaml"
    code, out, err = _init(capsys, str(data), "--output", str(output))
    assert code == 0, err
    text = output.read_text()
    recipe = yaml.safe_load(text)
    task = recipe["task"]
    assert task["name"] == "question-answering"
    assert (task["question_column"], task["context_column"], task["answers_column"]) == (
        "question",
        "context",
        "answers",
    )
    assert task["id_column"] == "id" and "labels" not in task
    lengths = _lengths([r["question"] for r in rows], [r["context"] for r in rows])
    short = [b for b in BUCKETS[:3] if sum(n > b for n in lengths) / len(lengths) <= 0.01]
    assert recipe["data"]["max_seq_length"] == (short[0] if short else 384)
    assert task["doc_stride"] == recipe["data"]["max_seq_length"] // 3
    assert "windows of" in _flat(text) and "no answer is cut off" in _flat(text)
    assert recipe["data"]["validation_size"] == 0.1 and "questions on one context stay together" in _flat(
        text
    )
    results = _validates_and_trains(
        capsys, str(output), tiny_model_dir, tmp_path / "run", "data.max_seq_length=128", "task.doc_stride=32"
    )
    assert "eval_f1" in results and "eval_exact_match" in results


def test_init_on_a_pair_csv_with_a_validation_file(shared_data, tiny_model_dir, tmp_path, capsys):
    fields = ["sentence1", "sentence2", "label", "idx"]
    train = _write_csv(tmp_path / "mrpc.csv", _rows(shared_data, "glue/mrpc", 200), fields)
    dev = _write_csv(tmp_path / "heldout.csv", _rows(shared_data, "glue/mrpc", 40, "validation"), fields)
    output = tmp_path / "pairs.yaml"
    code, out, err = _init(capsys, str(train), "--validation-file", str(dev), "--output", str(output))
    assert code == 0, err
    text = output.read_text()
    recipe = yaml.safe_load(text)
    assert recipe["task"]["text_column"] == "sentence1"
    assert recipe["task"]["text_pair_column"] == "sentence2"
    assert recipe["task"]["labels"] == ["0", "1"]  # integer labels: class ids 0..n-1
    assert recipe["data"]["files"] == {"train": str(train), "validation": str(dev)}
    rows = _rows(shared_data, "glue/mrpc", 200)
    lengths = _lengths([r["sentence1"] for r in rows], [r["sentence2"] for r in rows])
    assert recipe["data"]["max_seq_length"] == _smallest_bucket(lengths)
    assert "Sentence pairs" in _flat(text) and "both texts of the pair" in _flat(text)
    assert "--validation-file" in _flat(text) and "class ids" in _flat(text)
    results = _validates_and_trains(capsys, str(output), tiny_model_dir, tmp_path / "run")
    assert results["eval_samples"] == 24


def _ambiguous(tmp_path: Path) -> Path:
    rows = [
        {
            "review": f"the plot of film {i} was {'good' if i % 2 else 'bad'} and the acting fine",
            "summary": f"a short summary of review number {i} here",
            "stars": 1 + i % 5,
            "sentiment": "positive" if i % 2 else "negative",
        }
        for i in range(60)
    ]
    return _write_csv(tmp_path / "reviews.csv", rows, list(rows[0]))


def test_ambiguity_is_a_question_and_writes_nothing(tmp_path, capsys):
    data = _ambiguous(tmp_path)
    output = tmp_path / "recipe.yaml"
    code, out, err = _init(capsys, str(data), "--output", str(output))
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"hf-finetune: error: {data}: two columns could be the label: stars, sentiment. "
        "Say which with --label-column."
    )
    assert not output.exists() and not list(tmp_path.glob("*.yaml*"))
    code, out, err = _init(capsys, str(data), "--label-column", "sentiment", "--output", str(output))
    assert code == 0, err
    task = yaml.safe_load(output.read_text())["task"]
    assert (task["label_column"], task["text_column"], task["text_pair_column"]) == (
        "sentiment",
        "review",
        "summary",
    )
    output.unlink()
    argv = [str(data), "--label-column", "stars", "--text-pair-column", "none", "--text-column", "summary"]
    code, out, err = _init(capsys, *argv, "--output", str(output))
    assert code == 0, err
    task = yaml.safe_load(output.read_text())["task"]
    assert (task["text_column"], task["text_pair_column"], task["labels"]) == (
        "summary",
        None,
        ["0", "1", "2", "3", "4", "5"],
    )
    assert "no rows have id 0: integer labels are class ids 0..n-1" in _flat(output.read_text())


def test_three_text_columns_ask_which_and_a_wrong_column_is_named(tmp_path, capsys):
    rows = [
        {f"t{j}": f"some words in row {i} column {j}" for j in range(3)} | {"y": i % 2} for i in range(40)
    ]
    data = _write_csv(tmp_path / "three.csv", rows, list(rows[0]))
    code, _, err = _init(capsys, str(data), "--output", str(tmp_path / "r.yaml"))
    assert code == 2 and "three columns could be the text: t0, t1, t2" in err
    assert "--text-column and --text-pair-column" in err
    code, _, err = _init(capsys, str(data), "--label-column", "z", "--output", str(tmp_path / "r.yaml"))
    assert code == 2 and "--label-column: " in err and "has no column 'z'" in err
    assert not (tmp_path / "r.yaml").exists()


def test_an_existing_output_is_refused_without_force(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = [{"text": f"an example sentence number {i} here", "label": "ab"[i % 2]} for i in range(40)]
    _write_csv(tmp_path / "train.csv", rows, ["text", "label"])
    (tmp_path / "recipe.yaml").write_text("my own recipe\n")
    code, _, err = _init(capsys, "train.csv")
    assert code == 2 and "recipe.yaml exists; pass --force" in err
    assert (tmp_path / "recipe.yaml").read_text() == "my own recipe\n"
    code, _, err = _init(capsys, "train.csv", "--force")
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["task"]["labels"] == ["a", "b"]


def test_output_dash_prints_the_recipe_and_a_tokenizer_that_cannot_load_is_estimated(tmp_path, capsys):
    rows = [{"text": f"an example sentence number {i} here", "label": "ab"[i % 2]} for i in range(40)]
    data = _write_csv(tmp_path / "train.csv", rows, ["text", "label"])
    code, out, err = _init(capsys, str(data), "--output", "-", "--model", str(tmp_path / "no-model"))
    assert code == 0, err
    recipe = yaml.safe_load(out)  # stdout is the recipe alone; the report went to stderr
    assert recipe["data"]["max_seq_length"] == 64
    assert "estimated tokens per example (words x 1.3: the tokenizer did not load" in _flat(out)
    assert "task.labels: [a, b]" in err and not (tmp_path / "recipe.yaml").exists()


def test_a_rare_class_is_warned_about(tmp_path, capsys, no_weights):
    rows = [
        {"text": f"an example sentence number {i} here", "label": "rare" if i < 3 else "common"}
        for i in range(60)
    ]
    data = _write_csv(tmp_path / "train.csv", rows, ["text", "label"])
    code, out, err = _init(capsys, str(data), "--output", str(tmp_path / "r.yaml"))
    assert code == 0, err
    text = _flat((tmp_path / "r.yaml").read_text())
    assert "balance in 60 rows: common 57 (95.0%), rare 3 (5.0%)" in text
    assert "WARNING: the smallest class, rare, is 5.0% of the rows" in text


# ------------------------------------------------------------------------------------ validation_size


def _labelled(tmp_path: Path, counts: dict[str, int]) -> str:
    rows, i = [], 0
    for label, n in counts.items():
        for _ in range(n):
            rows.append({"idx": i, "sentence": f"example {i} of {label}", "label": label})
            i += 1
    return str(write_jsonl(tmp_path / "train.jsonl", rows))


def _load(model_dir, tmp_path, train: str, *overrides: str, splits=None, **data):
    recipe = tiny_recipe(model_dir, {"train": train}, tmp_path / "out", data=data)
    task = make_task(load_recipe(recipe, list(overrides)))
    return task.load(splits or task.splits_for("validate")), task


def test_validation_size_is_stratified_by_label(tiny_model_dir, tmp_path):
    train = _labelled(tmp_path, {"a": 600, "b": 300, "c": 97, "lone": 1})
    raw, task = _load(tiny_model_dir, tmp_path, train, validation_size=0.1)
    validation, kept = Counter(raw["validation"]["label"]), Counter(raw["train"]["label"])
    assert validation == {"a": 60, "b": 30, "c": 10}  # 100 rows (ceil of 99.8), each label its share
    assert kept == {"a": 540, "b": 270, "c": 87, "lone": 1}  # the lone example trains
    assert not set(raw["validation"]["idx"]) & set(raw["train"]["idx"])
    assert raw["train"]["idx"] == sorted(raw["train"]["idx"])  # both sides keep the file order
    assert "stratified by label" in task.source.description
    assert "too rare for a validation row, all in train: lone (1 rows)" in task.source.description


def test_validation_size_picks_the_same_rows_every_time(tiny_model_dir, tmp_path):
    train = _labelled(tmp_path, {"a": 150, "b": 50})
    first, _ = _load(tiny_model_dir, tmp_path, train, validation_size=40)
    again, _ = _load(tiny_model_dir, tmp_path, train, validation_size=40)
    assert len(first["validation"]) == 40 and first["validation"]["idx"] == again["validation"]["idx"]
    assert first["validation"]._fingerprint == again["validation"]._fingerprint  # the tokenised cache's key
    alone, _ = _load(tiny_model_dir, tmp_path, train, splits=["validation"], validation_size=40)
    assert alone["validation"]["idx"] == first["validation"]["idx"] and list(alone) == ["validation"]
    alone, _ = _load(tiny_model_dir, tmp_path, train, splits=["train"], validation_size=40)
    assert alone["train"]["idx"] == first["train"]["idx"]  # the training split is always what is left
    subsampled, _ = _load(tiny_model_dir, tmp_path, train, validation_size=40, max_train_samples=20)
    assert subsampled["validation"]["idx"] == first["validation"]["idx"]  # carved before subsampling
    assert subsampled["train"]["idx"] == first["train"]["idx"][:20]
    other, _ = _load(tiny_model_dir, tmp_path, train, validation_size=40, split_seed=7)
    assert other["validation"]["idx"] != first["validation"]["idx"]
    assert other["validation"]._fingerprint != first["validation"]._fingerprint
    regression = str(
        write_jsonl(tmp_path / "scores.jsonl", [{"sentence": f"s {i}", "label": i / 7} for i in range(50)])
    )
    raw, task = _load(tiny_model_dir, tmp_path, regression, validation_size=0.2)
    assert len(raw["validation"]) == 10 and "shuffled" in task.source.description


def test_validation_size_errors(tiny_model_dir, tmp_path, sentiment_files):
    base = tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "out")
    for size in (0, 1.5, -3, 1.0 + 1e-9):
        with pytest.raises(RecipeError, match=r"`data.validation_size`: must be a fraction in \(0, 1\)"):
            load_recipe(base, [f"data.validation_size={size}"])
    with pytest.raises(RecipeError, match=r"and `data.files.validation` both give the evaluation split"):
        load_recipe(base, ["data.validation_size=0.1"])
    only_train = tiny_recipe(tiny_model_dir, {"train": sentiment_files["train"]}, tmp_path / "out")
    with pytest.raises(RecipeError, match=r"`data.eval_split` is null"):
        load_recipe(only_train, ["data.validation_size=0.1", "data.eval_split=null"])
    with pytest.raises(DataError, match=r"320 rows of the 'train' split leaves no training rows"):
        _load(tiny_model_dir, tmp_path, sentiment_files["train"], validation_size=320)
    with pytest.raises(DataError) as missing:  # no eval split and none asked for: the fix is named
        _load(tiny_model_dir, tmp_path, sentiment_files["train"])
    assert "`data.validation_size: 0.1`" in str(missing.value) and "`data.eval_split: null`" in str(
        missing.value
    )
    mirror = tmp_path / "mirror" / "mine"
    for split, path in sentiment_files.items():
        (mirror / f"{split}.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (mirror / f"{split}.jsonl").write_text(Path(path).read_text())
    recipe = tiny_recipe(tiny_model_dir, None, tmp_path / "out")
    recipe["data"] = {"dataset": "mine", "mirror": str(tmp_path / "mirror"), "validation_size": 0.1}
    task = make_task(load_recipe(recipe))
    with pytest.raises(
        RecipeError, match=r"already has the evaluation split 'validation' \(`data.eval_split`\)"
    ):
        task.load(task.splits_for("train"))
