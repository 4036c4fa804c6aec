"""PEFT through `peft`: LoRA, IA3 and prompt tuning.

On the real pretrained MiniLM (sentence-transformers/all-MiniLM-L6-v2, seeded from its PyPI package) and the
first SST-2 examples of the data mirror: LoRA and IA3 learn what the task head alone cannot in the same
steps, every adapter parameter moves while every base weight stays bit-identical, adapter dirs reload to
identical predictions, and merged models match adapters. On a tiny random BERT: the plan, resume, the
errors, and the token-classification and QA heads saved and restored.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    BertConfig,
    TrainerCallback,
)

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import RecipeError
from hf_finetune.inference import (
    evaluate_output,
    load_output_recipe,
    predict_output,
    restore_model,
    restore_task,
)
from hf_finetune.pipeline import train
from hf_finetune.strategies.peft import auto_lora_targets, head_modules

from .conftest import MINILM, tiny_recipe, train_fails, write_jsonl, write_recipe, write_sentiment_files

# ------------------------------------------------------------------------------------------------ real MiniLM
# Every run: the first STEPS x 16 SST-2 training sentences (one pass, length-grouped batches of 16, at most
# 32 tokens), evaluated on the first 300 dev sentences (155 positive: majority class 0.517).
STEPS = 60
RUNS = {
    # name: (recipe sections, learning rate, steps)
    # the head alone (MiniLM frozen): its best of the learning rates tried, 1e-3 / 1e-2 / 3e-2 / 1e-1 gave
    # 0.517 / 0.527 / 0.580 / 0.607 (seed 7); 1e-1 gave 0.623 / 0.587 at seeds 1 / 2
    "probe": ({"strategy": {"freeze_all_but_head": True}}, 1e-1, STEPS),
    # 0.757 / 0.737 / 0.757 at seeds 7 / 1 / 2 (lr 5e-3: 0.647)
    "lora": ({"peft": {"method": "lora", "r": 4}}, 2e-3, STEPS),
    # 0.723 / 0.737 / 0.700 at seeds 7 / 1 / 2 (lr 1e-1: 0.730)
    "ia3": ({"peft": {"method": "ia3"}}, 3e-2, STEPS),
    # Prompt tuning does not learn SST-2 on this 6-layer model within a test's budget: 0.517-0.607 over
    # 60-150 steps, lr 1e-2 to 1, 1-20 virtual tokens, with and without a slower head (p_tuning: 0.520),
    # no better than the head alone. It runs shortly here, for what it must do: move its prompt only.
    "prompt_tuning": ({"peft": {"method": "prompt_tuning", "num_virtual_tokens": 8}}, 1e-1, 20),
}
# LoRA and IA3 must beat the head alone by this much (measured gaps at the same seed: 0.11 to 0.17). With
# adapters that did not learn, an adapter run IS a head-only run (LoRA's B starts at zero, IA3's vectors at
# one: the base's function), at a learning rate that gives the head alone 0.52-0.58.
MARGIN_OVER_PROBE = 0.06


class Snapshots(TrainerCallback):
    """What training did to the parameters: the trainable ones at the start and the end (copies), and the
    names of frozen ones that changed (the base's copies are dropped when training ends)."""

    def __init__(self):
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}
        self.frozen_changed: list[str] | None = None
        self.frozen_count = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        self.start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        self.end = {n: params[n].detach().clone() for n in self.start}
        self.frozen_changed = [n for n, v in self._frozen.items() if not torch.equal(params[n], v)]
        self.frozen_count = len(self._frozen)
        del self._frozen


def sst2_recipe(mirror, out, name: str) -> dict:
    sections, lr, steps = RUNS[name]
    recipe = {
        "task": {
            "name": "text-classification",
            "text_column": "sentence",
            "label_column": "label",
            "labels": ["negative", "positive"],
        },
        "model": {"name_or_path": MINILM},
        "data": {
            "dataset": "glue",
            "config": "sst2",
            "mirror": str(mirror),
            "max_seq_length": 32,
            "max_train_samples": steps * 16,
            "max_eval_samples": 300,
        },
        "training": {
            "output_dir": str(out),
            "learning_rate": lr,
            "max_steps": steps,
            "warmup_steps": 0.1,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 64,
            "train_sampling_strategy": "group_by_length",
            "eval_strategy": "no",
            "save_strategy": "no",
            "logging_steps": 10,
            "seed": 7,
            "disable_tqdm": True,
            "use_cpu": True,
            "report_to": "none",
            # transformers' own values where hf-finetune has defaults: the thresholds were measured on them
            "weight_decay": 0.0,
            "bf16": False,
        },
    }
    recipe.update(sections)
    return recipe


