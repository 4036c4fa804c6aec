"""Per-class report of text classification: ``eval_<label>_precision/_recall/_f1/_support`` metrics,
classification_report.md and confusion_matrix.png in the output directory (hf_finetune.metrics.report)."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from hf_finetune.card import eval_metrics
from hf_finetune.config.load import load_recipe
from hf_finetune.inference import evaluate_output
from hf_finetune.metrics import functional as F
from hf_finetune.metrics.report import MAX_LABEL_METRICS, ClassReport, label_keys
from hf_finetune.pipeline import train

from .conftest import FILLER, NEGATIVE, POSITIVE, tiny_recipe, write_jsonl

LABELS = ["negative", "neutral", "Very Positive!"]  # the last one is not a safe key as it is
KEYS = ["negative", "neutral", "very_positive"]
NEUTRAL = ["okay", "average", "fine", "ordinary", "moderate", "standard"]


def three_class_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    cues = (NEGATIVE, NEUTRAL, POSITIVE)
    rows = []
    for _ in range(n):
        label = rng.randrange(3)
        words = rng.sample(FILLER, 4) + [rng.choice(cues[label])]
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "label": LABELS[label]})
    return rows


# ------------------------------------------------------------------------------------------------
# The arithmetic, against numbers worked out by hand
# ------------------------------------------------------------------------------------------------
def test_single_label_scores_by_hand():
    refs = [0, 0, 1, 1, 2, 2, 2]
    preds = [0, 1, 1, 1, 2, 0, 2]
    report = ClassReport.from_ids(preds, refs, ["a", "b", "c", "never"])
    # a: 1 of 2 predicted right, 1 of 2 found; b: 2 of 3, 2 of 2; c: 2 of 2, 2 of 3; "never": no examples
    np.testing.assert_allclose(report.precision, [0.5, 2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(report.recall, [0.5, 1.0, 2 / 3, 0.0])
    np.testing.assert_allclose(report.f1, [0.5, 0.8, 0.8, 0.0])
    assert report.support.tolist() == [2, 2, 3, 0]
    assert report.confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert report.accuracy == pytest.approx(5 / 7)
    averages = report.averages()
    assert averages["macro avg"][2] == pytest.approx((0.5 + 0.8 + 0.8) / 4)  # over every label, as listed
    assert averages["weighted avg"][2] == pytest.approx((0.5 * 2 + 0.8 * 2 + 0.8 * 3) / 7)
    # the present labels' macro F1 is the headline F1 of the classification metric
    assert np.mean(report.f1[:3]) == pytest.approx(F.f1(preds, refs, average="macro"))

    metrics = report.metrics()
    assert metrics["b_precision"] == pytest.approx(2 / 3)
    assert metrics["c_recall"] == pytest.approx(2 / 3)
    assert metrics["a_f1"] == 0.5 and metrics["never_support"] == 0
    assert len(metrics) == 4 * 4

    text = report.markdown("Classification report")
    assert "| b | 0.6667 | 1.0000 | 0.8000 | 2 |" in text
    assert "| **accuracy** | | | 0.7143 | 7 |" in text
    assert "| **weighted avg** |" in text and "| **macro avg** |" in text


def test_multi_label_scores_by_hand():
    preds = np.array([[1, 0], [1, 1], [0, 0]], dtype=np.int8)
    refs = np.array([[1, 1], [0, 1], [0, 0]], dtype=np.int8)
    report = ClassReport.from_multi_hot(preds, refs, ["sports", "Politics & Law"])
    assert report.confusion is None and report.plot_confusion() is None
    assert report.metrics() == pytest.approx(
        {
            "sports_precision": 0.5,
            "sports_recall": 1.0,
            "sports_f1": 2 / 3,
            "sports_support": 1,
            "politics_law_precision": 1.0,
            "politics_law_recall": 0.5,
            "politics_law_f1": 2 / 3,
            "politics_law_support": 2,
        }
    )
    assert report.averages()["micro avg"] == pytest.approx((2 / 3, 2 / 3, 2 / 3))  # 2 right of 3 and of 3


def test_label_keys_are_safe_and_unique():
    assert label_keys(["Very Positive!", "a-b", "A B", "", "eval", "test set", "f1"]) == [
        "very_positive",
        "a_b",
        "a_b_2",  # a repeat gets the label id
        "label_3",  # nothing left
        "label_eval",  # the Trainer would not prefix eval_f1: it would overwrite the headline F1
        "label_test_set",
        "f1",
    ]


def test_many_labels_leave_the_metrics_but_not_the_report():
    n = MAX_LABEL_METRICS + 10
    names = [f"class {i}" for i in range(n)]
    ids = np.arange(n)
    report = ClassReport.from_ids(ids, ids, names)
    assert report.metrics() == {}
    text = report.markdown()
    assert all(f"| {name} | 1.0000 | 1.0000 | 1.0000 | 1 |" in text for name in names)


def test_confusion_plot_is_a_png():
    report = ClassReport.from_ids([0, 1, 1, 2], [0, 1, 2, 2], ["cat", "dog", "a rather long label name here"])
    png = report.plot_confusion("Confusion matrix")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_leaves_per_label_keys_to_the_report():
    results = {"eval_accuracy": 0.9, "eval_f1": 0.8, "eval_neutral_f1": 0.7, "eval_neutral_precision": 0.6}
    results |= {
        "eval_neutral_recall": 0.8,
        "eval_neutral_support": 30,
        "eval_PER_f1": 0.5,
        "eval_PER_number": 3,
    }
    # NER's per-type keys stay, as before
    assert eval_metrics(results) == {"accuracy": 0.9, "f1": 0.8, "PER_f1": 0.5, "PER_number": 3.0}


# ------------------------------------------------------------------------------------------------
# A training run on local files with string labels
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_class_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("three-class")
    rows = {
        "train": three_class_rows(300, 1),
        "validation": three_class_rows(90, 2),
        "test": three_class_rows(45, 3),
    }
    files = {split: str(write_jsonl(root / f"{split}.jsonl", r)) for split, r in rows.items()}
    recipe = tiny_recipe(tiny_model_dir, files, root / "out", training={"num_train_epochs": 3})
    recipe["data"]["test_split"] = "test"
    train(load_recipe(recipe))
    return root / "out", rows


def test_training_writes_per_label_metrics(three_class_run):
    out, rows = three_class_run
    results = json.loads((out / "all_results.json").read_text())
    counts = Counter(r["label"] for r in rows["validation"])
    for key, name in zip(KEYS, LABELS):
        for score in ("precision", "recall", "f1"):
            assert 0.0 <= results[f"eval_{key}_{score}"] <= 1.0
        assert results[f"eval_{key}_support"] == counts[name]
        p, r = results[f"eval_{key}_precision"], results[f"eval_{key}_recall"]
        assert results[f"eval_{key}_f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
        assert f"test_{key}_f1" in results
    assert sum(results[f"eval_{k}_support"] for k in KEYS) == results["eval_samples"] == 90
    # the headline metrics are as before: accuracy is the support-weighted recall, F1 the macro F1
    accuracy = sum(results[f"eval_{k}_recall"] * results[f"eval_{k}_support"] for k in KEYS) / 90
    assert results["eval_accuracy"] == pytest.approx(accuracy)
    assert results["eval_f1"] == pytest.approx(np.mean([results[f"eval_{k}_f1"] for k in KEYS]))
    assert results["eval_accuracy"] > 0.6  # it learned something: the per-label numbers mean something


def test_training_writes_the_report_and_the_confusion_matrix(three_class_run):
    out, _ = three_class_run
    results = json.loads((out / "all_results.json").read_text())
    text = (out / "classification_report.md").read_text()
    assert text.startswith("# Classification report: validation split")
    for key, name in zip(KEYS, LABELS):
        f1 = results[f"eval_{key}_f1"]
        support = results[f"eval_{key}_support"]
        assert f"| {name} | " in text and f" | {f1:.4f} | {support} |" in text
    assert f"| **accuracy** | | | {results['eval_accuracy']:.4f} | 90 |" in text
    with Image.open(out / "confusion_matrix.png") as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 300 <= width <= 2000 and 300 <= height <= 2000
    # the labelled test split gets its own, named for it
    assert "| Very Positive! |" in (out / "classification_report_test.md").read_text()
    assert (out / "confusion_matrix_test.png").is_file()
    card = (out / "README.md").read_text()
    assert "[classification_report.md](classification_report.md)" in card
    assert "very_positive_f1" not in card  # per-label keys live in the report, not in the card's lists


def test_eval_command_writes_a_report_per_split(three_class_run):
    out, rows = three_class_run
    metrics = evaluate_output(out, split="validation")
    saved = json.loads((out / "all_results.json").read_text())
    for key in KEYS:
        assert metrics[f"eval_{key}_f1"] == pytest.approx(saved[f"eval_{key}_f1"])
    assert "| neutral | " in (out / "classification_report_validation.md").read_text()
    assert (out / "confusion_matrix_validation.png").is_file()


def test_multi_label_run_writes_the_report(tiny_model_dir, tmp_path):
    def rows(n, seed):
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            tags = sorted(t for t in ("pos", "neg") if rng.random() < 0.5)
            words = ["the", "film"] + [rng.choice(POSITIVE if t == "pos" else NEGATIVE) for t in tags]
            out.append({"sentence": " ".join(words), "label": tags})
        return out

    validation = rows(60, 4)
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", rows(200, 3))),
        "validation": str(write_jsonl(tmp_path / "validation.jsonl", validation)),
    }
    recipe = tiny_recipe(
        tiny_model_dir, files, tmp_path / "out", training={"num_train_epochs": 2, "learning_rate": 1e-3}
    )
    results = train(load_recipe(recipe))
    for tag in ("neg", "pos"):
        assert results[f"eval_{tag}_support"] == sum(tag in r["label"] for r in validation)
        assert all(0.0 <= results[f"eval_{tag}_{s}"] <= 1.0 for s in ("precision", "recall", "f1"))
    assert "f1_micro" in " ".join(results)  # the headline multi-label metrics are still there
    text = (tmp_path / "out" / "classification_report.md").read_text()
    assert "multi-label" in text and "| **micro avg** |" in text
    assert "| neg | " in text and "| pos | " in text
    assert not (tmp_path / "out" / "confusion_matrix.png").exists()  # none for multi-label


def test_train_prints_per_label_scores_for_a_few_labels_only():
    """`hf-finetune train` prints the final scores: per-label ones for up to 5 labels; with more, only the
    headline (classification_report.md has them all)."""
    from hf_finetune.outputs import eval_results

    def scores(labels: int) -> dict[str, float]:
        out = {"eval_accuracy": 0.9, "eval_f1": 0.8, "eval_runtime": 3.0, "train_loss": 0.1}
        for i in range(labels):
            out.update({f"eval_l{i}_{s}": 0.5 for s in ("precision", "recall", "f1")})
            out[f"eval_l{i}_support"] = 10
        return out

    few = eval_results(scores(3))
    assert few["eval_l2_f1"] == 0.5 and few["eval_l0_support"] == 10 and len(few) == 2 + 3 * 4
    many = eval_results(scores(6))
    assert many == {"eval_accuracy": 0.9, "eval_f1": 0.8}
