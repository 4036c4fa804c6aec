"""Entity-level metrics for IOB tagging, as an `evaluate` module: seqeval's numbers, offline.

Two readings of a tag sequence, the same two that seqeval offers:

* ``default`` (conlleval): an entity starts at ``B-X``, or at ``I-X`` after ``O`` or a different
  type, and runs over the ``I-X`` tags that follow. IOB1 and loosely written IOB2 both work.
* ``strict`` (IOB2): an entity is ``B-X`` followed by ``I-X`` tags; an ``I-X`` that does not
  continue an entity of type X belongs to no entity.

A predicted entity counts as correct only when its type, first and last token all match.
Precision, recall and F1 are micro-averaged over entities; accuracy is per token. Per-type
figures are reported for every type seen in the references or the predictions. The test
suite checks these numbers against the seqeval library itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import datasets
import evaluate

OUTSIDE = "O"
PREFIXES = ("B", "I")


def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''). Raises ValueError on anything else."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in PREFIXES or not kind:
        raise ValueError(f"{tag!r} is not an IOB tag (O, B-TYPE or I-TYPE)")
    return prefix, kind


def entities(tags: Sequence[str], strict: bool = False) -> list[tuple[str, int, int]]:
    """The entities in one tag sequence as (type, first, end) token spans, ``end`` exclusive."""
    found: list[tuple[str, int, int]] = []
    kind: str | None = None  # type of the entity being read, None outside one
    first = 0
    for i, tag in enumerate(tags):
        prefix, tag_kind = split_tag(tag)
        if prefix == "I" and tag_kind == kind:
            continue  # the open entity goes on
        if kind is not None:
            found.append((kind, first, i))
            kind = None
        if prefix == "B" or (prefix == "I" and not strict):
            kind, first = tag_kind, i
    if kind is not None:
        found.append((kind, first, len(tags)))
    return found


def _prf(correct: int, predicted: int, true: int) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score(
    predictions: Iterable[Sequence[str]], references: Iterable[Sequence[str]], strict: bool = False
) -> dict[str, float]:
    """Flat metrics: precision, recall, f1, accuracy, and <TYPE>_precision/_recall/_f1/_number."""
    true_counts: Counter[str] = Counter()
    pred_counts: Counter[str] = Counter()
    correct_counts: Counter[str] = Counter()
    tokens = right_tokens = 0
    for row, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        if len(pred) != len(ref):
            raise ValueError(
                f"sequence {row}: {len(pred)} predicted tags for {len(ref)} reference tags; "
                "predictions and references must align token by token."
            )
        tokens += len(ref)
        right_tokens += sum(p == r for p, r in zip(pred, ref))
        gold = set(entities(ref, strict))
        guess = set(entities(pred, strict))
        true_counts.update(kind for kind, _, _ in gold)
        pred_counts.update(kind for kind, _, _ in guess)
        correct_counts.update(kind for kind, _, _ in gold & guess)

    p, r, f = _prf(sum(correct_counts.values()), sum(pred_counts.values()), sum(true_counts.values()))
    result = {"precision": p, "recall": r, "f1": f, "accuracy": right_tokens / tokens if tokens else 0.0}
    for kind in sorted(set(true_counts) | set(pred_counts)):
        p, r, f = _prf(correct_counts[kind], pred_counts[kind], true_counts[kind])
        result[f"{kind}_precision"] = p
        result[f"{kind}_recall"] = r
        result[f"{kind}_f1"] = f
        result[f"{kind}_number"] = true_counts[kind]
    return result


class Seqeval(evaluate.Metric):
    """Entity precision/recall/F1 and token accuracy for IOB tag sequences (seqeval's definitions).

    Config ``default`` reads tags the conlleval way (IOB1 and IOB2); ``strict`` requires IOB2.
    Inputs are lists of tag names, one list per sentence; ``-100`` positions must be removed first.
    """

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in ("default", "strict"):
            raise KeyError(f"seqeval config must be 'default' or 'strict', got {self.config_name!r}")
        tags = datasets.List(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=self.__doc__,
            citation="Nakayama, seqeval: a Python framework for sequence labeling evaluation (2018).",
            inputs_description="predictions, references: lists of IOB tag names per sentence.",
            features=datasets.Features({"predictions": tags, "references": tags}),
        )

    def _compute(self, predictions, references):
        return score(predictions, references, strict=self.config_name == "strict")
