"""End to end on a tiny random BERT: learning happens, the output directory holds the contract,
eval and predict work from it, and its recipe.yaml reproduces the run."""

from __future__ import annotations

import functools
import json
import random

import pytest
import torch

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.inference import evaluate_output, predict_output
from hf_finetune.pipeline import train

from .conftest import NEGATIVE, POSITIVE, tiny_recipe, write_jsonl


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from .conftest import write_sentiment_files

    root = tmp_path_factory.mktemp("run")
    files = write_sentiment_files(root / "data", as_names=True)
    raw = tiny_recipe(tiny_model_dir, files, root / "out")
    raw["model"]["config_overrides"] = {"attention_probs_dropout_prob": 0.05}
    metrics = train(load_recipe(raw))
    return root / "out", metrics, files


def test_training_learns(trained):
    out, metrics, _ = trained
    assert metrics["eval_accuracy"] >= 0.9, metrics  # chance is 0.5
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) >= 4
    assert sum(losses[-2:]) / 2 < 0.6 * sum(losses[:2]) / 2, losses


def test_output_directory_contract(trained):
    out, metrics, _ = trained
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "all_results.json",
        "recipe.yaml",
        "environment.json",
        "training_curves.png",
        "trainer_state.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("pytorch_model*.bin")), "weights must be safetensors"
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert config["attention_probs_dropout_prob"] == 0.05  # model.config_overrides reached the model
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_accuracy", "eval_f1", "eval_loss", "train_loss", "train_runtime"} <= set(results)
    env = json.loads((out / "environment.json").read_text())
    assert env["packages"]["transformers"] and env["packages"]["torch"]
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_reproduces_the_final_metrics(trained):
    out, metrics, _ = trained
    again = evaluate_output(out)
    assert again["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    assert (out / "eval_validation_results.json").is_file()


def test_eval_reads_batches_by_length_and_scores_rows_in_order(trained):
    """`hf-finetune eval` batches similar lengths together (longest first), and its metrics and the logits a
    task keeps are those of the rows in dataset order."""
    from hf_finetune.inference import load_output_recipe, restore_model, restore_task
    from hf_finetune.trainer import eval_trainer

    out, _, _ = trained
    recipe = load_output_recipe(out)
    task, tokenizer = restore_task(out, recipe)
    data = task.preprocess(task.load(["validation"]), tokenizer)["validation"]
    # the sentences are alike: give them other lengths
    cut = ("input_ids", "token_type_ids", "attention_mask")
    data = data.map(lambda row, i: {k: row[k][: 4 + i % 5] for k in cut}, with_indices=True)
    model = restore_model(out, recipe, task)
    results = {}
    for by_length in (True, False):
        with eval_trainer(task, model, tokenizer, 16, by_length=by_length) as trainer:
            order = trainer._get_eval_sampler(data)
            results[by_length] = (trainer.evaluate(data), task.calibration_logits())
        if by_length:
            lengths = [len(data[i]["input_ids"]) for i in order]
            assert lengths == sorted(lengths, reverse=True) and sorted(order) == list(range(len(data)))
            assert list(order) != list(range(len(data)))  # the rows really came in another order
    (sorted_metrics, sorted_kept), (plain_metrics, plain_kept) = results[True], results[False]
    assert sorted_metrics["eval_accuracy"] == plain_metrics["eval_accuracy"]
    assert sorted_metrics["eval_loss"] == pytest.approx(plain_metrics["eval_loss"], rel=1e-5)
    torch.testing.assert_close(
        torch.as_tensor(sorted_kept[1]), torch.as_tensor(plain_kept[1])
    )  # labels in order
    torch.testing.assert_close(
        torch.as_tensor(sorted_kept[0]), torch.as_tensor(plain_kept[0]), atol=1e-4, rtol=0
    )


def test_predict_writes_label_names_and_scores(trained, tmp_path):
    out, _, _ = trained
    rows = [
        {"id": 1, "sentence": f"the film was {POSITIVE[0]} and {POSITIVE[1]}"},
        {"id": 2, "sentence": f"the plot was {NEGATIVE[0]} and {NEGATIVE[1]}"},
        {"id": 3, "text": f"a very {POSITIVE[2]} story"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    dst = tmp_path / "out.jsonl"
    assert cli.main(["predict", str(out), "--input", str(src), "--output", str(dst)]) == 0
    lines = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [x["id"] for x in lines] == [1, 2, 3]  # input order and fields are kept
    assert [x["label"] for x in lines] == ["positive", "negative", "positive"]
    assert all(0.5 < x["score"] <= 1.0 for x in lines)


def test_recipe_yaml_reproduces_the_run(trained, tmp_path):
    out, metrics, _ = trained
    recipe = load_recipe(out / "recipe.yaml", [f"training.output_dir={tmp_path / 'again'}"])
    again = train(recipe)
    assert again["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    assert again["train_loss"] == pytest.approx(metrics["train_loss"], rel=1e-5)


def test_pairs_reach_the_model_as_a_pair(tiny_model_dir, tmp_path):
    """Two texts go through the tokenizer's pair encoding: segment ids 0 then 1, one [SEP] between."""
    from transformers import BertForSequenceClassification

    rng = random.Random(0)
    rows = [
        {"a": f"{rng.choice(POSITIVE)} movie", "b": f"the {rng.choice(NEGATIVE)} plot", "label": i % 2}
        for i in range(48)
    ]
    files = {
        "train": str(write_jsonl(tmp_path / "t.jsonl", rows)),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", rows[:16])),
    }
    recipe = load_recipe(
        tiny_recipe(
            tiny_model_dir,
            files,
            tmp_path / "out",
            task={"text_column": "a", "text_pair_column": "b"},
            training={"num_train_epochs": 1, "eval_strategy": "no"},
        )
    )
    seen = []
    original = BertForSequenceClassification.forward

    @functools.wraps(original)  # keeps the signature the Trainer's column filter reads
    def spy(self, *args, **kwargs):
        if self.training:
            seen.append((kwargs["input_ids"].clone(), kwargs["token_type_ids"].clone()))
        return original(self, *args, **kwargs)

    BertForSequenceClassification.forward = spy
    try:
        train(recipe)
    finally:
        BertForSequenceClassification.forward = original
    assert seen
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, types = seen[0]
    row = 0
    real = ids[row] != tok.pad_token_id
    segment = types[row][real].tolist()
    assert segment[0] == 0 and segment[-1] == 1 and sorted(segment) == segment  # 0...0 1...1
    assert (ids[row][real] == tok.sep_token_id).sum() == 2
    second = tok.decode(ids[row][real][torch.tensor(segment) == 1], skip_special_tokens=True)
    assert second in {f"the {w} plot" for w in NEGATIVE}


def train_held_out(tiny_model_dir, tmp_path, make_row, epochs: int = 6, lr: float = 3e-3) -> dict:
    """Train the tiny model on 640 generated rows and evaluate on 96 unseen ones."""
    files = {
        split: str(write_jsonl(tmp_path / f"{split}.jsonl", [make_row(rng) for _ in range(n)]))
        for split, rng, n in (("train", random.Random(3), 640), ("validation", random.Random(4), 96))
    }
    recipe = load_recipe(
        tiny_recipe(
            tiny_model_dir,
            files,
            tmp_path / "out",
            training={"num_train_epochs": epochs, "learning_rate": lr},
        )
    )
    return train(recipe)


def saved_problem_type(tmp_path) -> str:
    return json.loads((tmp_path / "out" / "config.json").read_text())["problem_type"]


def test_regression_learns_a_score(tiny_model_dir, tmp_path):
    def row(rng):
        k = rng.randrange(4)
        words = rng.sample(POSITIVE, k) + rng.sample(NEGATIVE, 3 - k)
        rng.shuffle(words)
        return {"sentence": " ".join(words), "label": float(k) + 0.25}

    metrics = train_held_out(tiny_model_dir, tmp_path, row)
    assert saved_problem_type(tmp_path) == "regression"
    assert metrics["eval_pearson"] > 0.8, metrics


def test_multilabel_learns(tiny_model_dir, tmp_path):
    def row(rng):
        tags = sorted(t for t in ("pos", "neg") if rng.random() < 0.5)
        words = ["the", "film"] + [rng.choice(POSITIVE if t == "pos" else NEGATIVE) for t in tags]
        rng.shuffle(words)
        return {"sentence": " ".join(words), "label": tags}

    metrics = train_held_out(tiny_model_dir, tmp_path, row, epochs=8, lr=1e-3)  # BCE is unstable at 3e-3 here
    assert saved_problem_type(tmp_path) == "multi_label_classification"
    assert metrics["eval_f1_micro"] > 0.8, metrics
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"sentence": f"the {POSITIVE[0]} film {NEGATIVE[0]}"}, {"sentence": f"{NEGATIVE[1]} the film"}],
    )
    predict_output(tmp_path / "out", src, tmp_path / "pred.jsonl")
    preds = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [p["label"] for p in preds] == [["neg", "pos"], ["neg"]]
    assert all(0.5 < s <= 1.0 for p in preds for s in p["score"])


def test_three_classes_evaluated_on_two_splits_like_mnli(tiny_model_dir, tmp_path):
    """Multi-class with string labels and a list of eval splits: one metric set per split."""
    cues = {"entailment": POSITIVE, "neutral": ["maybe", "perhaps", "possibly"], "contradiction": NEGATIVE}

    def rows(seed, n):
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            label = rng.choice(sorted(cues))
            out.append(
                {"premise": "the film", "hypothesis": f"it was {rng.choice(cues[label])}", "label": label}
            )
        return out

    files = {
        split: str(write_jsonl(tmp_path / f"{split}.jsonl", rows(seed, n)))
        for split, seed, n in (
            ("train", 1, 480),
            ("validation_matched", 2, 60),
            ("validation_mismatched", 3, 60),
        )
    }
    recipe = load_recipe(
        tiny_recipe(
            tiny_model_dir,
            files,
            tmp_path / "out",
            task={"text_column": "premise", "text_pair_column": "hypothesis", "metric": "glue/mnli"},
            data={"eval_split": ["validation_matched", "validation_mismatched"]},
            training={"learning_rate": 1e-3, "num_train_epochs": 6},
        )
    )
    metrics = train(recipe)
    assert metrics["eval_validation_matched_accuracy"] > 0.8, metrics  # chance is 1/3
    assert metrics["eval_validation_mismatched_accuracy"] > 0.8, metrics
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}


def test_eval_and_predict_check_input_before_loading_weights(trained, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from hf_finetune.errors import DataError

    out, _, _ = trained

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    with pytest.raises(DataError, match=r"`data.eval_split`: split 'nope' not found"):
        evaluate_output(out, split="nope")
    src = write_jsonl(tmp_path / "in.jsonl", [{"sentence": "fine"}, {"review": "no text field"}])
    with pytest.raises(DataError, match=r"in.jsonl line 2: missing field 'sentence' \(or 'text'\)"):
        predict_output(out, src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("padding,width", [("longest", None), ("max_length", 32)])
def test_padding_longest_or_max_length(tiny_model_dir, sentiment_files, tmp_path, padding, width):
    from hf_finetune.pipeline import prepare

    recipe = load_recipe(
        tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "out", data={"padding": padding})
    )
    prepared = prepare(recipe)
    train_split = prepared.task.preprocess(prepared.raw, prepared.tokenizer)["train"]
    rows = [train_split[i] for i in range(8)]
    batch = prepared.task.data_collator(prepared.tokenizer, recipe.training)(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (8, width or longest)
    assert longest < 32  # so the two settings really differ