@pytest.fixture(scope="module")
def sst2_run(shared_data, tmp_path_factory):
    """``sst2_run(name)``: (output dir, final metrics, Snapshots) of that run, trained once per module."""
    runs = {}

    def run(name: str):
        if name not in runs:
            out = tmp_path_factory.mktemp(name) / "out"
            snapshots = Snapshots()
            metrics = train(load_recipe(sst2_recipe(shared_data, out, name)), callbacks=[snapshots])
            runs[name] = out, metrics, snapshots
        return runs[name]

    return run


ADAPTERS = ["lora", "ia3", "prompt_tuning"]
# what each method adds: LoRA's A and B, IA3's scaling vectors, prompt tuning's virtual-token embeddings
ADAPTER_PARAMS = {"lora": ("lora_A", "lora_B"), "ia3": ("ia3_l",), "prompt_tuning": ("prompt_encoder",)}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_adapters_learn_what_the_head_alone_cannot(sst2_run, method):
    _, probe, _ = sst2_run("probe")
    _, metrics, _ = sst2_run(method)
    assert metrics["trainable_params"] < 0.02 * metrics["total_params"]
    assert probe["trainable_params"] == 384 * 2 + 2  # the classifier alone
    assert metrics["eval_accuracy"] >= probe["eval_accuracy"] + MARGIN_OVER_PROBE, (metrics, probe)
    assert metrics["eval_accuracy"] >= 0.68, metrics  # majority class 0.517


@pytest.mark.slow
@pytest.mark.parametrize("method", ADAPTERS)
def test_adapter_parameters_move_and_the_base_stays_bit_identical(sst2_run, method):
    out, metrics, snapshots = sst2_run(method)
    # in training: every trainable parameter is the adapter's or the head's, and each one moved
    trainable = list(snapshots.start)
    adapter = [n for n in trainable if any(key in n for key in ADAPTER_PARAMS[method])]
    head = [n for n in trainable if "modules_to_save" in n and "classifier" in n]
    assert adapter and head and sorted(adapter + head) == sorted(trainable), trainable
    for name in trainable:
        moved = (snapshots.end[name] - snapshots.start[name]).abs().max().item()
        assert moved > 1e-4, (name, moved)
    if method == "lora":  # B starts at zero: the adapted model starts as the base
        assert all(not snapshots.start[n].any() for n in adapter if "lora_B" in n)
    if method == "ia3":  # the scaling vectors start at one
        assert all(torch.equal(snapshots.start[n], torch.ones_like(snapshots.start[n])) for n in adapter)
    # ... and no frozen weight changed, not by one bit
    assert snapshots.frozen_count > 100 and snapshots.frozen_changed == []

    # the saved adapter, reloaded, sits on the pretrained weights as they are in the Hub cache
    recipe = load_output_recipe(out)
    task, _ = restore_task(out, recipe)
    model = restore_model(out, recipe, task)
    base = AutoModelForSequenceClassification.from_pretrained(MINILM).state_dict()
    inner = model.get_base_model().state_dict()
    compared = 0
    for name, value in base.items():
        if name.startswith("bert."):
            key = (
                name
                if name in inner
                else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
            )
            assert torch.equal(inner[key], value), name
            compared += 1
    assert compared > 100
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] and "classifier" in adapter_config["modules_to_save"]
    assert adapter_config["base_model_name_or_path"] == MINILM
    assert (out / "config.json").is_file() and json.loads((out / "config.json").read_text())["id2label"]


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


@pytest.mark.slow
@pytest.mark.parametrize("method", ADAPTERS)
def test_reloaded_adapter_predicts_what_the_trained_model_predicted(sst2_run, method):
    out, metrics, _ = sst2_run(method)
    again = evaluate_output(out)
    assert again["eval_accuracy"] == metrics["eval_accuracy"]
    assert abs(again["eval_loss"] - metrics["eval_loss"]) < 1e-5
    recipe = load_output_recipe(out)
    task, _ = restore_task(out, recipe)
    batch = inputs(out)
    first = logits_of(restore_model(out, recipe, task), batch)
    second = logits_of(restore_model(out, recipe, task), batch)
    assert (first - second).abs().max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("method", ADAPTERS)
def test_merged_model_matches_the_adapter(sst2_run, method, tmp_path, capsys):
    out, _, _ = sst2_run(method)
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
    task, _ = restore_task(out, recipe)
    batch = inputs(out)
    diff = (logits_of(merged, batch) - logits_of(restore_model(out, recipe, task), batch)).abs().max()
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


# ------------------------------------------------------------------------------------------------ tiny BERT
def test_plan_lists_adapters_and_head(tiny_model_dir, sentiment_files, tmp_path, capsys, no_weights):
    recipe = tiny_recipe(
        tiny_model_dir,
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
    task, _ = restore_task(out, recipe_out)
    model = restore_model(out, recipe_out, task)
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


def test_resume_continues_adapter_head_and_optimizer(tiny_model_dir, tmp_path):
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
                tiny_model_dir, files, out, peft={"method": "lora", "r": 4}, training={**training, **extra}
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
