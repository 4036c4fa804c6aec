"""The installed console script and the listing commands; dynamic padding in the collator."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_finetune import catalog, cli
from hf_finetune.config import load_recipe
from hf_finetune.pipeline import make_task

from .conftest import tiny_recipe


def test_console_script_lists_every_bundled_recipe_with_a_description():
    beside = Path(sys.executable).parent / "hf-finetune"  # the environment running the tests
    exe = str(beside) if beside.is_file() else shutil.which("hf-finetune")
    assert exe, "the `hf-finetune` console script is not installed"
    proc = subprocess.run([exe, "recipes"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    for name in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"):
        assert f"glue/{name}" in lines
        assert "(GLUE)" in lines[f"glue/{name}"]


def test_tasks_command(capsys):
    assert cli.main(["tasks"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["question-answering", "text-classification", "token-classification"]


def test_bundled_recipe_names_resolve():
    assert catalog.resolve_recipe_path("glue/rte").endswith("recipes/glue/rte.yaml")


def test_train_requires_a_recipe_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train"])
    assert exit_info.value.code == 2


def test_batches_are_padded_to_their_longest_example_not_max_seq_length(
    tiny_model_dir, sentiment_files, tmp_path
):
    from transformers import AutoTokenizer

    recipe = load_recipe(tiny_recipe(tiny_model_dir, sentiment_files, tmp_path, data={"max_seq_length": 128}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    collate = make_task(recipe).data_collator(tokenizer, recipe.training)
    features = [
        dict(tokenizer("a short one"), labels=0),
        dict(tokenizer("a somewhat longer sentence here"), labels=1),
    ]
    batch = collate(features)
    longest = max(len(f["input_ids"]) for f in features)
    assert batch["input_ids"].shape == (2, longest) and longest < 128
    assert batch["attention_mask"][0].sum() == len(features[0]["input_ids"])
