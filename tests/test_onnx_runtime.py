"""`eval` and `predict` on an ONNX export directory (`hf_finetune.export.runtime.OrtModel`): the same metrics,
loss, labels, scores, entity offsets and QA answers as on the run directory, for all three tasks."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.export.onnx import export_onnx
from hf_finetune.export.runtime import ONNX_FILE, OrtModel, is_onnx_dir
from hf_finetune.inference import evaluate_output, predict_output
from hf_finetune.pipeline import train

from .conftest import tiny_recipe, write_jsonl
from .test_question_answering import COLOUR_QUESTION, CONTEXT, colour_files, qa_recipe
from .test_token_classification import ner_recipe, ner_rows

SCORE_TOLERANCE = 1e-4


def export_dir(run: Path, target: Path) -> Path:
    """`hf-finetune export RUN --format onnx --output TARGET`, its parity check left to tests/test_export."""
    export_onnx(run, target, parity_examples=0)
    return target


def same_metrics(run_metrics: dict, onnx_metrics: dict) -> None:
    timing = ("_runtime", "_per_second", "_preparation_time")
    keys = {k for k in run_metrics if not k.endswith(timing)}
    assert keys == {k for k in onnx_metrics if not k.endswith(timing)}
    for key in sorted(keys):
        a, b = run_metrics[key], onnx_metrics[key]
        if isinstance(a, float):
            assert b == pytest.approx(a, abs=SCORE_TOLERANCE), key
        else:
            assert a == b, key


def same_rows(run_rows: list[dict], onnx_rows: list[dict], scores=("score",)) -> None:
    """Every field equal but the scores, which agree within SCORE_TOLERANCE (a nested list or dict too)."""

    def close(a, b) -> bool:
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, float):
            return abs(a - b) <= SCORE_TOLERANCE
        return a == b

    assert len(run_rows) == len(onnx_rows)
    for a, b in zip(run_rows, onnx_rows, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert close(a[key], b[key]), (key, a[key], b[key])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Widths:
    """Wraps a model's forward to record the padded width of every batch."""

    def __init__(self, model):
        self.model, self.widths = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, **inputs):
        self.widths.append(inputs["input_ids"].shape[1])
        return self.model(**inputs)


# ------------------------------------------------------------------------------------------------ the model
def test_onnx_dir_detection_and_missing_outputs(tmp_path):
    assert not is_onnx_dir(tmp_path) and not is_onnx_dir(tmp_path / "nowhere")
    (tmp_path / ONNX_FILE).write_bytes(b"not a graph")
    assert is_onnx_dir(tmp_path)
    from hf_finetune.errors import FinetuneError

    with pytest.raises(FinetuneError, match="onnxruntime cannot load it"):
        OrtModel.from_dir(tmp_path, config=object())


def test_without_onnxruntime_the_error_names_the_extra(tmp_path, monkeypatch):
    import sys

    from hf_finetune.errors import FinetuneError

    (tmp_path / ONNX_FILE).write_bytes(b"graph")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an install without the extra has
    with pytest.raises(
        FinetuneError, match=r"needs onnxruntime, which is not installed: `pip install hf-finetune\[onnx\]`"
    ):
        OrtModel.from_dir(tmp_path, config=object())


@pytest.fixture(scope="module")
def text_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-text")
    rng = random.Random(3)
    good, bad = ["good", "great", "superb"], ["bad", "awful", "dull"]
    rows = []
    for _ in range(240):
        label = rng.randrange(2)
        words = rng.choices(["the", "film", "was", "a", "plot", "very"], k=rng.randint(2, 12))
        words.insert(rng.randint(0, len(words)), rng.choice(good if label else bad))
        rows.append({"sentence": " ".join(words), "label": ["negative", "positive"][label]})
    files = {
        "train": str(write_jsonl(root / "train.jsonl", rows[:180])),
        "validation": str(write_jsonl(root / "validation.jsonl", rows[180:])),
    }
    recipe = tiny_recipe(tiny_model_dir, files, root / "run")
    recipe["training"].update(num_train_epochs=2, eval_strategy="no")
    train(load_recipe(recipe))
    return root / "run", export_dir(root / "run", root / "onnx"), files


