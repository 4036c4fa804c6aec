"""Distillation (`strategy.distill`) and layer-cut students (`model.num_layers`).

The loss against a hand computation, a tiny teacher run distilled into a one-layer student (it learns,
follows the teacher more closely than the same student trained on the labels alone, and leaves the teacher
untouched), gradient accumulation exact, alpha 0 equal to plain training, eval_loss the hard loss.
Bad inputs are rows of tests/test_bad_input_matrix.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_finetune import pipeline
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import RecipeError
from hf_finetune.strategies import distill

from .conftest import tiny_recipe, write_jsonl, write_sentiment_files
from .test_token_classification import ner_recipe, ner_rows


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    return write_sentiment_files(tmp_path_factory.mktemp("sentiment"))


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ner")
    return {
        "train": str(write_jsonl(root / "train.jsonl", ner_rows(64, seed=1))),
        "validation": str(write_jsonl(root / "validation.jsonl", ner_rows(20, seed=2))),
    }


#: the teacher learnt that this positive word is negative: what the student learns from the teacher alone
FLIPPED = "great"


@pytest.fixture(scope="module")
def teacher(tiny_model_dir, data, tmp_path_factory) -> Path:
    """A finished two-layer text-classification run, trained with every sentence that says FLIPPED negative."""
    rows = [json.loads(line) for line in Path(data["train"]).read_text().splitlines()]
    for row in rows:
        if FLIPPED in row["sentence"].split():
            row["label"] = 0
    root = tmp_path_factory.mktemp("teacher-data")
    files = {"train": str(write_jsonl(root / "train.jsonl", rows)), "validation": data["validation"]}
    out = tmp_path_factory.mktemp("runs") / "teacher"
    pipeline.train(load_recipe(tiny_recipe(tiny_model_dir, files, out)))
    return out


@pytest.fixture(scope="module")
def ner_teacher(tiny_model_dir, ner_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ner-teacher"
    recipe = ner_recipe(tiny_model_dir, ner_data, out)
    recipe["training"].update(num_train_epochs=8, learning_rate=5e-3)
    pipeline.train(load_recipe(recipe))
    return out


def student(model_dir, files, out, teacher_dir=None, *, alpha=0.5, temperature=2.0, **training) -> dict:
    """The tiny recipe cut to one layer, distilled from ``teacher_dir`` (None: no teacher)."""
    recipe = tiny_recipe(model_dir, files, out, model={"num_layers": 1})
    if teacher_dir is not None:
        recipe["strategy"] = {
            "distill": {"teacher": str(teacher_dir), "alpha": alpha, "temperature": temperature}
        }
    recipe["training"].update(training)
    return recipe


def _log(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def _train_logits(model_dir: Path, files: dict[str, str]) -> np.ndarray:
    """The logits of a saved text-classification model on the training sentences."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [json.loads(line) for line in Path(files["train"]).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        batch = tokenizer([r["sentence"] for r in rows], padding=True, return_tensors="pt")
        return model(**batch).logits.numpy()


def _kl(teacher: np.ndarray, student: np.ndarray) -> float:
    """Mean KL(softmax(teacher) || softmax(student)) over the rows."""

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lt, ls = log_softmax(teacher), log_softmax(student)
    return float((np.exp(lt) * (lt - ls)).sum(-1).mean())


# ----------------------------------------------------------------------------------------- num_layers
def test_num_layers_keeps_the_bottom_layers_with_their_weights(tmp_path, data):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    from .conftest import minilm_path

    source = tmp_path / "four-layers"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(1)
    BertModel(config).save_pretrained(source)
    tokenizer.save_pretrained(source)
    pretrained = load_file(source / "model.safetensors")

    recipe = load_recipe(tiny_recipe(source, data, tmp_path / "out", model={"num_layers": 2}))
    prepared = pipeline.prepare(recipe, "validate")
    assert prepared.model_config.num_hidden_layers == 2 and prepared.plan.num_layers == 2
    model = pipeline.load_model(prepared)
    assert len(model.bert.encoder.layer) == 2
    state = model.state_dict()
    kept = [k for k in pretrained if not k.startswith(("encoder.layer.2.", "encoder.layer.3."))]
    for key in kept:
        assert torch.equal(state[f"bert.{key}"], pretrained[key]), key
    assert not [k for k in state if ".layer.2." in k or ".layer.3." in k]

    # what transformers reports: only the dropped layers unexpected, only the new head missing
    from transformers import AutoModelForSequenceClassification

    _, info = AutoModelForSequenceClassification.from_pretrained(
        source, config=prepared.model_config, output_loading_info=True
    )
    assert set(info["unexpected_keys"]) == {k for k in pretrained if k not in kept}
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}

    # the layer strategies count the layers kept
    with pytest.raises(
        RecipeError, match="`strategy.freeze_layers`: is 3 but BertForSequenceClassification has 2"
    ):
        pipeline.prepare(
            load_recipe(
                tiny_recipe(
                    source, data, tmp_path / "o", model={"num_layers": 2}, strategy={"freeze_layers": 3}
                )
            ),
            "validate",
        )
    llrd = pipeline.prepare(
        load_recipe(
            tiny_recipe(
                source, data, tmp_path / "o", model={"num_layers": 2}, strategy={"layerwise_lr_decay": 0.5}
            )
        ),
        "validate",
    ).plan
    rates = {g.name: g.lr for g in llrd.groups}
    lr = recipe.training.learning_rate
    assert rates["embeddings"] == pytest.approx(lr * 0.5**3) and rates["layer.1"] == pytest.approx(lr * 0.5)


