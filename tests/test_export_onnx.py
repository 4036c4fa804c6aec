"""`hf-finetune export --format onnx [--quantize int8]`: tiny trained runs of the three tasks exported, the
parity check at export (export.json, exit 1 beyond tolerance, nothing left behind), the directory run by
onnxruntime with shapes the trace never saw, int8 weights, a LoRA run merged first, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.export import parity
from hf_finetune.export.runtime import OrtModel
from hf_finetune.pipeline import train

from .conftest import sentiment_rows, tiny_recipe, write_jsonl, write_sentiment_files
from .test_question_answering import qa_recipe, qa_row
from .test_token_classification import ner_recipe, ner_rows


def _train(recipe: dict) -> Path:
    train(load_recipe(recipe))
    return Path(recipe["training"]["output_dir"])


def _export(capsys, run: Path, target: Path, *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["export", str(run), "--format", "onnx", *flags, "--output", str(target)])
    out, err = capsys.readouterr()
    return code, out, err


def _info(target: Path) -> dict:
    return json.loads((target / "export.json").read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def text_run(root, tiny_model_dir) -> Path:
    files = write_sentiment_files(root / "sentiment")
    recipe = tiny_recipe(tiny_model_dir, files, root / "text-run")
    recipe["training"].update(num_train_epochs=3, eval_strategy="no")
    return _train(recipe)


@pytest.fixture(scope="module")
def text_fp32(root, text_run) -> Path:
    """The text classifier exported in fp32 by the CLI."""
    target = root / "text-fp32"
    code = cli.main(["export", str(text_run), "--format", "onnx", "--output", str(target)])
    assert code == 0
    return target


def _inputs(directory: Path, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(texts, pairs, padding=True, truncation=True, max_length=64, return_tensors="np")
    return {name: np.asarray(value, dtype=np.int64) for name, value in batch.items()}


def _pytorch_outputs(run: Path, batch: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    from hf_finetune.inference import load_output_recipe, restore_model, restore_task

    recipe = load_output_recipe(run)
    task, _ = restore_task(run, recipe)
    model = restore_model(run, recipe, task).eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    return [out[name].numpy() for name in names]


def _session_outputs(target: Path, batch: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """The export run by plain onnxruntime: (output names, outputs)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: batch[i.name] for i in session.get_inputs()}  # names read from the session, not assumed
    return [o.name for o in session.get_outputs()], session.run(None, feed)


# ---------------------------------------------------------------------------------------- fp32 text
def test_fp32_text_export_is_a_self_describing_directory_that_agrees(text_run, text_fp32):
    target = text_fp32
    assert not target.with_name(target.name + ".partial").exists()
    names = {p.name for p in target.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "recipe.yaml", "export.json"} <= names
    assert not any(name.endswith(".data") for name in names)  # one self-contained file
    info = _info(target)
    assert info["format"] == "onnx" and info["precision"] == "fp32" and info["quantization"] is None
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["outputs"] == ["logits"]
    assert isinstance(info["opset"], int) and info["opset"] >= 17
    assert info["source"] == {
        "run": str(text_run.absolute()),
        "task": "text-classification",
        "base_model": None,  # a local checkpoint: no Hub id to name
        "model_type": "bert",
        "peft": None,
        "merged": False,
    }
    assert info["fusion"]["fused_ops"]["SkipLayerNormalization"] == 4  # 2 layers x 2
    assert info["sizes"]["run_weights_bytes"] == (text_run / "model.safetensors").stat().st_size
    assert 0.95 < info["sizes"]["onnx_to_pytorch"] < 1.1
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(info["versions"])
    check = info["parity"]
    assert check["passed"] and check["split"] == "validation" and check["examples"] == 96
    assert check["max_abs_logit_diff"] < 1e-4
    assert check["identical_predictions"] == 1.0 and check["unit"] == "examples"
    assert check["metric"]["name"] == "accuracy" and check["metric"]["pytorch"] > 0.8  # it learned
    assert check["metric"]["delta"] == pytest.approx(0.0, abs=1e-9)
    # the label maps and the recipe travel with it; the recipe points at the export
    config = json.loads((target / "config.json").read_text())
    assert set(config["id2label"].values()) == {"0", "1"}
    recipe = load_recipe(target / "recipe.yaml", defaults=False)
    assert recipe.model.name_or_path == str(target.absolute()) and recipe.peft.method is None