def test_text_classification_eval_and_predict_match(text_run, tmp_path):
    run, onnx, files = text_run
    assert (onnx / "calibration.json").is_file()  # held-out calibration figures on both
    before = evaluate_output(run, predictions=True)
    after = evaluate_output(onnx, predictions=True)
    assert {"eval_loss", "eval_accuracy", "eval_temperature"} <= set(after)
    same_metrics(before, after)
    same_rows(
        read_jsonl(run / "predictions_validation.jsonl"), read_jsonl(onnx / "predictions_validation.jsonl")
    )
    # eval --file on a labelled file of one's own
    same_metrics(
        evaluate_output(run, file=files["validation"], name="mine"),
        evaluate_output(onnx, file=files["validation"], name="mine"),
    )

    lines = [{"sentence": text} for text in ["great", "the plot was very dull and the film " * 6, "awful a"]]
    write_jsonl(tmp_path / "in.jsonl", lines)
    for output in ("out.jsonl", "out.csv"):
        args = ["--input", str(tmp_path / "in.jsonl"), "--top-k", "2", "--all-scores", "--batch-size", "2"]
        assert cli.main(["predict", str(run), *args, "--output", str(tmp_path / "run" / output)]) == 0
        assert cli.main(["predict", str(onnx), *args, "--output", str(tmp_path / "onnx" / output)]) == 0
    same_rows(read_jsonl(tmp_path / "run/out.jsonl"), read_jsonl(tmp_path / "onnx/out.jsonl"))
    rows = read_jsonl(tmp_path / "onnx/out.jsonl")
    assert [row["sentence"] for row in rows] == [line["sentence"] for line in lines]
    assert {row["label"] for row in rows} <= {"negative", "positive"} and len(rows[0]["top_k"]) == 2
    run_csv, onnx_csv = ((tmp_path / d / "out.csv").read_text().splitlines() for d in ("run", "onnx"))
    assert run_csv[0] == onnx_csv[0] == "sentence,label,score,top_k,scores"
    assert [line.split(",")[1] for line in run_csv] == [line.split(",")[1] for line in onnx_csv]


def test_eval_turns_autocast_off_for_an_onnx_model(text_run, monkeypatch):
    """A recipe that trained under bf16 autocast evaluates its export in fp32 (onnxruntime has no autocast)."""
    import transformers

    from hf_finetune import inference

    run, onnx, _ = text_run
    trained = inference.load_output_recipe(
        run, ["training.bf16=true"]
    ).training  # this machine's derived bf16
    seen = []

    class Spy(transformers.TrainingArguments):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(transformers, "TrainingArguments", Spy)
    inference.evaluate_output(onnx, overrides=["training.bf16=true"])
    assert seen[-1]["bf16"] is False and seen[-1]["bf16_full_eval"] is False and seen[-1]["use_cpu"] is True
    inference.evaluate_output(run, overrides=["training.bf16=true"])
    assert seen[-1]["bf16"] is trained.bf16  # a run directory: as it trained


class Session:
    """An onnxruntime session's interface over a PyTorch head (the graph the export would hold)."""

    def __init__(self, model):
        self.model = model

    def get_inputs(self):
        return [SimpleNamespace(name=n) for n in ("input_ids", "attention_mask", "token_type_ids")]

    def get_outputs(self):
        return [SimpleNamespace(name="logits")]

    def run(self, names, feed):
        with torch.inference_mode():
            return [self.model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()]