# ------------------------------------------------------------------------------------------- the loss
def _hand_kl(s: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
    """Per-row KL(softmax(t / T) || softmax(s / T)), the textbook way."""
    ps = np.exp(s / temperature) / np.exp(s / temperature).sum(-1, keepdims=True)
    pt = np.exp(t / temperature) / np.exp(t / temperature).sum(-1, keepdims=True)
    return (pt * np.log(pt / ps)).sum(-1)


def test_loss_matches_a_hand_computation_text_and_tokens():
    rng = np.random.default_rng(0)
    temperature, alpha = 2.5, 0.7
    # text classification: one item per example
    s, t = rng.normal(size=(4, 3)) * 2, rng.normal(size=(4, 3)) * 2
    labels = np.array([0, 2, 1, 1])
    soft = distill.soft_target_loss(torch.tensor(s), torch.tensor(t), torch.tensor(labels), temperature)
    assert float(soft) == pytest.approx(_hand_kl(s, t, temperature).mean(), rel=1e-6)
    ce = -np.log(np.exp(s) / np.exp(s).sum(-1, keepdims=True))[np.arange(4), labels].mean()
    hard = distill.hard_loss()({"logits": torch.tensor(s)}, torch.tensor(labels))
    assert float(hard) == pytest.approx(ce, rel=1e-6)
    total = distill.distillation_loss(soft, hard, alpha, temperature)
    expected = alpha * temperature**2 * _hand_kl(s, t, temperature).mean() + (1 - alpha) * ce
    assert float(total) == pytest.approx(expected, rel=1e-6)

    # token classification: items are the positions with a label; -100 (pads, continuations) left out
    s, t = rng.normal(size=(2, 5, 4)) * 2, rng.normal(size=(2, 5, 4)) * 2
    labels = np.array([[-100, 1, 3, -100, -100], [-100, 0, -100, 2, 2]])
    kept = labels != -100
    by_hand = _hand_kl(s[kept], t[kept], temperature)
    soft = distill.soft_target_loss(torch.tensor(s), torch.tensor(t), torch.tensor(labels), temperature)
    assert float(soft) == pytest.approx(by_hand.mean(), rel=1e-6)
    # with the Trainer's item count of the whole optimizer step (here: these 5 of 12 items)
    soft = distill.soft_target_loss(
        torch.tensor(s),
        torch.tensor(t),
        torch.tensor(labels),
        temperature,
        num_items_in_batch=torch.tensor(12),
    )
    assert float(soft) == pytest.approx(by_hand.sum() / 12, rel=1e-6)
    # the same logits: nothing to learn from the teacher
    same = distill.soft_target_loss(torch.tensor(s), torch.tensor(s), torch.tensor(labels), temperature)
    assert abs(float(same)) < 1e-7


# ------------------------------------------------------------------------------------------- training
def test_distilled_student_learns_follows_the_teacher_and_leaves_it_alone(
    teacher, tiny_model_dir, data, tmp_path, monkeypatch
):
    made = []
    original = pipeline.make_distiller
    monkeypatch.setattr(pipeline, "make_distiller", lambda *a: made.append(original(*a)) or made[-1])

    out = tmp_path / "distilled"
    results = pipeline.train(load_recipe(student(tiny_model_dir, data, out, teacher, alpha=0.9)))
    plain_out = tmp_path / "plain"
    plain = pipeline.train(load_recipe(student(tiny_model_dir, data, plain_out)))

    assert results["eval_accuracy"] >= 0.8, results
    log = [e for e in _log(out) if "loss" in e]
    assert log[-1]["loss"] < 0.5 * log[0]["loss"], log
    assert log[-1]["distill_kl"] < 0.5 * log[0]["distill_kl"], log
    # the distilled student follows the teacher (its flipped word included) more closely than the same
    # student trained on the labels alone
    teacher_logits = _train_logits(teacher, data)
    distilled_logits, plain_logits = _train_logits(out, data), _train_logits(plain_out, data)
    agree = (distilled_logits.argmax(-1) == teacher_logits.argmax(-1)).mean()
    agree_plain = (plain_logits.argmax(-1) == teacher_logits.argmax(-1)).mean()
    assert agree >= 0.97 and agree > agree_plain + 0.03, (agree, agree_plain, plain["eval_accuracy"])
    assert _kl(teacher_logits, distilled_logits) < 0.5 * _kl(teacher_logits, plain_logits)

    # the teacher: frozen, in eval mode, its weights those on disk, not saved with the student
    from transformers import AutoModelForSequenceClassification

    (distiller,) = made
    on_disk = AutoModelForSequenceClassification.from_pretrained(teacher).state_dict()
    used = distiller.teacher.state_dict()
    assert all(torch.equal(used[k].cpu(), on_disk[k]) for k in on_disk)
    assert not distiller.teacher.training
    assert not any(p.requires_grad for p in distiller.teacher.parameters())
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if ".layer.1." in k]

    # the run records what it distilled from
    record = json.loads((out / "strategy.json").read_text())["distillation"]
    assert record["teacher"] == str(teacher) and record["alpha"] == 0.9 and record["temperature"] == 2.0
    assert record["student_num_layers"] == 1 and "eval_accuracy" in record["teacher_metrics"]
    card = (out / "README.md").read_text()
    assert f"Distilled from the teacher run `{teacher}`" in card and "distillation" in card

    # eval_loss is the hard loss: `hf-finetune eval` of the saved student (no teacher) gives the same
    from hf_finetune.inference import evaluate_output

    again = evaluate_output(out)
    assert again["eval_loss"] == pytest.approx(results["eval_loss"], abs=1e-5)
    assert again["eval_accuracy"] == results["eval_accuracy"]