def test_the_card_of_an_export_says_onnx_and_its_snippet_runs(text_fp32):
    from hf_finetune.card import build_card

    card = build_card(text_fp32)
    meta = yaml.safe_load(str(card).split("---")[1])
    assert meta["library_name"] == "onnx" and "onnx" in meta["tags"]
    assert "ONNX export (fp32" in card.text and "identical predictions 100.00%" in card.text
    snippet = card.text.split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(compile(snippet, "card-usage", "exec"), scope)  # onnxruntime on the tokenizer's output
    assert scope["logits"].shape == (1, 2)
    hub = build_card(text_fp32, repo_id="me/tiny-onnx")
    assert 'snapshot_download("me/tiny-onnx")' in hub.text


def test_the_export_runs_batches_and_lengths_the_trace_never_saw(text_run, text_fp32):
    import onnx

    graph = onnx.load(str(text_fp32 / "model.onnx"))
    for value in [*graph.graph.input, *graph.graph.output]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[0] == "batch", (value.name, dims)
        if value.name != "logits":
            assert dims[1] == "sequence", (value.name, dims)
    for texts in (["good"], [" ".join(["a wonderful film"] * 12)] + ["dull"] * 4):
        batch = _inputs(text_fp32, texts)
        names, got = _session_outputs(text_fp32, batch)
        (want,) = _pytorch_outputs(text_run, batch, names)
        assert got[0].shape == (len(texts), 2)
        assert np.abs(got[0] - want).max() < 1e-4


# ---------------------------------------------------------------------------------------- int8
def test_int8_is_smaller_and_reports_its_metric_delta(text_run, text_fp32, root, capsys):
    target = root / "text-int8"
    code, out, err = _export(capsys, text_run, target, "--quantize", "int8")
    assert code == 0, err
    info = _info(target)
    assert info["precision"] == "int8"
    quantization = info["quantization"]
    assert quantization["method"] == "dynamic" and quantization["weight_type"] == "int8"
    assert quantization["per_channel"] is True and quantization["reduce_range"] is False
    assert quantization["quantized_ops"]["MatMulInteger"] >= 8  # q, k, v, out, 2 FFN per layer
    fp32 = (text_fp32 / "model.onnx").stat().st_size
    assert info["sizes"]["onnx_bytes"] == (target / "model.onnx").stat().st_size < 0.3 * fp32
    check = info["parity"]
    assert check["passed"] and check["metric"]["delta"] is not None
    assert check["metric"]["onnx"] > 0.8  # still the classifier it was
    assert f"delta {check['metric']['delta']:+.4f}" in out
    assert "wrote the int8 ONNX model" in out


# ---------------------------------------------------------------------------------------- the other tasks
def test_token_classification_export(root, tiny_model_dir, capsys):
    files = {
        "train": str(write_jsonl(root / "ner" / "train.jsonl", ner_rows(60, seed=1))),
        "validation": str(write_jsonl(root / "ner" / "validation.jsonl", ner_rows(20, seed=2))),
    }
    recipe = ner_recipe(tiny_model_dir, files, root / "ner-run")
    recipe["training"].update(num_train_epochs=3, eval_strategy="no")
    run = _train(recipe)
    target = root / "ner-onnx"
    code, out, err = _export(capsys, run, target)
    assert code == 0, err
    info = _info(target)
    assert info["source"]["task"] == "token-classification" and info["outputs"] == ["logits"]
    check = info["parity"]
    assert check["passed"] and check["unit"] == "labelled tokens" and check["identical_predictions"] == 1.0
    assert check["compared"] > 100 and check["metric"]["delta"] == pytest.approx(0.0, abs=1e-9)
    batch = _inputs(target, ["Anna lives in Paris", "x"])
    names, got = _session_outputs(target, batch)
    (want,) = _pytorch_outputs(run, batch, names)
    real = batch["attention_mask"].astype(bool)
    assert got[0].shape[:2] == batch["input_ids"].shape and np.abs(got[0] - want)[real].max() < 1e-4