@pytest.mark.parametrize("problem", ["multi_label_classification", "regression"])
def test_sequence_losses_follow_the_problem_type(tiny_model_dir, problem):
    """The loss of a multi-label (BCE) and a regression (MSE) head, as the PyTorch head computes it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    num_labels = 3 if problem == "multi_label_classification" else 1
    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=num_labels, problem_type=problem)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, config=config).eval()
    ort = OrtModel(Session(model), config)
    words = ["one", "two words", "three words here"]
    enc = AutoTokenizer.from_pretrained(tiny_model_dir)(words, padding=True, return_tensors="pt")
    labels = torch.rand(3, num_labels) if num_labels > 1 else torch.rand(3)
    with torch.inference_mode():
        expected, got = model(**enc, labels=labels), ort(**enc, labels=labels)
    assert got.loss.item() == pytest.approx(expected.loss.item(), abs=1e-6)
    assert type(got) is type(expected) and torch.equal(got.logits, expected.logits)
    assert ort.device.type == "cpu" and next(ort.parameters()).device.type == "cpu" and not ort.training


# ------------------------------------------------------------------------------------------------ NER
@pytest.fixture(scope="module")
def ner_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-ner")
    files = {
        "train": str(write_jsonl(root / "train.jsonl", ner_rows(160, seed=1))),
        "validation": str(write_jsonl(root / "validation.jsonl", ner_rows(40, seed=2))),
    }
    recipe = ner_recipe(tiny_model_dir, files, root / "run")
    recipe["training"].update(num_train_epochs=3, eval_strategy="no")
    train(load_recipe(recipe))
    return root / "run", export_dir(root / "run", root / "onnx")


def test_token_classification_entities_and_offsets_match(ner_run, tmp_path):
    run, onnx = ner_run
    same_metrics(evaluate_output(run), evaluate_output(onnx))
    long = " ".join(["Bob Smith met the team in Kyoto on monday and then visited Paris."] * 6)  # > 32 tokens
    lines = [
        {"text": "Today  Angela Merkel visited Paris."},
        {"text": long},
        {"tokens": ["bob", "smith", "met", "the", "team", "in", "kyoto"]},
        {"text": "alice"},
    ]
    write_jsonl(tmp_path / "in.jsonl", lines)
    predict_output(run, tmp_path / "in.jsonl", tmp_path / "run.jsonl", batch_size=2)
    predict_output(onnx, tmp_path / "in.jsonl", tmp_path / "onnx.jsonl", batch_size=2)
    run_rows, onnx_rows = read_jsonl(tmp_path / "run.jsonl"), read_jsonl(tmp_path / "onnx.jsonl")
    same_rows(run_rows, onnx_rows)
    found = [(e["label"], e["start"], e["end"]) for row in onnx_rows for e in row["entities"]]
    assert len(found) >= 4, onnx_rows  # the run learnt entities: the offsets compared are real ones
    assert any(e["start"] > 200 for e in onnx_rows[1]["entities"]), onnx_rows[1]  # found in a later window


def test_token_classification_batches_by_length_keep_the_order(ner_run):
    """Windows are read shortest first; the output rows stay in the input order and equal one-by-one reads."""
    from hf_finetune.inference import load_output_recipe, restore_model, restore_task

    _, onnx = ner_run
    recipe = load_output_recipe(onnx)
    task, tokenizer = restore_task(onnx, recipe)
    model = Widths(restore_model(onnx, recipe, task))
    records = [
        {"text": t} for t in ["alice met bob in paris " * 12, "carol", "bob smith visited kyoto", "yuki"]
    ]
    batched = task.predict(model, tokenizer, records, batch_size=2)
    assert model.widths == sorted(model.widths) and len(model.widths) > 2
    alone = [task.predict(model, tokenizer, [r], batch_size=1)[0] for r in records]
    same_rows(alone, batched)


# ------------------------------------------------------------------------------------------------ QA
@pytest.fixture(scope="module")
def qa_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-qa")
    files = colour_files(root / "data", n_train=80, n_eval=16)
    recipe = qa_recipe(tiny_model_dir, files, root / "run")
    recipe["training"].update(num_train_epochs=3, eval_strategy="no")
    train(load_recipe(recipe))
    return root / "run", export_dir(root / "run", root / "onnx"), files


def test_question_answering_windows_give_the_same_answers(qa_run, tmp_path):
    run, onnx, files = qa_run
    before, after = evaluate_output(run), evaluate_output(onnx)
    assert "eval_loss" in after  # the Trainer reads start/end positions as the export's labels
    same_metrics(before, after)
    validation = read_jsonl(Path(files["validation"]))
    lines = [{"question": COLOUR_QUESTION, "context": row["context"]} for row in validation[:6]]
    lines.insert(2, {"question": "Who designed the new bridge?", "context": CONTEXT})  # many 48-token windows
    write_jsonl(tmp_path / "in.jsonl", lines)
    predict_output(run, tmp_path / "in.jsonl", tmp_path / "run.jsonl", batch_size=3)
    predict_output(onnx, tmp_path / "in.jsonl", tmp_path / "onnx.jsonl", batch_size=3)
    run_rows, onnx_rows = read_jsonl(tmp_path / "run.jsonl"), read_jsonl(tmp_path / "onnx.jsonl")
    same_rows(run_rows, onnx_rows)
    assert [row["context"] for row in onnx_rows] == [line["context"] for line in lines]
    for row in onnx_rows:
        assert row["context"][row["start"] : row["end"]] == row["answer"]


def test_question_answering_batches_by_length_keep_the_order(qa_run):
    from hf_finetune.inference import load_output_recipe, restore_model, restore_task

    run, onnx, files = qa_run
    recipe = load_output_recipe(onnx)
    task, tokenizer = restore_task(onnx, recipe)
    model = Widths(restore_model(onnx, recipe, task))
    validation = read_jsonl(Path(files["validation"]))
    records = [{"question": COLOUR_QUESTION, "context": row["context"]} for row in validation[:3]]
    records.insert(1, {"question": "Who designed the new bridge?", "context": CONTEXT})
    batched = task.predict(model, tokenizer, records, batch_size=2)
    assert model.widths == sorted(model.widths) and len(model.widths) > 2
    alone = [task.predict(model, tokenizer, [r], batch_size=1)[0] for r in records]
    same_rows(alone, batched)