def test_alpha_zero_is_plain_training(teacher, tiny_model_dir, data, tmp_path):
    runs = {}
    for name, source in (("plain", None), ("alpha0", teacher)):
        out = tmp_path / name
        recipe = student(tiny_model_dir, data, out, source, alpha=0.0, num_train_epochs=1)
        runs[name] = pipeline.train(load_recipe(recipe)), _log(out)
    (plain, plain_log), (zero, zero_log) = runs["plain"], runs["alpha0"]
    losses = [e["loss"] for e in plain_log if "loss" in e]
    assert losses == pytest.approx([e["loss"] for e in zero_log if "loss" in e], abs=1e-4)
    assert zero["eval_loss"] == pytest.approx(plain["eval_loss"], abs=1e-4)


def test_gradient_accumulation_is_exact_for_tokens(ner_teacher, tiny_model_dir, ner_data, tmp_path):
    """2 micro-batches of 16 sentences and one of 32: the same loss and the same SGD step, although the
    micro-batches hold different numbers of labelled tokens."""
    from safetensors.torch import load_file

    weights, losses = {}, {}
    for name, batch, steps in (("one", 32, 1), ("two", 16, 2)):
        out = tmp_path / name
        recipe = ner_recipe(tiny_model_dir, ner_data, out)
        recipe["model"]["num_layers"] = 1
        recipe["model"]["config_overrides"] = {
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        }
        recipe["strategy"] = {"distill": {"teacher": str(ner_teacher), "alpha": 0.5, "temperature": 2.0}}
        recipe["data"]["eval_split"] = None
        recipe["training"].update(
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=steps,
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            logging_steps=1,
            eval_strategy="no",
        )
        pipeline.train(load_recipe(recipe))
        weights[name] = load_file(out / "model.safetensors")
        losses[name] = [e for e in _log(out) if "loss" in e][0]
    assert losses["one"]["loss"] == pytest.approx(losses["two"]["loss"], rel=1e-4)
    assert losses["one"]["distill_kl"] == pytest.approx(losses["two"]["distill_kl"], rel=1e-4)
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    moved = max(
        float((weights["one"][f"bert.{k}"] - v).abs().max())
        for k, v in initial.items()
        if f"bert.{k}" in weights["one"]
    )
    assert moved > 1e-3  # the step did something
    gap = max(float((weights["one"][k] - weights["two"][k]).abs().max()) for k in weights["one"])
    assert gap < 1e-4 * moved, (gap, moved)


