"""Adding a task is one module: this file alone defines a toy task (its config section, its data checks,
preprocessing, metric and prediction, and its facts), registers it, and runs it through every command a
built-in task goes through, on the tiny model: validate, train, eval, predict, the model card, a PEFT plan
and a bench cell (in a child process, which finds the task through $HF_FINETUNE_TASK_MODULES).

Module level imports only hf_finetune and the standard library: the bench child imports this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hf_finetune.config.schema import TaskConfig, field_help
from hf_finetune.errors import DataError
from hf_finetune.tasks import Task, register_task
from hf_finetune.tasks.base import capped_max_length, softmax

TOY = "toy-polarity"
NAMES = ("negative", "positive")


@dataclass
class ToyConfig(TaskConfig):
    text_column: str = field_help("Column with the text.", "sentence")
    polarity_column: str = field_help("Column with 0 (negative) or 1 (positive).", "label")


@register_task(TOY, ToyConfig, "Toy: a sentence's polarity, 0 or 1 (defined in tests/test_add_a_task.py).")
class ToyPolarityTask(Task):
    auto_class = "AutoModelForSequenceClassification"
    card_title = "Toy Polarity"
    usage_example = 'model("a wonderful film")'
    peft_task_type = "SEQ_CLS"
    refused_peft_methods = {"prompt_tuning": "the toy refuses prompt tuning, to show the refusal path"}
    headline_candidates = ("polarity_accuracy",)

    def prepare(self, raw) -> None:
        cfg = self.cfg
        for split in raw:
            self.require_columns(
                raw, split, {"task.text_column": cfg.text_column, "task.polarity_column": cfg.polarity_column}
            )
            self.require_text(raw, split, "task.text_column", cfg.text_column)
            bad = sorted({v for v in raw[split][cfg.polarity_column] if v not in (0, 1)}, key=str)
            if bad:
                raise DataError(
                    f"`task.polarity_column`: values must be 0 or 1; the {split} split has {bad[:5]}."
                )

    def describe(self) -> dict[str, Any]:
        return {"labels": list(NAMES)}

    def model_config_kwargs(self) -> dict[str, Any]:
        return {
            "num_labels": 2,
            "id2label": dict(enumerate(NAMES)),
            "label2id": {n: i for i, n in enumerate(NAMES)},
        }

    def preprocess(self, raw, tokenizer):
        cfg = self.cfg
        max_length = capped_max_length(tokenizer, self.recipe.data.max_seq_length)

        def encode(batch):
            encoded = tokenizer(batch[cfg.text_column], truncation=True, max_length=max_length)
            encoded["labels"] = list(batch[cfg.polarity_column])
            return encoded

        return {split: self.tokenise(ds, split, encode, tokenizer) for split, ds in raw.items()}

    def compute_metrics(self):
        def compute(eval_pred) -> dict[str, float]:
            logits = (
                eval_pred.predictions[0]
                if isinstance(eval_pred.predictions, tuple)
                else eval_pred.predictions
            )
            return {"polarity_accuracy": float((logits.argmax(-1) == eval_pred.label_ids).mean())}

        return compute

    def input_fields(self) -> list[str]:
        return [self.cfg.text_column]

    def read_inputs(self, records, where: str) -> list[str]:
        column = self.cfg.text_column
        for number, record in enumerate(records, 1):
            if not isinstance(record.get(column), str):
                raise DataError(f"{where} line {number}: needs the text in field '{column}'.")
        return [record[column] for record in records]

    def predict(self, model, tokenizer, records, batch_size, where: str = "input"):
        import torch

        texts = self.read_inputs(records, where)
        out = []
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start : start + batch_size], padding=True, return_tensors="pt")
                for row in model(**batch).logits.float().numpy():
                    probs = softmax(np.asarray(row))
                    out.append(
                        {"polarity": NAMES[int(probs.argmax())], "score": round(float(probs.max()), 6)}
                    )
        return [{**record, **result} for record, result in zip(records, out)]


def _recipe(tiny_model_dir, files, out: Path, task: dict | None = None, **sections) -> dict:
    from .conftest import tiny_recipe

    recipe = tiny_recipe(tiny_model_dir, files, out, **sections)
    recipe["task"] = {"name": TOY, "text_column": "sentence", "polarity_column": "label", **(task or {})}
    return recipe


def test_the_toy_task_is_registered_and_listed(capsys):
    from hf_finetune import cli
    from hf_finetune.tasks import get_task

    assert get_task(TOY).task_class is ToyPolarityTask
    assert cli.main(["tasks"]) == 0
    assert TOY in capsys.readouterr().out


def test_validate_train_eval_predict_and_card(tiny_model_dir, sentiment_files, tmp_path, capsys):
    from hf_finetune import cli

    from .conftest import write_recipe

    out = tmp_path / "out"
    path = write_recipe(tmp_path / "toy.yaml", _recipe(tiny_model_dir, sentiment_files, out))

    assert cli.main(["validate", path, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task"] == TOY and summary["labels"] == list(NAMES)

    bad = write_recipe(
        tmp_path / "bad.yaml",
        _recipe(tiny_model_dir, sentiment_files, tmp_path / "bad", task={"polarity_column": "idx"}),
    )
    assert cli.main(["validate", bad]) == 2
    assert "`task.polarity_column`: values must be 0 or 1" in capsys.readouterr().err

    assert cli.main(["train", path]) == 0
    capsys.readouterr()
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_polarity_accuracy"] >= 0.85  # the cue words decide; chance is 0.5
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert losses[-1] < losses[0]

    assert cli.main(["eval", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["eval_polarity_accuracy"] == results["eval_polarity_accuracy"]

    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"sentence": "a wonderful superb film"}\n{"sentence": "an awful dull plot"}\n')
    assert (
        cli.main(["predict", str(out), "--input", str(inputs), "--output", str(tmp_path / "pred.jsonl")]) == 0
    )
    predicted = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [p["polarity"] for p in predicted] == ["positive", "negative"]

    card = (out / "README.md").read_text()
    assert "Toy Polarity" in card and 'model("a wonderful film")' in card


def test_peft_plan_and_refusal(tiny_model_dir, sentiment_files, tmp_path, capsys, no_weights):
    from hf_finetune import cli

    from .conftest import write_recipe

    lora = _recipe(tiny_model_dir, sentiment_files, tmp_path / "lora", peft={"method": "lora", "r": 4})
    assert cli.main(["plan", write_recipe(tmp_path / "lora.yaml", lora), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["strategy"].startswith("LoRA r=4")
    assert {g["name"].split(" ")[0] for g in plan["groups"] if g["trainable"]} == {
        "layer.0",
        "layer.1",
        "head",
    }
    # r=4 on the 6 linears of each of the 2 blocks (hidden 32, intermediate 64), plus the toy's 2-class head
    assert plan["trainable_params"] == 2 * (4 * 4 * (32 + 32) + 4 * (32 + 64) + 4 * (64 + 32)) + 66

    prompt = _recipe(tiny_model_dir, sentiment_files, tmp_path / "prompt", peft={"method": "prompt_tuning"})
    assert cli.main(["validate", write_recipe(tmp_path / "prompt.yaml", prompt)]) == 2
    assert "the toy refuses prompt tuning" in capsys.readouterr().err


def test_a_bench_cell_runs_the_toy_task_in_its_own_process(
    tiny_model_dir, sentiment_files, tmp_path, monkeypatch
):
    import yaml

    from hf_finetune.bench import load_bench, run_bench

    from .conftest import REPO, write_recipe

    monkeypatch.setenv("HF_FINETUNE_TASK_MODULES", __name__)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    recipe = write_recipe(
        tmp_path / "toy.yaml", _recipe(tiny_model_dir, sentiment_files, tmp_path / "unused")
    )
    bench_file = tmp_path / "bench.yaml"
    bench_file.write_text(
        yaml.safe_dump(
            {
                "bench": {"output_dir": str(tmp_path / "bench"), "seeds": [1], "max_steps": 80},
                "tasks": {"toy": recipe},
                "strategies": {"full": {}, "lora": {"peft": {"method": "lora", "r": 4}}},
            }
        )
    )
    run_bench(load_bench(bench_file), progress=False)
    records = {
        r["strategy"]: r
        for r in (
            json.loads(line) for line in (tmp_path / "bench" / "results.jsonl").read_text().splitlines()
        )
    }
    assert set(records) == {"full", "lora"}
    for record in records.values():
        assert record["status"] == "ok", record.get("error")
        assert record["metric"] == "polarity_accuracy"  # the toy's own headline metric
        assert 0.0 <= record["score"] <= 1.0
    assert records["full"]["score"] >= 0.85  # learned: the cue words decide, chance is 0.5
    assert records["lora"]["trainable_params"] < records["full"]["trainable_params"]


def test_a_task_module_that_does_not_import_is_named(monkeypatch):
    import pytest

    from hf_finetune.errors import RecipeError
    from hf_finetune.tasks import get_task

    monkeypatch.setenv("HF_FINETUNE_TASK_MODULES", "no_such_task_module")
    with pytest.raises(
        RecipeError, match=r"task module 'no_such_task_module' \(\$HF_FINETUNE_TASK_MODULES\)"
    ):
        get_task("not-registered")
