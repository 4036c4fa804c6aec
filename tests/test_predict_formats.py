"""`hf-finetune predict` on CSV and TSV as well as JSON Lines, writing either, and the label ranking it can add:
`--top-k K` (the K most likely labels with their probabilities) and `--all-scores` (every label's)."""

from __future__ import annotations

import csv
import json

import pytest

from hf_finetune import cli
from hf_finetune.errors import DataError, FinetuneError
from hf_finetune.inference import predict_output

from .conftest import NEGATIVE, POSITIVE, tiny_recipe, write_jsonl

ROWS = [
    {"id": "1", "sentence": f"the film was {POSITIVE[0]} and {POSITIVE[1]}"},
    {"id": "2", "sentence": f"the plot was {NEGATIVE[0]}, {NEGATIVE[1]} and long"},  # a comma inside
    {"id": "3", "sentence": f"a very {POSITIVE[2]} story"},
    {"id": "4", "sentence": f"quite {NEGATIVE[3]} acting"},
]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    from hf_finetune.config.load import load_recipe
    from hf_finetune.pipeline import train

    from .conftest import write_sentiment_files

    root = tmp_path_factory.mktemp("run")
    files = write_sentiment_files(root / "data", as_names=True)
    metrics = train(load_recipe(tiny_recipe(tiny_model_dir, files, root / "out")))
    assert metrics["eval_accuracy"] >= 0.9, metrics
    return root / "out"


def _write_delimited(path, rows, delimiter):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ","))


def test_csv_and_tsv_in_and_out_agree_with_json_lines(run, tmp_path):
    expected = ["positive", "negative", "positive", "negative"]
    base = tmp_path / "base.jsonl"
    assert predict_output(run, write_jsonl(tmp_path / "in.jsonl", ROWS), base) == 4
    by_jsonl = _read(base)
    assert [r["label"] for r in by_jsonl] == expected
    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        src = _write_delimited(tmp_path / f"in{suffix}", ROWS, delimiter)
        as_jsonl = tmp_path / f"from{suffix}.jsonl"
        as_same = tmp_path / f"from{suffix}{suffix}"
        assert cli.main(["predict", str(run), "--input", str(src), "--output", str(as_jsonl)]) == 0
        assert cli.main(["predict", str(run), "--input", str(src), "--output", str(as_same)]) == 0
        # the same predictions whatever the format; the fields (all text in CSV) kept in order
        assert _read(as_jsonl) == by_jsonl
        table = _read(as_same)
        assert list(table[0]) == ["id", "sentence", "label", "score"]
        assert [r["sentence"] for r in table] == [r["sentence"] for r in ROWS]  # the comma survived
        assert [r["label"] for r in table] == expected
        assert [float(r["score"]) for r in table] == [r["score"] for r in by_jsonl]


def test_top_k_and_all_scores_rank_every_label(run, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    code = cli.main(
        ["predict", str(run), "--input", str(src), "--output", str(out), "--top-k", "5", "--all-scores"]
    )
    assert code == 0
    for row in _read(out):
        ranked = row["top_k"]
        assert len(ranked) == 2  # K beyond the number of labels: all of them
        assert ranked[0] == {"label": row["label"], "score": row["score"]}
        assert ranked[0]["score"] >= ranked[1]["score"]
        assert {r["label"] for r in ranked} == {"negative", "positive"}
        assert row["scores"] == {r["label"]: r["score"] for r in ranked}
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    one = tmp_path / "one.csv"
    assert predict_output(run, src, one, top_k=1) == 4
    table = _read(one)
    assert [json.loads(r["top_k"])[0]["label"] for r in table] == [r["label"] for r in table]
    assert "scores" not in table[0]


def test_bad_inputs_are_named_before_weights_load(run, tmp_path, no_weights):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    with pytest.raises(FinetuneError, match=r"--top-k: must be at least 1, got 0"):
        predict_output(run, src, tmp_path / "out.jsonl", top_k=0)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("id,sentence\n1,fine film\n2,a good, long film\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ragged.csv line 3: 3 fields where the header has 2; quote a field"):
        predict_output(run, ragged, tmp_path / "out.jsonl")
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("id\tsentence\n1\tun film très bon\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"`--input`: .*latin.tsv is not UTF-8 text: line 2 .*--encoding"):
        predict_output(run, latin, tmp_path / "out.jsonl")
    missing = _write_delimited(tmp_path / "missing.csv", [{"id": "1", "review": "no text column"}], ",")
    with pytest.raises(DataError, match=r"missing.csv line 1: missing field 'sentence' \(or 'text'\)"):
        predict_output(run, missing, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_an_encoding_reads_a_latin1_file(run, tmp_path):
    latin = tmp_path / "latin.tsv"
    latin.write_bytes(f"id\tsentence\n1\ttrès {POSITIVE[0]} film\n".encode("latin-1"))
    out = tmp_path / "out.jsonl"
    assert (
        cli.main(["predict", str(run), "--input", str(latin), "--output", str(out), "--encoding", "latin-1"])
        == 0
    )
    (row,) = _read(out)
    assert row["sentence"] == f"très {POSITIVE[0]} film" and row["label"] == "positive"
