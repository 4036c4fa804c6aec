"""PEFT through `peft`: LoRA, IA3 and prompt tuning on a tiny BERT whose base already knows the task's
features (a full fine-tune of the random tiny model, saved without its head). Learning happens, the base
stays bit-identical, adapter dirs reload to identical predictions, merged models match adapters, and the
token-classification and QA heads are saved and restored."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, BertConfig

from hf_finetune import cli
from hf_finetune.config import load_recipe
from hf_finetune.errors import RecipeError
from hf_finetune.pipeline import (
    _restore_model,
    _restore_task,
    evaluate_output,
    load_output_recipe,
    predict_output,
    train,
)
from hf_finetune.strategies.peft import auto_lora_targets, head_modules

from .conftest import tiny_recipe, train_fails, write_jsonl, write_recipe, write_sentiment_files


@pytest.fixture(scope="session")
def sentiment_base(tiny_model_dir, tmp_path_factory):
    """The tiny BERT after full fine-tuning on the sentiment data, saved as a bare encoder (no head)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("sentiment-base")
    files = write_sentiment_files(root / "data")
    train(load_recipe(tiny_recipe(tiny_model_dir, files, root / "ft", training={"eval_strategy": "no"})))
    encoder = AutoModelForSequenceClassification.from_pretrained(root / "ft").bert
    encoder.save_pretrained(root / "base")
    AutoTokenizer.from_pretrained(root / "ft").save_pretrained(root / "base")
    return root / "base"


PEFT_RUNS = {
    "lora": ({"method": "lora", "r": 4}, 1e-2),
    "ia3": ({"method": "ia3"}, 3e-2),
    "prompt_tuning": ({"method": "prompt_tuning", "num_virtual_tokens": 4}, 3e-2),
}


@pytest.fixture(scope="module", params=list(PEFT_RUNS))
def peft_run(request, sentiment_base, tmp_path_factory):
    peft, lr = PEFT_RUNS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    files = write_sentiment_files(root / "data", as_names=True)
    recipe = tiny_recipe(sentiment_base, files, root / "out", peft=peft, training={"learning_rate": lr})
    metrics = train(load_recipe(recipe))
    return request.param, root / "out", metrics, files


def inputs(out):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    return tokenizer(
        ["the film was wonderful", "a dull boring plot", "really quite awful acting"],
        return_tensors="pt",
        padding=True,
    )


def logits_of(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_peft_learns_and_keeps_the_base_bit_identical(peft_run, sentiment_base):
    method, out, metrics, _ = peft_run
    assert metrics["eval_accuracy"] >= 0.9, metrics  # chance is 0.5; the head starts random
    assert metrics["trainable_params"] < 0.2 * metrics["total_params"]
    recipe = load_output_recipe(out)
    task, _ = _restore_task(out, recipe)
    model = _restore_model(out, recipe, task)
    base = AutoModelForSequenceClassification.from_pretrained(sentiment_base).state_dict()
    inner = model.get_base_model().state_dict()
    for name, value in base.items():
        if name.startswith("bert."):
            key = (
                name
                if name in inner
                else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
            )
            assert torch.equal(inner[key], value), name
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] and "classifier" in adapter["modules_to_save"]
    assert (out / "config.json").is_file() and json.loads((out / "config.json").read_text())["id2label"]


def test_reloaded_adapter_predicts_what_the_trained_model_predicted(peft_run, tmp_path):
    method, out, metrics, files = peft_run
    again = evaluate_output(out)
    assert again["eval_accuracy"] == metrics["eval_accuracy"]
    assert abs(again["eval_loss"] - metrics["eval_loss"]) < 1e-5
    recipe = load_output_recipe(out)
    task, _ = _restore_task(out, recipe)
    batch = inputs(out)
    first = logits_of(_restore_model(out, recipe, task), batch)
    second = logits_of(_restore_model(out, recipe, task), batch)
    assert (first - second).abs().max() < 1e-5


def test_merged_model_matches_the_adapter(peft_run, tmp_path, capsys):
    method, out, _, _ = peft_run
    target = tmp_path / "merged"
    code = cli.main(["export", str(out), "--merge", "--output", str(target)])
    if method == "prompt_tuning":
        assert code == 2 and "cannot be merged" in capsys.readouterr().err
        assert not target.exists()
        return
    assert code == 0, capsys.readouterr().err
    assert not (target / "adapter_config.json").exists() and (target / "model.safetensors").is_file()
    merged = AutoModelForSequenceClassification.from_pretrained(target)  # plain transformers
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    recipe = load_output_recipe(out)
    task, _ = _restore_task(out, recipe)
    batch = inputs(out)
    diff = (logits_of(merged, batch) - logits_of(_restore_model(out, recipe, task), batch)).abs().max()
    assert diff < 1e-4, diff
    assert evaluate_output(target)["eval_accuracy"] == evaluate_output(out)["eval_accuracy"]
    # predict takes both kinds of directory and agrees
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"sentence": "a wonderful film"}, {"sentence": "dull and boring"}]
    )
    rows = {}
    for name, directory in (("adapter", out), ("merged", target)):
        predict_output(directory, src, tmp_path / f"{name}.jsonl")
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert (
        [r["label"] for r in rows["adapter"]]
        == [r["label"] for r in rows["merged"]]
        == ["positive", "negative"]
    )
    assert all(abs(a["score"] - m["score"]) < 1e-4 for a, m in zip(rows["adapter"], rows["merged"]))


