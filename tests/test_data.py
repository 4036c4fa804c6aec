"""Data sources: local files in every format, the mirror layout, the Hub fallback message."""

from __future__ import annotations

import json

import pytest

from hf_finetune.config import load_recipe
from hf_finetune.data import load_splits, resolve_source
from hf_finetune.errors import DataError, RecipeError

ROWS = [{"sentence": "a good film", "label": 1}, {"sentence": "a bad film", "label": 0}]


def write(path, fmt):
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        path.write_text(
            f"sentence{sep}label\n" + "".join(f"{r['sentence']}{sep}{r['label']}\n" for r in ROWS)
        )
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    return str(path)


def data_cfg(**data):
    return load_recipe({"task": "text-classification", "data": data, "training": {"output_dir": "x"}}).data


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_local_files_in_every_format(tmp_path, fmt):
    cfg = data_cfg(files={"train": write(tmp_path / f"train.{fmt}", fmt)})
    splits, source = load_splits(cfg, ["train"])
    assert source.kind == "files"
    assert list(splits["train"]["sentence"]) == ["a good film", "a bad film"]
    assert list(splits["train"]["label"]) == [1, 0]


def test_mirror_layout_dataset_config_split(tmp_path, monkeypatch):
    folder = tmp_path / "mirror" / "glue" / "sst2"
    folder.mkdir(parents=True)
    write(folder / "train.jsonl", "jsonl")
    write(folder / "validation.jsonl", "jsonl")
    monkeypatch.setenv("HF_FINETUNE_DATA_MIRROR", str(tmp_path / "mirror"))
    cfg = data_cfg(dataset="glue", config="sst2")
    splits, source = load_splits(cfg, ["train", "validation"])
    assert source.kind == "mirror" and len(splits["validation"]) == 2
    with pytest.raises(
        DataError, match=r"`data.eval_split`: split 'test' not found .* \(splits there: train, validation\)"
    ):
        load_splits(data_cfg(dataset="glue", config="sst2", eval_split="test"), ["train", "test"])


def test_mirror_without_the_dataset_falls_back_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_FINETUNE_DATA_MIRROR", str(tmp_path))
    assert resolve_source(data_cfg(dataset="imdb")).kind == "hub"


def test_explicit_mirror_must_exist(tmp_path):
    with pytest.raises(RecipeError, match="`data.mirror`: directory not found"):
        resolve_source(data_cfg(dataset="glue", config="sst2", mirror=str(tmp_path / "nope")))


def test_hub_failure_offline_says_how_to_use_local_data():
    with pytest.raises(
        DataError, match=r"`data.dataset`: could not load Hub dataset .*HF_FINETUNE_DATA_MIRROR"
    ):
        load_splits(data_cfg(dataset="surely-not-a-cached-dataset-xyz"), ["train"])


def test_files_need_the_training_split(tmp_path):
    with pytest.raises(RecipeError, match="`data.files`: has no file for the training split 'train'"):
        data_cfg(files={"validation": write(tmp_path / "v.csv", "csv")})


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match=r"`data.files.train`: could not read .*train.jsonl as json"):
        load_splits(data_cfg(files={"train": str(bad)}), ["train"])
