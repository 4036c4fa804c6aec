"""Calibrated scores (hf_finetune.metrics.calibration): temperature scaling fitted on the eval split at the end of
training, expected calibration error (ECE) before and after it, the reliability diagram, and `predict` dividing
the logits by the stored temperature (`--uncalibrated`: the raw scores)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import yaml
from PIL import Image

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import FinetuneError
from hf_finetune.inference import evaluate_output, predict_output
from hf_finetune.metrics import calibration as C
from hf_finetune.pipeline import train

from .conftest import NEGATIVE, POSITIVE, sentiment_rows, tiny_recipe, write_jsonl

KEYS = ("eval_temperature", "eval_ece", "eval_ece_calibrated")


# ------------------------------------------------------------------------------------------------
# The arithmetic, against numbers worked out by hand
# ------------------------------------------------------------------------------------------------
def test_ece_by_hand():
    # 15 bins of width 1/15: 0.95 falls in the last bin (14/15, 1], 0.65 in (9/15, 10/15]
    confidence = [0.95, 0.95, 0.65, 0.65, 0.65]
    correct = [True, False, True, True, False]
    # last bin: accuracy 1/2, confidence 0.95, 2 of 5 examples; the other: accuracy 2/3, confidence 0.65, 3 of 5
    expected = 2 / 5 * abs(0.5 - 0.95) + 3 / 5 * abs(2 / 3 - 0.65)
    assert C.expected_calibration_error(confidence, correct) == pytest.approx(expected)
    table = C.reliability_bins(confidence, correct)
    assert len(table) == C.BINS == 15 and sum(row["count"] for row in table) == 5
    assert (table[14]["count"], table[9]["count"]) == (2, 3)
    assert table[9]["accuracy"] == pytest.approx(2 / 3) and table[9]["confidence"] == pytest.approx(0.65)

    # bins are closed on the right: 0.5 is in (0.25, 0.5] of 4 bins, 1.0 in the last, 0 in the first
    table = C.reliability_bins([0.0, 0.5, 1.0, 0.51], [False, True, True, True], bins=4)
    assert [row["count"] for row in table] == [1, 1, 1, 1]
    # 4 bins: |0 - 0| + |1 - 0.5| + |1 - 0.51| + |1 - 1|, each a quarter of the examples
    assert C.expected_calibration_error([0.0, 0.5, 1.0, 0.51], [False, True, True, True], bins=4) == (
        pytest.approx((0.5 + 0.49) / 4)
    )


def test_ece_from_logits_is_top_label():
    # three classes; the confidence is the largest probability, right when its class is the label
    logits = np.log([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    labels = [0, 2, 2]
    # confidences 0.7 (right), 0.6 (wrong), 0.4 (right): three different bins
    expected = (abs(1 - 0.7) + abs(0 - 0.6) + abs(1 - 0.4)) / 3
    assert C.ece(logits, labels) == pytest.approx(expected)
    # a temperature scales the logits: T = 2 on log-probabilities is the square root of the probabilities
    roots = np.sqrt([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    np.testing.assert_allclose(C.softmax(logits, 2.0), roots / roots.sum(axis=1, keepdims=True))
    assert C.nll(logits, labels) == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.4)) / 3)


def _sampled(temperature: float, n: int = 20000, classes: int = 5, seed: int = 0):
    """Logits ``z`` and labels drawn from softmax(z / temperature): T = temperature is their true calibration."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, classes))
    probs = C.softmax(logits, temperature)
    labels = (probs.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return logits, labels


@pytest.mark.parametrize("true_t", [2.0, 0.5])
def test_the_fit_recovers_a_known_temperature(true_t):
    logits, labels = _sampled(true_t)
    fitted = C.fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert C.fit_temperature(logits, labels) == fitted  # deterministic
    cal = C.calibrate(logits, labels, "validation")
    assert cal.temperature == fitted and cal.examples == len(labels)
    # the fit lowers the NLL (it is its minimum) and the ECE, and never moves the argmax
    assert cal.nll_calibrated < cal.nll and cal.nll_calibrated <= C.nll(logits, labels, true_t) + 1e-9
    assert cal.ece_calibrated < cal.ece / 3 and cal.ece_calibrated < 0.02, (cal.ece, cal.ece_calibrated)
    assert (C.softmax(logits, fitted).argmax(axis=1) == logits.argmax(axis=1)).all()
    assert cal.accuracy == pytest.approx(float((logits.argmax(axis=1) == labels).mean()))
    # overconfident logits (true T > 1) get softened, underconfident ones sharpened
    assert (fitted > 1) == (true_t > 1)


def test_the_fit_stays_in_range_and_ignores_masked_rows():
    # every example right by a wide margin: the NLL falls as T shrinks, so T stops at the lower end
    logits = np.array([[8.0, -8.0], [-8.0, 8.0]] * 10)
    labels = np.array([0, 1] * 10)
    assert C.fit_temperature(logits, labels) == C.MIN_TEMPERATURE
    # rows labelled -100 (ignored by the loss) are left out; none left: T = 1
    assert C.fit_temperature(logits[:2], [-100, -100]) == 1.0
    masked = np.concatenate([labels[:-1], [-100]])
    assert C.nll(logits, masked) == pytest.approx(C.nll(logits[:-1], labels[:-1]))


def test_calibration_files(tmp_path):
    logits, labels = _sampled(2.0, n=2000, classes=3)
    cal = C.calibrate(logits, labels, "dev")
    written = cal.write(tmp_path)
    assert [p.name for p in written] == ["calibration.json", "reliability_diagram.png"]
    stored = json.loads((tmp_path / "calibration.json").read_text())
    assert stored["temperature"] == cal.temperature and stored["split"] == "dev" and stored["bins"] == 15
    assert stored["examples"] == 2000 and stored["ece"] > stored["ece_calibrated"]
    assert len(stored["reliability"]["uncalibrated"]) == len(stored["reliability"]["calibrated"]) == 15
    assert sum(row["count"] for row in stored["reliability"]["calibrated"]) == 2000
    assert "in-sample" in stored["note"]
    with Image.open(tmp_path / "reliability_diagram.png") as image:
        assert image.width > 800 and image.height > 500
    assert C.read_temperature(tmp_path) == cal.temperature
    assert cal.metrics("eval") == {
        "eval_temperature": round(cal.temperature, 6),
        "eval_ece": round(cal.ece, 6),
        "eval_ece_calibrated": round(cal.ece_calibrated, 6),
    }


@pytest.mark.parametrize("text", ["{not json", '{"temperature": -1}', '{"temperature": "2"}', "[1.5]"])
def test_a_broken_calibration_file_is_named(tmp_path, text):
    assert C.read_temperature(tmp_path) is None  # none at all: an old or uncalibrated run
    (tmp_path / "calibration.json").write_text(text)
    with pytest.raises(FinetuneError, match="calibration.json: .*--uncalibrated"):
        C.read_temperature(tmp_path)


def test_multi_label_and_regression_skip_with_a_log_line(caplog):
    from hf_finetune.labels import MULTI, REGRESSION, SINGLE, LabelSchema
    from hf_finetune.tasks.text_classification import TextClassificationTask

    recipe = load_recipe(tiny_recipe("m", {"train": "t.jsonl"}, "out"), defaults=False)
    task = TextClassificationTask(recipe)
    task.last_eval = (np.zeros((2, 2)), np.array([0, 1]))
    task.labels = LabelSchema(SINGLE, ["a", "b"])
    assert task.calibration_logits() is task.last_eval
    for problem in (MULTI, REGRESSION):
        task.labels = LabelSchema(problem, ["a", "b"] if problem == MULTI else ["score"])
        with caplog.at_level(logging.INFO, logger="hf_finetune"):
            assert task.calibration_logits() is None
        assert "temperature scaling is for single-label classification" in caplog.text
    task.labels = LabelSchema(SINGLE, ["a", "b"])
    task.cfg.calibration = "none"
    assert task.calibration_logits() is None


# ------------------------------------------------------------------------------------------------
# A training run: fitted on the eval split, stored with the model, used by predict
# ------------------------------------------------------------------------------------------------
ROWS = [
    {"sentence": f"the film was {POSITIVE[0]} and {POSITIVE[1]}"},
    {"sentence": f"the plot was {NEGATIVE[0]} and long"},
    {"sentence": f"a very {POSITIVE[2]} story"},
    {"sentence": f"quite {NEGATIVE[3]} acting"},
    {"sentence": "the film was a film"},  # no cue: an unsure one
]


def _noisy(rows: list[dict], every: int = 5) -> list[dict]:
    """Every ``every``-th label flipped: the model trained on clean rows is right on about 80% of these with
    the confidence it learned on clean data, so it is overconfident here (a temperature above 1 fixes that)."""
    flip = {"negative": "positive", "positive": "negative"}
    return [{**row, "label": flip[row["label"]]} if i % every == 0 else row for i, row in enumerate(rows)]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """One tiny training with a labelled test split (calibrated: the default), one with `calibration: none`;
    the evaluation and test labels are noisy, so the scores have something to calibrate."""
    root = tmp_path_factory.mktemp("calibration")
    files = {
        "train": str(write_jsonl(root / "train.jsonl", sentiment_rows(320, seed=1, as_names=True))),
        "validation": str(
            write_jsonl(root / "validation.jsonl", _noisy(sentiment_rows(200, seed=2, as_names=True)))
        ),
        "test": str(write_jsonl(root / "test.jsonl", _noisy(sentiment_rows(200, seed=3, as_names=True)))),
    }
    out = {}
    for name, task in (("calibrated", {}), ("none", {"calibration": "none"})):
        recipe = tiny_recipe(tiny_model_dir, files, root / name, task=task)
        out[name] = (root / name, train(load_recipe(recipe)))
    return out


def test_training_fits_and_stores_a_temperature(runs):
    out, results = runs["calibrated"]
    assert results["eval_accuracy"] >= 0.75, results  # it learned (chance is 0.5, the noise caps it at 0.8)
    stored = json.loads((out / "calibration.json").read_text())
    assert stored["split"] == "validation" and stored["examples"] == 200 and stored["bins"] == 15
    assert all(key in results for key in KEYS) and results["eval_temperature"] == round(
        stored["temperature"], 6
    )
    assert results["eval_ece"] == round(stored["ece"], 6)
    # overconfident on the noisy labels: T > 1 softens the scores, and the in-sample NLL and ECE fall
    assert results["eval_temperature"] > 1.2, results
    assert stored["nll_calibrated"] < stored["nll"]
    assert results["eval_ece_calibrated"] < results["eval_ece"] / 2, results
    assert json.loads((out / "eval_results.json").read_text())["eval_ece"] == results["eval_ece"]
    # the held-out test split under the same temperature: better calibrated too
    assert results["test_ece_calibrated"] < results["test_ece"] / 2, results
    with Image.open(out / "reliability_diagram.png") as image:
        assert image.width > 800
    card = (out / "README.md").read_text()
    assert (
        f"T = {stored['temperature']:.4g}" in card
        and "![Reliability diagram](reliability_diagram.png)" in card
    )
    assert f"{results['eval_ece']:.4f} before" in card and "held-out `test` split" in card
    meta = yaml.safe_load(card.split("---")[1])  # T is not a score of the model-index
    names = {m["type"] for entry in meta["model-index"][0]["results"] for m in entry["metrics"]}
    assert "accuracy" in names and not names & {"temperature", "ece", "ece_calibrated"}
    # the test split's predictions carry the calibrated scores: their mean confidence is within the calibrated
    # ECE of the accuracy (|accuracy - mean confidence| <= ECE), where the raw scores' is not
    predictions = [json.loads(line) for line in (out / "predictions_test.jsonl").read_text().splitlines()]
    assert len(predictions) == 200 and all(0.5 <= row["score"] <= 1.0 for row in predictions)
    mean_confidence = sum(row["score"] for row in predictions) / len(predictions)
    assert abs(mean_confidence - results["test_accuracy"]) <= results["test_ece_calibrated"] + 1e-3


def test_predict_divides_the_logits_by_the_temperature(runs, tmp_path):
    out, _ = runs["calibrated"]
    temperature = C.read_temperature(out)
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    calibrated, raw = tmp_path / "calibrated.jsonl", tmp_path / "raw.jsonl"
    base = ["predict", str(out), "--input", str(src), "--all-scores"]
    assert cli.main([*base, "--output", str(calibrated)]) == 0
    assert cli.main([*base, "--output", str(raw), "--uncalibrated"]) == 0
    calibrated_rows = [json.loads(line) for line in calibrated.read_text().splitlines()]
    raw_rows = [json.loads(line) for line in raw.read_text().splitlines()]
    assert [r["label"] for r in calibrated_rows] == [r["label"] for r in raw_rows]  # the same labels
    assert [r["label"] for r in raw_rows][:4] == ["positive", "negative", "positive", "negative"]
    assert [r["score"] for r in calibrated_rows] != [r["score"] for r in raw_rows]  # other scores
    for cal_row, raw_row in zip(calibrated_rows, raw_rows, strict=True):
        # two classes: the calibrated log-odds are the raw ones divided by T
        p, q = raw_row["scores"]["positive"], cal_row["scores"]["positive"]
        if 1e-4 < p < 1 - 1e-4 and 1e-4 < q < 1 - 1e-4:
            assert math.log(q / (1 - q)) == pytest.approx(
                math.log(p / (1 - p)) / temperature, rel=1e-2, abs=1e-3
            )
    # the library call agrees with the CLI
    again = tmp_path / "again.jsonl"
    predict_output(out, src, again, all_scores=True)
    assert again.read_text() == calibrated.read_text()


def test_eval_reports_the_ece_of_the_stored_temperature(runs):
    out, results = runs["calibrated"]
    metrics = evaluate_output(out, split="test")
    assert metrics["eval_temperature"] == results["eval_temperature"]
    assert metrics["eval_ece"] == pytest.approx(results["test_ece"], abs=1e-4)
    assert metrics["eval_ece_calibrated"] == pytest.approx(results["test_ece_calibrated"], abs=1e-4)


def test_push_and_export_carry_the_calibration(runs):
    from hf_finetune.publish import RECORD_FILES, push

    out, _ = runs["calibrated"]
    files = push(out, "someone/calibrated", dry_run=True)["files"]
    assert {"calibration.json", "reliability_diagram.png"} <= set(files)
    assert {"calibration.json", "reliability_diagram.png"} <= set(RECORD_FILES)  # push --merge copies them


def test_calibration_none_writes_nothing(runs, tmp_path):
    out, results = runs["none"]
    assert results["eval_accuracy"] >= 0.75, results
    assert not (out / "calibration.json").exists() and not (out / "reliability_diagram.png").exists()
    assert not [k for k in results if k.endswith(("_temperature", "_ece", "_ece_calibrated"))]
    assert "temperature scaling" not in (out / "README.md").read_text()
    # predict gives the raw scores, with or without --uncalibrated
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    plain, raw = tmp_path / "plain.jsonl", tmp_path / "raw.jsonl"
    predict_output(out, src, plain)
    predict_output(out, src, raw, uncalibrated=True)
    assert plain.read_text() == raw.read_text()
    assert "eval_ece" not in evaluate_output(out)


def test_export_merge_carries_the_temperature(tiny_model_dir, tmp_path):
    from hf_finetune.export.merge import export_merged

    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", sentiment_rows(320, seed=1, as_names=True))),
        "validation": str(
            write_jsonl(tmp_path / "validation.jsonl", _noisy(sentiment_rows(100, seed=2, as_names=True)))
        ),
    }
    out = tmp_path / "adapter"
    recipe = tiny_recipe(tiny_model_dir, files, out, peft={"method": "lora", "r": 4})
    recipe["training"].update(learning_rate=1e-2, num_train_epochs=2, eval_strategy="no")
    train(load_recipe(recipe))
    temperature = C.read_temperature(out)
    assert temperature is not None
    merged = export_merged(out, tmp_path / "merged")
    assert C.read_temperature(merged) == temperature and (merged / "reliability_diagram.png").is_file()
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    rows = {}
    for name, directory in (("adapter", out), ("merged", merged)):
        predict_output(directory, src, tmp_path / f"{name}.jsonl", all_scores=True)
        rows[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows["adapter"]] == [r["label"] for r in rows["merged"]]
    assert all(
        abs(a["score"] - m["score"]) < 1e-4 for a, m in zip(rows["adapter"], rows["merged"], strict=True)
    )
