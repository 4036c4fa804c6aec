"""Entity metrics: hand-checked cases, and the same numbers as the seqeval library itself."""

from __future__ import annotations

import json
import random

import pytest

from hf_finetune.metrics import load_metric
from hf_finetune.metrics.sequence_labeling import entities, score, split_tag


def test_split_tag():
    assert split_tag("B-PER") == ("B", "PER")
    assert split_tag("I-NORP-X") == ("I", "NORP-X")
    assert split_tag("O") == ("O", "")
    for bad in ("PER", "B-", "E-PER", "b-PER", ""):
        with pytest.raises(ValueError):
            split_tag(bad)


def test_entities_default_reads_iob1_and_iob2():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "B-ORG"]
    assert entities(tags) == [("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7), ("ORG", 7, 8)]


def test_entities_strict_ignores_an_i_tag_that_starts_nothing():
    tags = ["I-PER", "B-LOC", "I-LOC", "I-ORG", "O", "B-MISC"]
    assert entities(tags, strict=True) == [("LOC", 1, 3), ("MISC", 5, 6)]
    assert entities(tags) == [("PER", 0, 1), ("LOC", 1, 3), ("ORG", 3, 4), ("MISC", 5, 6)]


def test_score_by_hand():
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    preds = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    result = score(preds, refs)
    # gold: PER, LOC, ORG; predicted: PER, ORG, LOC(wrong place) -> 2 of 3 right each way
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["PER_f1"] == 1.0 and result["PER_number"] == 1
    assert result["LOC_precision"] == 0.0 and result["LOC_recall"] == 0.0 and result["LOC_number"] == 1


def test_score_rejects_misaligned_sequences():
    with pytest.raises(ValueError, match="sequence 0: 1 predicted tags for 2 reference tags"):
        score([["O"]], [["O", "O"]])


def test_evaluate_module_gives_flat_figures():
    metric = load_metric("seqeval")
    result = metric.compute(predictions=[["B-PER", "O"]], references=[["B-PER", "B-LOC"]])
    assert result["f1"] == pytest.approx(2 / 3) and result["PER_f1"] == 1.0 and result["LOC_recall"] == 0.0
    assert all(isinstance(v, (int, float)) for v in result.values())  # Trainer logs flat numbers
    strict = load_metric("seqeval/strict").compute(predictions=[["I-PER", "O"]], references=[["B-PER", "O"]])
    assert strict["f1"] == 0.0
    loose = load_metric("seqeval").compute(predictions=[["I-PER", "O"]], references=[["B-PER", "O"]])
    assert loose["f1"] == 1.0


def _seqeval_reference(preds, refs, strict: bool) -> dict[str, float]:
    """The seqeval library's figures in this module's flat layout."""
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    kwargs = {"mode": "strict", "scheme": IOB2} if strict else {}
    out = {
        "precision": precision_score(refs, preds, zero_division=0, **kwargs),
        "recall": recall_score(refs, preds, zero_division=0, **kwargs),
        "f1": f1_score(refs, preds, zero_division=0, **kwargs),
        "accuracy": accuracy_score(refs, preds),
    }
    report = classification_report(refs, preds, output_dict=True, zero_division=0, **kwargs)
    for kind, figures in report.items():
        if kind.endswith(" avg"):
            continue
        out[f"{kind}_precision"] = figures["precision"]
        out[f"{kind}_recall"] = figures["recall"]
        out[f"{kind}_f1"] = figures["f1-score"]
        out[f"{kind}_number"] = figures["support"]
    return out


def _noisy(tags: list[str], rng: random.Random, names: list[str], rate: float) -> list[str]:
    return [rng.choice(names) if rng.random() < rate else t for t in tags]


@pytest.mark.parametrize("strict", [False, True])
def test_same_numbers_as_seqeval_on_random_tags(strict):
    rng = random.Random(0)
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    for _ in range(30):
        refs = [[rng.choice(names) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 20))]
        preds = [_noisy(r, rng, names, 0.3) for r in refs]
        if strict:  # seqeval's strict mode wants valid IOB2 references
            refs = [[t.replace("I-", "B-") if i == 0 else t for i, t in enumerate(r)] for r in refs]
        ours, theirs = score(preds, refs, strict=strict), _seqeval_reference(preds, refs, strict)
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_same_numbers_as_seqeval_on_conll_validation(shared_data):
    path = shared_data / "conll2003" / "validation.jsonl"
    assert path.is_file(), f"{path} missing from the shared data"
    rows = [json.loads(line) for line in path.open()]
    refs = [r["ner_tags"] for r in rows]
    rng = random.Random(1)
    names = sorted({t for r in refs for t in r})
    preds = [_noisy(r, rng, names, 0.05) for r in refs]
    ours, theirs = score(preds, refs), _seqeval_reference(preds, refs, strict=False)
    assert ours.keys() == theirs.keys() and 0.3 < ours["f1"] < 0.95
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
