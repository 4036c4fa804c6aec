"""The package's training defaults (`config.defaults`): what a recipe that leaves Trainer settings out gets,
that the recipe's own values win, that `validate`, `recipe.yaml` and the reference show them, and that a minimal
recipe trains with curves worth plotting."""

from __future__ import annotations

import json

import yaml

from hf_finetune import reference
from hf_finetune.config.defaults import ADAPTER_LR, FULL_LR, documented_defaults, training_defaults
from hf_finetune.config.load import load_recipe
from hf_finetune.pipeline import train, validate

from .conftest import write_sentiment_files


def _minimal(model_dir, files, out, **training) -> dict:
    """What a new user writes: the task, the model, the data files and an output dir (plus ``training``)."""
    return {
        "task": {"name": "text-classification", "text_column": "sentence"},
        "model": {"name_or_path": str(model_dir)},
        "data": {"files": files, "max_seq_length": 32},
        "training": {"output_dir": str(out), **training},
    }


def test_a_minimal_recipe_gets_the_package_defaults(tiny_model_dir, tmp_path):
    files = write_sentiment_files(tmp_path)
    recipe = load_recipe(_minimal(tiny_model_dir, files, tmp_path / "out"))
    args = recipe.training
    assert args.per_device_train_batch_size == 32 and args.per_device_eval_batch_size == 64
    assert str(args.train_sampling_strategy) == "group_by_length"
    assert args.learning_rate == FULL_LR and args.warmup_steps == 0.06 and args.weight_decay == 0.01
    assert args.logging_steps == 0.02 and args.report_to in ("none", ["none"], [])
    assert str(args.eval_strategy.value) == "steps" and args.eval_steps == 0.25
    assert args.save_steps == 0.25 and args.save_total_limit == 2
    applied = {d.field: d.value for d in recipe.defaults}
    assert applied["train_sampling_strategy"] == "group_by_length" and "output_dir" not in applied
    # recipe.yaml records them: reloading it applies no default anew and gives the same arguments
    saved = recipe.to_dict()
    assert saved["training"]["per_device_train_batch_size"] == 32
    assert saved["training"]["eval_steps"] == 0.25
    again = load_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again.defaults == ()
    assert again.training.to_dict() == args.to_dict()


def test_the_recipe_wins_even_with_transformers_own_value(tiny_model_dir, tmp_path):
    files = write_sentiment_files(tmp_path)
    raw = _minimal(
        tiny_model_dir,
        files,
        tmp_path / "out",
        train_sampling_strategy="random",
        per_device_train_batch_size=8,
        save_strategy="no",
        eval_strategy="epoch",
    )
    recipe = load_recipe(raw)
    args = recipe.training
    assert str(args.train_sampling_strategy) == "random" and args.per_device_train_batch_size == 8
    applied = {d.field for d in recipe.defaults}
    assert not applied & {"train_sampling_strategy", "per_device_train_batch_size", "eval_strategy"}
    # no checkpoints: no checkpoint cadence or limit; evaluation by epoch: no eval_steps
    assert not applied & {"save_steps", "save_total_limit", "eval_steps"}
    assert args.save_total_limit is None and args.eval_steps is None


def test_command_line_overrides_count_as_the_recipe_sets_them(tiny_model_dir, tmp_path):
    files = write_sentiment_files(tmp_path)
    raw = _minimal(tiny_model_dir, files, tmp_path / "out", eval_strategy="no")
    # an override arrives as typed: `steps` and `false` are read as values, not as text that is set
    recipe = load_recipe(raw, ["training.eval_strategy=steps", "training.fp16=false"])
    assert recipe.training.eval_steps == 0.25 and recipe.training.save_steps == 0.25
    assert recipe.training.fp16 is False
    applied = {d.field for d in recipe.defaults}
    assert "eval_steps" in applied and "eval_strategy" not in applied and "fp16" not in applied
    recipe = load_recipe(raw, ["training.save_strategy=no"])
    assert recipe.training.save_total_limit is None


def test_checkpoints_fall_on_the_recipes_own_evaluations(tiny_model_dir, tmp_path):
    """`load_best_model_at_end` needs a checkpoint at each evaluation: with `eval_steps: 15` of the recipe's own,
    the default checkpoint cadence is 15 steps too (not 25% of the steps, which the Trainer would refuse)."""
    files = write_sentiment_files(tmp_path)
    raw = _minimal(tiny_model_dir, files, tmp_path / "out", eval_steps=15, load_best_model_at_end=True)
    recipe = load_recipe(raw)
    assert recipe.training.save_steps == 15 and recipe.training.load_best_model_at_end


