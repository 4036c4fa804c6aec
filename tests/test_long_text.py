"""Long documents in text classification (`data.long_text`): by default a document longer than
`data.max_seq_length` is cut (a warning counts them); under `windows` evaluation, the test split, `eval` and
`predict` read it whole in overlapping windows whose logits are aggregated (`data.window_aggregate`), every
metric counting documents; `data.windows_in_training` trains on every window too.

The must-show: a model that learnt from short reviews that one word decides the label reads documents whose
deciding sentence sits past token 256, behind neutral filler. Truncated at 128 tokens it never sees that
sentence and scores at chance; read in windows it gets them right.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest

from hf_finetune.config.load import load_recipe
from hf_finetune.errors import RecipeError
from hf_finetune.inference import evaluate_output, predict_output
from hf_finetune.pipeline import make_task, prepare, train, validate
from hf_finetune.tasks.windows import aggregate as aggregate_windows

from .conftest import FILLER, NEGATIVE, POSITIVE, sentiment_rows, tiny_recipe, write_jsonl

# Filler words (one token each) before the deciding sentence: it starts past token 256, where windows of
# LENGTH = 128 tokens sharing STRIDE = 32 (126 text tokens each, a new one every 94) begin their fourth window.
CUE_AT = 282
STRIDE = 32
TAIL = 30  # filler words after it
LENGTH = 128  # data.max_seq_length: the tiny model's position limit


def long_rows(n: int, seed: int, cue_at: int = CUE_AT, tail: int = TAIL) -> list[dict]:
    """Documents of ``cue_at`` neutral filler words, one short sentence whose cue word decides the label, and
    a little more filler; half of them positive."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(cue_at)]
        words += ["the", "film", "was", rng.choice(POSITIVE if label else NEGATIVE)]
        words += [rng.choice(FILLER) for _ in range(tail)]
        rows.append({"idx": i, "sentence": " ".join(words), "label": label})
    return rows


def short_rows(seed: int) -> list[dict]:
    """Reviews that fit a window (nothing cut): a seven-word sentence whose cue word decides the label, then up
    to 110 filler words; and, a third as many, filler alone under either label. The model learns the cue near
    the start of a text, and that filler says nothing (its logits for filler alone stay near even)."""
    rng = random.Random(seed)

    def filler(low: int, high: int) -> str:
        return " ".join(rng.choice(FILLER) for _ in range(rng.randint(low, high)))

    reviews = [{**r, "sentence": f"{r['sentence']} {filler(0, 110)}"} for r in sentiment_rows(320, seed=seed)]
    noise = [{"sentence": filler(5, 120), "label": i % 2} for i in range(100)]
    rows = reviews + noise
    rng.shuffle(rows)
    return [{**row, "idx": i} for i, row in enumerate(rows)]


def _recipe(model_dir, files, out, **data) -> dict:
    recipe = tiny_recipe(model_dir, files, out)
    recipe["data"].update({"max_seq_length": LENGTH, **data})
    return recipe


def _accuracy(rows: list[dict], labels: list) -> float:
    return float(np.mean([row["label"] == label for row, label in zip(rows, labels, strict=True)]))


@pytest.fixture(scope="module")
def long_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("long-docs")
    return {
        "short_train": write_jsonl(root / "train.jsonl", short_rows(seed=1)),
        "validation": write_jsonl(root / "validation.jsonl", long_rows(48, seed=2)),
        "test": write_jsonl(root / "test.jsonl", long_rows(40, seed=3)),
        "long_train": write_jsonl(root / "long_train.jsonl", long_rows(40, seed=4)),
    }


@pytest.fixture(scope="module")
def windows_run(tiny_model_dir, long_files, tmp_path_factory) -> tuple[Path, dict]:
    """Trained on short reviews (nothing cut), evaluated and tested on long documents read in windows."""
    out = tmp_path_factory.mktemp("windows-run") / "out"
    files = {k: str(long_files[k]) for k in ("validation", "test")} | {
        "train": str(long_files["short_train"])
    }
    recipe = _recipe(tiny_model_dir, files, out, long_text="windows", window_stride=STRIDE)
    return out, train(load_recipe(recipe))


