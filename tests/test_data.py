"""Data sources: local files in every format, the mirror layout, the Hub fallback message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_finetune.config.load import load_recipe
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
    with pytest.raises(
        DataError,
        match=r"`data.files.train`: could not read .*train.jsonl as JSON Lines: line 1 is not valid JSON",
    ):
        load_splits(data_cfg(files={"train": str(bad)}), ["train"])


TOKENISE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from hf_finetune.config.load import load_recipe
from hf_finetune.pipeline import prepare
prepared = prepare(load_recipe(sys.argv[1]))
split = prepared.task.preprocess(prepared.raw, prepared.tokenizer)["train"]
print(json.dumps([f["filename"] for f in split.cache_files]))
"""


def _another_cached_file(found: list[str], first: str) -> bool:
    """One tokenised file, in the same cache, not the first one."""
    return len(found) == 1 and found[0] != first and Path(found[0]).parent.parent == Path(first).parent.parent


def test_tokenised_splits_are_cached_on_disk_by_tokenizer_and_settings(
    tiny_model_dir, sentiment_files, tmp_path, monkeypatch
):
    """A new run (a fresh process) with the same data, tokenizer and preprocessing settings reads the
    tokenised split back from the cache; a changed setting or tokenizer tokenises again."""
    import os
    import shutil
    import subprocess
    import sys

    from .conftest import tiny_recipe, write_recipe

    cache = tmp_path / "cache"
    env = {**os.environ, "HF_FINETUNE_CACHE": str(cache)}

    def recipe_file(model_dir, **data):
        recipe = tiny_recipe(model_dir, sentiment_files, tmp_path / "out", data=data)
        return write_recipe(tmp_path / "recipe.yaml", recipe)

    def run(model_dir, **data):  # a new process, as a second `hf-finetune train` would be
        done = subprocess.run(
            [sys.executable, "-c", TOKENISE, recipe_file(model_dir, **data)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout.splitlines()[-1]), done.stderr

    def files(model_dir, **data):  # the same in this process (no ~10 s import per variant)
        from hf_finetune.config.load import load_recipe
        from hf_finetune.pipeline import prepare

        prepared = prepare(load_recipe(recipe_file(model_dir, **data)))
        split = prepared.task.preprocess(prepared.raw, prepared.tokenizer)["train"]
        return [f["filename"] for f in split.cache_files]

    (first,), log = run(tiny_model_dir)
    assert first.startswith(str(cache / "tokenised")) and "read from the cache" not in log
    written = os.stat(first).st_mtime_ns
    (again,), log = run(tiny_model_dir)
    assert again == first and "train split: tokenised examples read from the cache" in log
    assert os.stat(first).st_mtime_ns == written  # read back, not rewritten
    monkeypatch.setenv("HF_FINETUNE_CACHE", str(cache))
    assert files(tiny_model_dir) == [first]
    assert _another_cached_file(files(tiny_model_dir, max_seq_length=16), first)  # settings are in the key
    assert files(tiny_model_dir, padding="max_length") == [first]  # padding happens in the collator
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["do_lower_case"] = not config.get("do_lower_case", True)
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    assert _another_cached_file(files(other), first)  # so is the tokenizer
    assert files(tiny_model_dir, cache_tokenised=False) == []  # off: in memory, nothing written