def test_a_saved_recipe_loads_as_it_trained(tiny_model_dir, tmp_path, monkeypatch):
    """recipe.yaml records the defaults a run got: `eval`, `predict` and `--resume` read it without adding
    this machine's (a run trained where bf16 is emulated stays fp32 when evaluated where it is native)."""
    from hf_finetune import hardware
    from hf_finetune.pipeline import recipe_differences

    files = write_sentiment_files(tmp_path)
    raw = _minimal(tiny_model_dir, files, tmp_path / "out")
    monkeypatch.setattr(hardware, "accelerator", lambda: None)
    monkeypatch.setattr(hardware, "cpu_has_native", lambda dtype: False)  # trained where bf16 is emulated
    trained = load_recipe(raw)
    assert not trained.training.bf16
    saved = tmp_path / "recipe.yaml"
    trained.save(saved)
    assert recipe_differences(saved, load_recipe(raw)) == []
    monkeypatch.setattr(hardware, "cpu_has_native", lambda dtype: dtype == "bf16")  # now where it is native
    assert load_recipe(raw).training.bf16  # a new run here gets bf16
    again = load_recipe(saved, defaults=False)
    assert not again.training.bf16 and again.defaults == ()
    assert again.training.per_device_train_batch_size == 32  # the defaults it recorded


def test_no_evaluation_split_no_evaluation_default(tiny_model_dir, tmp_path):
    files = write_sentiment_files(tmp_path)
    raw = _minimal(tiny_model_dir, {"train": files["train"]}, tmp_path / "out")
    raw["data"]["eval_split"] = None
    recipe = load_recipe(raw)
    assert str(recipe.training.eval_strategy.value) == "no"
    assert "eval_strategy" not in {d.field for d in recipe.defaults}


def test_an_adapter_gets_an_adapter_learning_rate(tiny_model_dir, tmp_path):
    files = write_sentiment_files(tmp_path)
    raw = _minimal(tiny_model_dir, files, tmp_path / "out")
    raw["peft"] = {"method": "lora", "target_modules": ["query", "value"]}
    assert load_recipe(raw).training.learning_rate == ADAPTER_LR
    raw["training"]["learning_rate"] = 2e-4
    assert load_recipe(raw).training.learning_rate == 2e-4


def test_bf16_only_where_the_hardware_computes_it(monkeypatch):
    from hf_finetune import hardware

    assert {d.field: d.value for d in training_defaults({}, True, bf16_native=True)}["bf16"] is True
    assert "bf16" not in {d.field for d in training_defaults({}, True, bf16_native=False)}
    assert "bf16" not in {d.field for d in training_defaults({"fp16": True}, True, bf16_native=True)}
    assert "bf16" not in {d.field for d in training_defaults({"bf16": False}, True, bf16_native=True)}
    # no GPU: the CPU's own instructions decide (AVX512-BF16/AMX compute it, an AVX2-only CPU would emulate it)
    monkeypatch.setattr(hardware, "accelerator", lambda: None)
    for native in (True, False):
        monkeypatch.setattr(
            hardware, "cpu_has_native", lambda dtype, native=native: native and dtype == "bf16"
        )
        assert ("bf16" in {d.field for d in training_defaults({}, True)}) is native


def test_early_stopping_adapts_the_defaults_and_validate_says_which_applied(tiny_model_dir, tmp_path):
    files = write_sentiment_files(tmp_path)
    raw = _minimal(tiny_model_dir, files, tmp_path / "out", early_stopping=True)
    recipe = load_recipe(raw)
    # early stopping evaluates every 10% and saves at each evaluation: the 25% defaults give way
    assert recipe.training.eval_steps == 0.1 and recipe.training.save_steps == 0.1
    applied = {d.field for d in recipe.defaults}
    assert "eval_steps" not in applied and "save_steps" not in applied
    summary = validate(recipe)
    line = summary["training_defaults"]
    assert "train_sampling_strategy=group_by_length" in line and "per_device_train_batch_size=32" in line
    assert "eval_steps" not in line
    assert "training_defaults" not in validate(load_recipe(recipe.to_dict()))


def test_the_reference_shows_the_package_defaults():
    rows = {name: (default, text) for name, _, default, text in reference.rows("training")}
    for name, default in documented_defaults().items():
        shown, text = rows[name]
        assert shown == reference._yaml_inline(default.value), name
        assert "hf-finetune's default" in text and "transformers' default" in text, name
    assert rows["per_device_train_batch_size"][0] == "32"
    assert "transformers' default: 8" in rows["per_device_train_batch_size"][1]


def test_a_minimal_recipe_trains_with_curves_to_plot(tiny_model_dir, tmp_path):
    """The new user's finding: transformers' defaults log a loss every 500 steps and never evaluate, so a run
    of a few hundred steps drew an empty loss panel. With the package defaults it logs about 50 losses and
    evaluates 4 times, and it learns."""
    files = write_sentiment_files(tmp_path)
    out = tmp_path / "out"
    raw = _minimal(tiny_model_dir, files, out, num_train_epochs=8, learning_rate=3e-3, use_cpu=True)
    metrics = train(load_recipe(raw))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    evaluations = [h for h in history if "eval_accuracy" in h and "train_runtime" not in h]
    steps = 8 * 10  # 320 rows in batches of 32
    assert len(losses) >= steps // 2  # a loss every 2% of 80 steps rounds up to every 2 steps
    assert len(evaluations) >= 4
    assert losses[-1] < losses[0]
    assert metrics["eval_accuracy"] > 0.8
    saved = yaml.safe_load((out / "recipe.yaml").read_text())["training"]
    assert saved["train_sampling_strategy"] == "group_by_length" and saved["save_total_limit"] == 2
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert len(kept) <= 2, kept