# ---------------------------------------------------------------------------------------------------- must show
def test_windows_read_the_sentence_past_token_256_that_truncation_cuts(windows_run, long_files, caplog):
    out, results = windows_run
    # the final evaluation and the test split: per document, and right
    assert results["eval_samples"] == 48 and results["test_samples"] == 40
    assert results["eval_accuracy"] >= 0.9, results
    assert results["test_accuracy"] >= 0.9, results
    # the same model, the same documents, cut at max_seq_length: the deciding sentence is never read
    with caplog.at_level(logging.WARNING, logger="hf_finetune"):
        cut = evaluate_output(out, overrides=["data.long_text=truncate"])
    assert cut["eval_accuracy"] <= 0.65, cut
    warning = [
        r.getMessage() for r in caplog.records if "are longer than data.max_seq_length" in r.getMessage()
    ]
    assert warning and "48 of 48 examples are longer than data.max_seq_length=128" in warning[0], warning
    assert "`data.long_text: windows`" in warning[0]
    whole = evaluate_output(out)
    assert whole["eval_accuracy"] >= 0.9 and whole["eval_samples"] == 48, whole


def test_metrics_and_the_class_report_count_documents_not_windows(windows_run):
    out, results = windows_run
    report = (out / "classification_report.md").read_text()
    # support per label: 24 documents each (a window count would be about three times that)
    supports = [
        int(line.split("|")[-2])
        for line in report.splitlines()
        if line.startswith("| 0 ") or line.startswith("| 1 ")
    ]
    assert supports == [24, 24], report
    assert results["eval_0_f1"] >= 0.9 and results["eval_1_f1"] >= 0.9


def test_mean_and_max_aggregation(windows_run):
    """Both aggregations find the one deciding window here; `max` lets it decide alone, `mean` averages it with
    the filler windows, so its document scores are less sure."""
    out, _ = windows_run
    by_max = evaluate_output(out, overrides=["data.window_aggregate=max"])
    assert by_max["eval_accuracy"] >= 0.9, by_max


def test_predict_reads_windows(windows_run, long_files, tmp_path):
    out, _ = windows_run
    rows = long_rows(20, seed=9)
    source = write_jsonl(tmp_path / "docs.jsonl", [{"sentence": r["sentence"]} for r in rows])
    names = {"0": 0, "1": 1}
    for long_text, at_least, at_most in (("windows", 0.9, 1.0), ("truncate", 0.0, 0.65)):
        target = tmp_path / f"{long_text}.jsonl"
        predict_output(out, source, target, batch_size=4, overrides=[f"data.long_text={long_text}"])
        labels = [names[str(json.loads(line)["label"])] for line in target.read_text().splitlines()]
        assert at_least <= _accuracy(rows, labels) <= at_most, (long_text, labels)
    # the test split's predictions file (the pipeline's predict) is per document too
    predicted = (out / "predictions_test.jsonl").read_text().splitlines()
    assert len(predicted) == 40


# ---------------------------------------------------------------------------------------------------- training
def test_windows_in_training_trains_on_every_window(tiny_model_dir, tmp_path):
    """Training documents whose deciding sentence lies past the cut: truncated, training never sees it and
    learns nothing; with `windows_in_training` every window is a training row with the document's label. Small
    windows keep it quick: 32 tokens sharing 8 (30 text tokens, a new window every 22), the deciding sentence
    at token 66, where the fourth window begins."""
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", long_rows(160, seed=5, cue_at=66, tail=10))),
        "validation": str(write_jsonl(tmp_path / "dev.jsonl", long_rows(48, seed=6, cue_at=66, tail=10))),
    }
    runs = {}
    for name, in_training in (("cut", False), ("windows", True)):
        recipe = tiny_recipe(tiny_model_dir, files, tmp_path / name)
        recipe["data"].update(long_text="windows", window_stride=8, windows_in_training=in_training)
        recipe["training"].update({"num_train_epochs": 6, "eval_strategy": "no"})
        runs[name] = train(load_recipe(recipe))
    assert runs["cut"]["train_samples"] == 160
    assert runs["windows"]["train_samples"] == 4 * 160  # 80 tokens: four windows
    assert runs["cut"]["eval_accuracy"] <= 0.7, runs["cut"]
    assert runs["windows"]["eval_accuracy"] >= 0.9, runs["windows"]


def test_training_windows_carry_the_document_label(tiny_model_dir, long_files, tmp_path):
    files = {"train": str(long_files["long_train"]), "validation": str(long_files["validation"])}
    recipe = load_recipe(
        _recipe(tiny_model_dir, files, tmp_path / "o", long_text="windows", windows_in_training=True)
    )
    prepared = prepare(recipe)
    tokenised = prepared.task.preprocess(prepared.raw, prepared.tokenizer)
    labels = tokenised["train"]["labels"]
    assert len(labels) == 4 * 40  # 316 tokens: four windows
    # each document's windows in a row, with its label (documents alternate 0, 1)
    assert labels[:12] == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0], labels[:12]
    assert set(prepared.task.windows.splits) == {"validation"}  # training windows are never scored