def test_plan_lists_adapters_and_head(sentiment_base, sentiment_files, tmp_path, capsys, no_weights):
    recipe = tiny_recipe(
        sentiment_base,
        sentiment_files,
        tmp_path / "out",
        peft={"method": "lora", "r": 4, "loraplus_lr_ratio": 16},
    )
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert cli.main(["plan", path, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    trainable = [g for g in plan["groups"] if g["trainable"]]
    lrs = {g["name"]: g["lr"] for g in trainable}
    assert lrs["layer.0"] == 3e-3 and lrs["layer.0 lora_B"] == 3e-3 * 16  # LoRA+
    assert {g["name"].split(" ")[0] for g in trainable} == {"layer.0", "layer.1", "head"}
    # r=4 on every linear of 2 blocks (q, k, v, attention out: 32x32; intermediate 32->64; output 64->32), head 32x2+2
    lora = 2 * (4 * 4 * (32 + 32) + 4 * (32 + 64) + 4 * (64 + 32))
    assert plan["trainable_params"] == lora + 66
    assert plan["strategy"].startswith("LoRA r=4 alpha=16 (LoRA+ x16)")


def test_auto_lora_targets_cover_every_block_linear_and_never_the_head():
    model = AutoModelForSequenceClassification.from_config(
        BertConfig(
            vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    )
    import re

    pattern = re.compile(auto_lora_targets(model))
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    matched = [n for n in linear if pattern.fullmatch(n)]
    assert len(matched) == 2 * 6
    assert not any(n.startswith(("classifier", "bert.pooler")) for n in matched)
    assert head_modules(model) == ["classifier"]


@pytest.mark.parametrize(
    "peft,strategy,expected",
    [
        (
            {"method": "lora"},
            {"gradual_unfreezing": True},
            "`strategy.gradual_unfreezing`: cannot be combined with `peft.method: lora`",
        ),
        (
            {"method": "ia3"},
            {"freeze_layers": 1},
            "`strategy.freeze_layers`: has no effect with `peft.method: ia3`",
        ),
        (
            {"method": "lora", "target_modules": ["classifier"]},
            {},
            "`peft.target_modules`: 'classifier' is part of the task head",
        ),
        (
            {"method": "lora", "target_modules": ["no_such_linear"]},
            {},
            "`peft.target_modules`: peft refused the model",
        ),
        ({"method": "ia3", "use_dora": True}, {}, "`peft.use_dora`: applies to `peft.method: lora` only"),
        ({"method": "lora", "r": 0}, {}, "`peft.r`: must be a positive integer"),
        ({"method": "lorra"}, {}, "`peft.method`: expected one of: lora, ia3"),
    ],
)
def test_peft_errors_before_weights(
    tiny_model_dir, sentiment_files, tmp_path, capsys, no_weights, peft, strategy, expected
):
    recipe = tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "out", peft=peft, strategy=strategy)
    train_fails(capsys, recipe, tmp_path, expected)


def test_prompt_tuning_for_token_classification_is_refused(tiny_model_dir, tmp_path, capsys, no_weights):
    from .conftest import write_jsonl
    from .test_token_classification import ner_recipe, ner_rows

    files = {"train": str(write_jsonl(tmp_path / "train.jsonl", ner_rows(10, seed=1)))}
    recipe = ner_recipe(tiny_model_dir, files, tmp_path / "out")
    recipe["peft"] = {"method": "prompt_tuning"}
    train_fails(
        capsys, recipe, tmp_path, "`peft.method`: prompt_tuning does not work for token-classification"
    )


def test_token_classification_head_is_saved_and_restored(tiny_model_dir, tmp_path):
    from .conftest import write_jsonl
    from .test_token_classification import ner_recipe, ner_rows

    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", ner_rows(120, seed=1))),
        "validation": str(write_jsonl(tmp_path / "validation.jsonl", ner_rows(30, seed=2))),
    }
    recipe = ner_recipe(tiny_model_dir, files, tmp_path / "out")
    recipe["peft"] = {"method": "lora", "r": 4}
    recipe["training"].update(num_train_epochs=2, learning_rate=1e-2)
    metrics = train(load_recipe(recipe))
    out = tmp_path / "out"
    assert "classifier" in json.loads((out / "adapter_config.json").read_text())["modules_to_save"]
    again = evaluate_output(out)
    assert again["eval_f1"] == metrics["eval_f1"] and abs(again["eval_loss"] - metrics["eval_loss"]) < 1e-5


def test_question_answering_head_is_saved_and_restored(tiny_model_dir, tmp_path):
    from .conftest import write_jsonl
    from .test_question_answering import qa_recipe, qa_row

    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", [qa_row(i) for i in range(24)])),
        "validation": str(write_jsonl(tmp_path / "validation.jsonl", [qa_row(100 + i) for i in range(8)])),
    }
    recipe = qa_recipe(tiny_model_dir, files, tmp_path / "out")
    recipe["peft"] = {"method": "lora", "r": 4}
    recipe["training"].update(num_train_epochs=1)
    metrics = train(load_recipe(recipe))
    out = tmp_path / "out"
    assert "qa_outputs" in json.loads((out / "adapter_config.json").read_text())["modules_to_save"]
    recipe_out = load_output_recipe(out)
    task, _ = _restore_task(out, recipe_out)
    model = _restore_model(out, recipe_out, task)
    trained_head = model.get_base_model().qa_outputs.modules_to_save["default"].weight
    fresh = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir).qa_outputs.weight
    assert not torch.equal(trained_head, fresh)  # the trained head came back, not a new random one
    again = evaluate_output(out)
    assert again["eval_f1"] == metrics["eval_f1"]