def test_question_answering_export(root, tiny_model_dir, capsys):
    files = {
        "train": str(write_jsonl(root / "qa" / "train.jsonl", [qa_row(i) for i in range(8)])),
        "validation": str(write_jsonl(root / "qa" / "validation.jsonl", [qa_row(9), qa_row(10)])),
    }
    recipe = qa_recipe(tiny_model_dir, files, root / "qa-run")
    recipe["training"].update(num_train_epochs=2, eval_strategy="no")
    run = _train(recipe)
    target = root / "qa-onnx"
    code, out, err = _export(capsys, run, target)
    assert code == 0, err
    info = _info(target)
    assert info["outputs"] == ["start_logits", "end_logits"]
    check = info["parity"]
    assert check["passed"] and check["unit"] == "answers" and check["identical_predictions"] == 1.0
    assert check["examples"] == 2 and check["rows"] > 2  # long contexts: several windows per example
    assert check["metric"]["name"] in ("f1", "exact_match")
    batch = _inputs(target, ["Who designed it?"] * 3, ["Anna did.", "It was designed by Anna Berg.", "No."])
    names, got = _session_outputs(target, batch)
    want = _pytorch_outputs(run, batch, names)
    real = batch["attention_mask"].astype(bool)
    assert names == ["start_logits", "end_logits"]
    assert max(np.abs(g - w)[real].max() for g, w in zip(got, want)) < 1e-4


def _multi_label(label: int):
    return ["pos", "any"] if label else ["any"]


def _score(label: int):
    return 0.15 + 0.7 * label  # not whole numbers: regression


@pytest.mark.parametrize("kind", ["multi-label", "regression"])
def test_multi_label_and_regression_exports(kind, root, tiny_model_dir, capsys):
    relabel = _multi_label if kind == "multi-label" else _score
    files = {}
    for split, n, seed in (("train", 160, 1), ("validation", 40, 2)):
        rows = [{**row, "label": relabel(row["label"])} for row in sentiment_rows(n, seed=seed)]
        files[split] = str(write_jsonl(root / kind / f"{split}.jsonl", rows))
    recipe = tiny_recipe(tiny_model_dir, files, root / f"{kind}-run")
    recipe["training"].update(num_train_epochs=2, eval_strategy="no")
    run = _train(recipe)
    code, out, err = _export(capsys, run, root / f"{kind}-onnx")
    assert code == 0, err
    check = _info(root / f"{kind}-onnx")["parity"]
    assert check["passed"] and check["identical_predictions"] == 1.0 and check["examples"] == 40
    assert check["metric"]["name"] == ("f1_micro" if kind == "multi-label" else "pearson")
    assert check["metric"]["delta"] == pytest.approx(0.0, abs=1e-3)  # Pearson of near-equal values moves


# ---------------------------------------------------------------------------------------- PEFT
def test_a_lora_run_is_merged_then_exported(root, tiny_model_dir, capsys):
    files = write_sentiment_files(root / "lora-data")
    recipe = tiny_recipe(tiny_model_dir, files, root / "lora-run", peft={"method": "lora", "r": 4})
    recipe["training"].update(learning_rate=1e-2, num_train_epochs=2, eval_strategy="no")
    run = _train(recipe)
    assert (run / "adapter_config.json").is_file()
    target = root / "lora-onnx"
    code, out, err = _export(capsys, run, target)
    assert code == 0, err
    info = _info(target)
    assert info["source"]["peft"] == "lora" and info["source"]["merged"] is True
    assert not (target / "adapter_config.json").exists()
    assert info["parity"]["passed"] and info["parity"]["max_abs_logit_diff"] < 1e-4
    assert load_recipe(target / "recipe.yaml", defaults=False).peft.method is None
    model = OrtModel.from_dir(target)
    batch = _inputs(target, ["a wonderful film", "dull and boring"])
    logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits
    (want,) = _pytorch_outputs(run, batch, ["logits"])  # the adapter on its base, unmerged
    assert np.abs(logits.numpy() - want).max() < 1e-4