# ---------------------------------------------------------------------------------------------------- pieces
def test_aggregate_windows_by_hand():
    logits = np.array([[1.0, 0.0], [3.0, -2.0], [0.0, 5.0], [-1.0, 1.0], [2.0, 2.0]], dtype=np.float32)
    owners = [0, 0, 1, 1, 2]
    mean, firsts = aggregate_windows(logits, owners, "mean")
    np.testing.assert_allclose(mean, [[2.0, -1.0], [-0.5, 3.0], [2.0, 2.0]])
    assert firsts.tolist() == [0, 2, 4] and mean.dtype == np.float32
    maxed, _ = aggregate_windows(logits, owners, "max")  # each class on its own
    np.testing.assert_allclose(maxed, [[3.0, 0.0], [0.0, 5.0], [2.0, 2.0]])
    regression, _ = aggregate_windows(np.array([[0.5], [1.5], [2.0]]), [0, 0, 1], "mean")
    np.testing.assert_allclose(regression, [[1.0], [2.0]])


def test_each_evaluated_split_finds_its_own_windows(tiny_model_dir, long_files, tmp_path):
    """compute_metrics is called once per split (the Trainer's dict of eval datasets, the final evaluation,
    the test split): the rows it gets say which split's windows they are."""
    short = write_jsonl(tmp_path / "short.jsonl", sentiment_rows(30, seed=5))
    files = {
        "train": str(long_files["short_train"]),
        "validation": str(long_files["validation"]),
        "short": str(short),
    }
    recipe = load_recipe(
        _recipe(
            tiny_model_dir, files, tmp_path / "o", long_text="windows", eval_split=["validation", "short"]
        )
    )
    prepared = prepare(recipe)
    task = prepared.task
    tokenised = task.preprocess(prepared.raw, prepared.tokenizer)
    assert len(tokenised["short"]) == 30 and len(tokenised["validation"]) == 4 * 48
    compute = task.compute_metrics()
    for split, docs in (("validation", 48), ("short", 30)):
        owners, window_labels = task.windows.splits[split]
        logits = np.zeros((len(owners), 2), dtype=np.float32)
        logits[np.arange(len(owners)), window_labels] = 1.0  # every window right
        from transformers import EvalPrediction

        result = compute(EvalPrediction(predictions=logits, label_ids=window_labels))
        assert result["accuracy"] == 1.0
        doc_logits, doc_refs = task.last_eval
        assert len(doc_logits) == len(doc_refs) == docs
    with pytest.raises(RuntimeError, match="cannot tell which split"):
        task.documents(np.zeros((7, 2)), np.zeros(7, dtype=int))


def test_validate_describes_windows_and_refuses_a_stride_without_room(tiny_model_dir, long_files, tmp_path):
    files = {"train": str(long_files["short_train"]), "validation": str(long_files["validation"])}
    summary = validate(load_recipe(_recipe(tiny_model_dir, files, tmp_path / "o", long_text="windows")))
    assert summary["long_text"].startswith("windows of 128 tokens sharing 32, mean of their logits")
    with pytest.raises(RecipeError, match="holds 126 tokens of text"):
        validate(
            load_recipe(
                _recipe(tiny_model_dir, files, tmp_path / "o", long_text="windows", window_stride=126)
            )
        )


def test_only_text_classification_reads_windows(tiny_model_dir, tmp_path):
    from .test_question_answering import qa_recipe

    recipe = qa_recipe(tiny_model_dir, {"train": str(tmp_path / "qa.jsonl")}, tmp_path / "o")
    recipe["data"]["long_text"] = "windows"
    with pytest.raises(RecipeError, match="doc_stride"):
        make_task(load_recipe(recipe))


def test_evaluation_keeps_row_order_under_group_by_length(tiny_model_dir, tmp_path):
    """transformers groups evaluation rows by length (shuffled) under `group_by_length`; windows (and QA's
    features) are mapped back to their documents by row, so evaluation reads rows in order."""
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    from hf_finetune.trainer import FinetuneTrainer

    args = TrainingArguments(
        output_dir=str(tmp_path), train_sampling_strategy="group_by_length", use_cpu=True, report_to="none"
    )
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    trainer = FinetuneTrainer(model=model, args=args)
    rows = Dataset.from_dict({"input_ids": [[101] * n + [102] for n in (3, 40, 7, 90, 1, 60, 2, 30)]})
    sampler = trainer._get_eval_sampler(rows)
    assert isinstance(sampler, SequentialSampler) and list(sampler) == list(range(8))
