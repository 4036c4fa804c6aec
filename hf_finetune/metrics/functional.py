"""Metric arithmetic in NumPy: small, exact, and free of any download."""

from __future__ import annotations

import numpy as np


def accuracy(predictions, references) -> float:
    p, r = np.asarray(predictions), np.asarray(references)
    return float((p == r).mean()) if len(r) else 0.0


def _prf(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def f1(predictions, references, average: str = "binary", pos_label: int = 1, labels=None) -> float:
    """F1 like scikit-learn's: binary (of `pos_label`), macro or micro over `labels`."""
    p, r = np.asarray(predictions), np.asarray(references)
    if average == "binary":
        tp = float(((p == pos_label) & (r == pos_label)).sum())
        fp = float(((p == pos_label) & (r != pos_label)).sum())
        fn = float(((p != pos_label) & (r == pos_label)).sum())
        return _prf(tp, fp, fn)
    classes = np.asarray(labels) if labels is not None else np.union1d(p, r)
    stats = np.array(
        [
            [((p == c) & (r == c)).sum(), ((p == c) & (r != c)).sum(), ((p != c) & (r == c)).sum()]
            for c in classes
        ],
        dtype=float,
    )
    if average == "micro":
        return _prf(*stats.sum(axis=0))
    if average == "macro":
        return float(np.mean([_prf(*row) for row in stats])) if len(stats) else 0.0
    raise ValueError(f"unknown average {average!r}")


def matthews_correlation(predictions, references) -> float:
    """Matthews correlation coefficient, multi-class form (Gorodkin's R_K)."""
    p, r = np.asarray(predictions), np.asarray(references)
    classes = np.union1d(p, r)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=float)
    for t, q in zip(r, p):
        confusion[index[t], index[q]] += 1
    total = confusion.sum()
    correct = np.trace(confusion)
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    cov_tp = correct * total - float(true_counts @ pred_counts)
    cov_pp = total**2 - float(pred_counts @ pred_counts)
    cov_tt = total**2 - float(true_counts @ true_counts)
    denom = np.sqrt(cov_pp * cov_tt)
    return float(cov_tp / denom) if denom else 0.0


def pearson(predictions, references) -> float:
    x, y = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom else 0.0


def _rank(values) -> np.ndarray:
    """Ranks starting at 1, ties sharing their average rank."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=float)
    sorted_v = v[order]
    start = 0
    for end in range(1, len(v) + 1):
        if end == len(v) or sorted_v[end] != sorted_v[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(predictions, references) -> float:
    return pearson(_rank(predictions), _rank(references))


def mse(predictions, references) -> float:
    d = np.asarray(predictions, dtype=float) - np.asarray(references, dtype=float)
    return float((d * d).mean()) if len(d) else 0.0


def confusion_matrix(predictions, references, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are the references, columns the predictions."""
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    r = np.asarray(references, dtype=np.int64).reshape(-1)
    counts = np.bincount(r * num_classes + p, minlength=num_classes * num_classes)
    return counts[: num_classes * num_classes].reshape(num_classes, num_classes)


def per_class(true_positives, predicted, actual) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of each class from its true positives, predicted and actual (support)
    counts; 0 where a denominator is 0 (scikit-learn's ``zero_division=0``)."""
    tp, pred, true = (np.asarray(a, dtype=float) for a in (true_positives, predicted, actual))
    precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    total = pred + true
    f1 = np.divide(2 * tp, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1
