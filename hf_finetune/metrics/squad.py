"""SQuAD metrics as `evaluate` modules: exact match and token F1 after the standard normalisation.

Normalisation (the official SQuAD evaluation's): lower case, drop punctuation, drop the articles
a/an/the, collapse whitespace. A prediction scores the best value over the gold answers.
Version 2 (``config_name="v2"``) has unanswerable questions: their gold answer list is empty and
only the empty prediction scores 1; it also reports the answerable (``HasAns_``) and
unanswerable (``NoAns_``) halves. Scores are percentages, as the official script prints them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import datasets
import evaluate

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:  # no-answer on either side: right only when both are empty
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _best(metric, prediction: str, golds: Sequence[str]) -> float:
    return max(metric(prediction, gold) for gold in (golds or [""]))


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], v2: bool = False):
    """``references[i]`` lists the gold answer texts of question i (empty: unanswerable, v2)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} questions")
    em = [_best(exact_match, p, r) for p, r in zip(predictions, references)]
    f1 = [_best(token_f1, p, r) for p, r in zip(predictions, references)]

    def mean(values: list[float]) -> float:
        return 100.0 * sum(values) / len(values) if values else 0.0

    if not v2:
        return {"exact_match": mean(em), "f1": mean(f1)}
    has = [i for i, r in enumerate(references) if r]
    out = {"exact": mean(em), "f1": mean(f1), "total": len(references)}
    for prefix, rows in (("HasAns", has), ("NoAns", [i for i, r in enumerate(references) if not r])):
        out[f"{prefix}_exact"] = mean([em[i] for i in rows])
        out[f"{prefix}_f1"] = mean([f1[i] for i in rows])
        out[f"{prefix}_total"] = len(rows)
    return out


class Squad(evaluate.Metric):
    """SQuAD exact match and F1 (percentages). Config ``v1`` (default) or ``v2`` (unanswerable
    questions: empty gold lists, empty predictions). Inputs: predicted answer texts; per question,
    the list of gold answer texts."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in ("default", "v1", "v2"):
            raise KeyError(f"squad config must be 'v1' or 'v2', got {self.config_name!r}")
        return evaluate.MetricInfo(
            description=self.__doc__,
            citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text (2016); "
            "Know What You Don't Know: Unanswerable Questions for SQuAD (2018).",
            inputs_description="predictions: answer texts; references: lists of gold answer texts.",
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.List(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references):
        return squad_scores(predictions, references, v2=self.config_name == "v2")