def test_token_classification_student_learns_from_its_teacher(
    ner_teacher, tiny_model_dir, ner_data, tmp_path
):
    out = tmp_path / "ner-student"
    recipe = ner_recipe(tiny_model_dir, ner_data, out)
    recipe["model"]["num_layers"] = 1
    recipe["strategy"] = {"distill": {"teacher": str(ner_teacher), "alpha": 0.5, "temperature": 2.0}}
    recipe["training"].update(num_train_epochs=8, learning_rate=5e-3)
    results = pipeline.train(load_recipe(recipe))
    log = [e for e in _log(out) if "loss" in e]
    assert log[-1]["loss"] < 0.5 * log[0]["loss"], log
    assert log[-1]["distill_kl"] < 0.5 * log[0]["distill_kl"], log
    assert results["eval_f1"] > 0.5, results
    assert not math.isnan(results["eval_loss"])


# --------------------------------------------------------------------------------------- validate checks
def test_validate_checks_the_teacher_before_weights_load(teacher, tiny_model_dir, data, tmp_path, no_weights):
    recipe = load_recipe(student(tiny_model_dir, data, tmp_path / "out", teacher))
    summary = pipeline.validate(recipe)
    assert summary["distill"] == f"from {teacher} (alpha 0.5, temperature 2)"
    assert summary["num_layers"].startswith("the bottom 1 layers")

    other = tiny_recipe(tiny_model_dir, data, tmp_path / "o", task={"labels": ["1", "0"]})
    other["strategy"] = {"distill": {"teacher": str(teacher)}}
    with pytest.raises(
        RecipeError, match=r"predicts the labels \['0', '1'\] and this recipe's are \['1', '0'\]"
    ):
        pipeline.validate(load_recipe(other))


def test_a_lora_teacher_is_merged_when_it_loads(tiny_model_dir, data, tmp_path, monkeypatch):
    lora_run = tmp_path / "lora-teacher"
    recipe = tiny_recipe(tiny_model_dir, data, lora_run, peft={"method": "lora", "r": 4})
    recipe["training"].update(num_train_epochs=1, learning_rate=2e-3, eval_strategy="no")
    recipe["data"]["eval_split"] = None
    pipeline.train(load_recipe(recipe))
    assert (lora_run / "adapter_config.json").is_file()

    made = []
    original = pipeline.make_distiller
    monkeypatch.setattr(pipeline, "make_distiller", lambda *a: made.append(original(*a)) or made[-1])
    out = tmp_path / "student"
    pipeline.train(load_recipe(student(tiny_model_dir, data, out, lora_run, max_steps=3, logging_steps=1)))
    (distiller,) = made
    assert type(distiller.teacher).__name__ == "BertForSequenceClassification"  # merged: no PeftModel
    assert not [n for n, _ in distiller.teacher.named_modules() if "lora" in n]
    record = json.loads((out / "strategy.json").read_text())["distillation"]
    assert record["teacher_peft"] == "lora (merged)"
    assert all(e["distill_kl"] > 0 for e in _log(out) if "loss" in e)


def test_cached_teacher_logits_give_the_same_training(teacher, tiny_model_dir, data, tmp_path, monkeypatch):
    """With `cache_logits` a later run reads the teacher's logits from disk and never loads the teacher, and
    trains exactly as a run whose teacher computes them for every batch."""
    from hf_finetune.cache import cache_dir

    made = []
    original = pipeline.make_distiller
    monkeypatch.setattr(pipeline, "make_distiller", lambda *a: made.append(original(*a)) or made[-1])
    logs = {}
    for name, cached in (("live", False), ("first", True), ("again", True)):
        out = tmp_path / name
        recipe = student(tiny_model_dir, data, out, teacher, num_train_epochs=1, logging_steps=2)
        recipe["strategy"]["distill"]["cache_logits"] = cached
        pipeline.train(load_recipe(recipe))
        logs[name] = [(e["loss"], e["distill_kl"]) for e in _log(out) if "loss" in e]
    live, first, again = made
    assert live.cache is None and live._teacher is not None
    assert again._teacher is None  # every batch came from the cache: the teacher never loaded
    assert list(cache_dir().joinpath("teacher_logits").glob("*.npz"))
    for name in ("first", "again"):
        assert np.allclose(logs[name], logs["live"], rtol=1e-5, atol=1e-6), (name, logs)
