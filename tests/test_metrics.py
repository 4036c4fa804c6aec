"""Offline metrics against hand-computed values; loading them never touches the network."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hf_finetune.metrics import available_metrics, load_metric
from hf_finetune.metrics import functional as F


def test_accuracy_and_binary_f1_by_hand():
    preds, refs = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert F.accuracy(preds, refs) == pytest.approx(3 / 5)
    # tp=2 fp=1 fn=1 -> F1 = 4 / 6
    assert F.f1(preds, refs) == pytest.approx(2 / 3)


def test_macro_and_micro_f1_by_hand():
    preds, refs = [0, 1, 2, 2], [0, 2, 2, 1]
    # class0: tp1 -> 1.0; class1: tp0 fp1 fn1 -> 0; class2: tp1 fp1 fn1 -> 0.5
    assert F.f1(preds, refs, average="macro") == pytest.approx(0.5)
    assert F.f1(preds, refs, average="micro") == pytest.approx(0.5)


def test_matthews_correlation_by_hand():
    preds, refs = [1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert F.matthews_correlation(preds, refs) == pytest.approx(expected)
    assert F.matthews_correlation([1, 1, 1], [1, 1, 1]) == 0.0  # degenerate: no variance


def test_pearson_and_spearman_with_ties():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.5]
    assert F.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    # ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]
    assert F._rank([1, 2, 2, 3]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert F.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert F.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("task", "keys"),
    [
        ("cola", {"matthews_correlation"}),
        ("sst2", {"accuracy"}),
        ("mrpc", {"accuracy", "f1"}),
        ("qqp", {"accuracy", "f1"}),
        ("stsb", {"pearson", "spearmanr"}),
        ("mnli", {"accuracy"}),
        ("qnli", {"accuracy"}),
        ("rte", {"accuracy"}),
        ("wnli", {"accuracy"}),
    ],
)
def test_glue_module_reports_each_tasks_official_metric(task, keys):
    metric = load_metric(f"glue/{task}")
    if task == "stsb":
        result = metric.compute(predictions=[0.5, 2.0, 4.5], references=[1.0, 2.5, 4.0])
    else:
        result = metric.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    assert set(result) == keys
    if task in ("sst2", "rte", "mnli"):
        assert result["accuracy"] == pytest.approx(0.75)
    if task == "mrpc":
        assert result["f1"] == pytest.approx(0.8)


def test_multilabel_module():
    preds = np.array([[1, 0, 1], [0, 1, 0]])
    refs = np.array([[1, 0, 0], [0, 1, 0]])
    result = load_metric("multilabel").compute(predictions=preds, references=refs)
    assert result["subset_accuracy"] == pytest.approx(0.5)
    assert result["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 1))


def test_unknown_metric_name_is_rejected():
    assert "glue/cola" in available_metrics()
    with pytest.raises(KeyError):
        load_metric("glue/nope")