def test_recipe_error_type_for_unknown_head_module():
    with pytest.raises(RecipeError):
        load_recipe(
            {
                "data": {"files": {"train": "x.jsonl"}},
                "peft": {"method": "prefix_tuning", "target_modules": ["query"]},
            }
        )


def test_resume_continues_adapter_head_and_optimizer(sentiment_base, tmp_path):
    """Stopping at a checkpoint and resuming ends exactly where one uninterrupted run ends."""
    from safetensors.torch import load_file

    files = write_sentiment_files(tmp_path / "data", as_names=True)
    training = {
        "learning_rate": 1e-2,
        "max_steps": 8,
        "save_strategy": "steps",
        "save_steps": 4,
        "eval_strategy": "no",
    }

    def recipe(out, **extra):
        return load_recipe(
            tiny_recipe(
                sentiment_base, files, out, peft={"method": "lora", "r": 4}, training={**training, **extra}
            )
        )

    train(recipe(tmp_path / "straight"))
    checkpoint = tmp_path / "straight" / "checkpoint-4"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert (checkpoint / "config.json").is_file() and (checkpoint / "recipe.yaml").is_file()
    train(recipe(tmp_path / "resumed", resume_from_checkpoint=str(checkpoint)))
    straight = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    at_checkpoint = load_file(checkpoint / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys() and any("classifier" in k for k in straight)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.equal(straight[k], at_checkpoint[k]) for k in straight)  # steps 5-8 did move it


@pytest.mark.parametrize("head", ["sequence", "token", "qa"])
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "deberta-v2", "electra", "xlm-roberta"])
def test_lora_finds_the_head_on_every_architecture(arch, head):
    """The head is trained whole (modules_to_save), LoRA sits in every block and never in the head."""
    from hf_finetune.strategies.peft import wrap

    from .test_strategies import CONFIGS, HEADS, build

    auto_class, _ = HEADS[head]
    task = {"sequence": "text-classification", "token": "token-classification", "qa": "question-answering"}[
        head
    ]
    model = build(CONFIGS[arch](), auto_class)
    heads = head_modules(model)
    recipe = load_recipe(
        {"task": task, "data": {"files": {"train": "x.jsonl"}}, "peft": {"method": "lora", "r": 2}}
    )
    wrapped = wrap(model, recipe)
    saved = set(wrapped.peft_config["default"].modules_to_save)
    assert set(heads) <= saved, (heads, saved)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    for i in range(3):
        assert any(f".layer.{i}." in n and "lora_" in n for n in trainable), i
    head_params = [n for n in trainable if any(f"model.{h}." in n for h in heads)]
    assert head_params and all("modules_to_save" in n for n in head_params)
    assert not any("lora_" in n for n in head_params)
    frozen_base = [n for n, p in wrapped.named_parameters() if not p.requires_grad]
    assert any("word_embeddings" in n for n in frozen_base)
    ids = torch.randint(5, 99, (2, 6))
    out = wrapped(input_ids=ids, attention_mask=torch.ones_like(ids))
    (out.logits if head != "qa" else out.start_logits).sum().backward()
    assert all(p.grad is not None for n, p in wrapped.named_parameters() if p.requires_grad and "lora_A" in n)