# ---------------------------------------------------------------------------------------- failures
def test_an_export_beyond_tolerance_fails_with_exit_1_and_leaves_nothing(text_run, root, capsys, monkeypatch):
    run_graph = OrtModel.run

    def off(self, inputs):
        outputs = run_graph(self, inputs)
        outputs["logits"] = outputs["logits"] + np.float32(0.01)
        return outputs

    monkeypatch.setattr(OrtModel, "run", off)
    target = root / "text-off"
    code, out, err = _export(capsys, text_run, target, "--parity-examples", "16")
    assert code == 1, err
    assert "parity: the fp32 ONNX export disagrees with the PyTorch model on validation (16 examples)" in err
    assert "max |logit diff| 0.01 exceeds the tolerance 0.001 by 0.009" in err
    assert "Traceback" not in err
    assert not target.exists() and not target.with_name(target.name + ".partial").exists()
    # a wider tolerance takes it
    code, out, err = _export(capsys, text_run, target, "--parity-examples", "16", "--max-logit-diff", "0.02")
    assert code == 0, err
    assert (
        "parity on validation (16 examples): max |logit diff| 0.01, identical predictions 100.00% (0 of 16 "
        in out
    )
    assert "wrote the fp32 ONNX model to" in out
    check = _info(target)["parity"]
    assert check["examples"] == 16 and check["tolerance"]["max_logit_diff"] == 0.02


def test_parity_problems_name_the_gap():
    report = {
        "max_abs_logit_diff": 0.004,
        "identical_predictions": 0.99,
        "differing": 1,
        "compared": 100,
        "unit": "examples",
        "metric": {
            "name": "accuracy",
            "pytorch": 0.9,
            "onnx": 0.88,
            "delta": -0.02,
            "higher_is_better": True,
        },
    }
    found = parity.problems(report, parity.Tolerance(), quantized=False)
    assert found[0].startswith("max |logit diff| 0.004 exceeds the tolerance 0.001 by 0.003 (4.0x")
    assert found[1].startswith("identical predictions 99.00% are below 99.90% by 0.90% (1 of 100 examples")
    assert parity.problems(report, parity.Tolerance(), quantized=True) == []  # int8: reported, not failed
    (drop,) = parity.problems(report, parity.Tolerance(max_metric_drop=0.01), quantized=True)
    assert drop.startswith("accuracy drops by 0.02 (0.9000 -> 0.8800), more than --max-metric-drop 0.01")
    loss = {**report, "metric": {**report["metric"], "name": "mse", "delta": -0.5, "higher_is_better": False}}
    assert (
        parity.problems(loss, parity.Tolerance(max_metric_drop=0.0), quantized=True) == []
    )  # lower is better


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--format", "tflite"], "--format: unknown format 'tflite'; expected one of: merged, onnx"),
        (["--merge", "--format", "onnx"], "--merge means --format merged; give one"),
        (["--merge", "--quantize", "int8"], "--quantize: applies to --format onnx, not to a merged export"),
        ([], "export: give --format onnx"),
        (["--format", "onnx", "--parity-examples", "-1"], "--parity-examples: must be 0 (no check) or more"),
    ],
)
def test_flag_mistakes(flags, expected, text_run, root, capsys, no_weights):
    capsys.readouterr()
    code = cli.main(["export", str(text_run), *flags, "--output", str(root / "never")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert not (root / "never").exists()


def test_an_export_is_not_exported_again(text_fp32, root, capsys, no_weights):
    code, out, err = _export(capsys, text_fp32, root / "again")
    assert code == 2 and "is an ONNX export already (it holds model.onnx)" in err, err


def test_without_the_onnx_extra_it_says_what_to_install(text_run, root, capsys, no_weights, monkeypatch):
    from hf_finetune.export import onnx as exporter

    real = exporter.find_spec
    monkeypatch.setattr(exporter, "find_spec", lambda name: None if name == "onnxscript" else real(name))
    code, out, err = _export(capsys, text_run, root / "no-extra")
    assert code == 2, err
    assert "--format onnx needs onnxscript, which is not installed: `pip install hf-finetune[onnx]`" in err
    assert not (root / "no-extra").exists()
