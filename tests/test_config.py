"""Recipes: YAML parsing, typed overrides, unknown keys, wrong types, round trip, bundled recipes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from hf_finetune.config.load import load_recipe
from hf_finetune.errors import RecipeError

from .conftest import REPO

RECIPES = sorted((REPO / "recipes" / "glue").glob("*.yaml"))
GLUE_TASKS = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
BASE = {
    "task": {"name": "text-classification", "text_column": "sentence"},
    "data": {"dataset": "glue", "config": "sst2"},
    "training": {"output_dir": "runs/x"},
}


def test_all_glue_recipes_are_bundled():
    assert {p.stem.split("_")[0] for p in RECIPES} == GLUE_TASKS
    # <task>_<strategy>.yaml: the same task with a strategy or peft section
    assert {p.stem for p in RECIPES if "_" in p.stem} == {
        "sst2_freeze",
        "sst2_llrd",
        "sst2_gradual",
        "sst2_probe",
        "sst2_lora",
        "sst2_distill",
        "sst2_setfit",
    }


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_bundled_recipe_loads_and_documents_its_launch_command(path: Path):
    recipe = load_recipe(path)
    header = path.read_text().splitlines()[:4]
    assert any(f"hf-finetune train recipes/glue/{path.name}" in line for line in header), header
    assert recipe.model.name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    assert recipe.data.dataset == "glue" and recipe.data.config == path.stem.split("_")[0]
    # the base recipes fine-tune every layer (SST-2 gives its new classifier a 10x learning rate);
    # the variants (sst2_freeze, ...) apply a strategy or a PEFT method
    full = (
        dataclasses.replace(recipe.strategy, head_lr_multiplier=1.0).is_default
        and not recipe.peft.enabled
        and not recipe.few_shot.enabled  # sst2_setfit: SetFit, not fine-tuning
    )
    assert full == ("_" not in path.stem)
    # the distilled student (sst2_distill) trains with the demo's settings, its 10x head included
    assert recipe.strategy.head_lr_multiplier == (10.0 if path.stem in ("sst2", "sst2_distill") else 1.0)
    if path.stem == "stsb":
        assert recipe.task.num_labels == 1
    else:
        assert recipe.task.labels, "GLUE recipes name their labels so the Hub and the mirror agree"


def test_overrides_are_typed_by_the_field():
    recipe = load_recipe(
        BASE,
        [
            "training.learning_rate=3e-5",
            "data.max_train_samples=4000",
            "training.eval_strategy=no",
            "training.per_device_train_batch_size=16",
            "task.labels=[neg, pos]",
            "training.run_name=123",
            "data.eval_split=[a, b]",
        ],
    )
    assert recipe.training.learning_rate == pytest.approx(3e-5)
    assert isinstance(recipe.training.learning_rate, float)
    assert recipe.data.max_train_samples == 4000
    assert recipe.training.eval_strategy == "no"
    assert recipe.training.per_device_train_batch_size == 16
    assert recipe.task.labels == ["neg", "pos"]
    assert recipe.training.run_name == "123"  # a text field keeps the text as typed
    assert recipe.data.eval_splits == ["a", "b"]


def test_yaml_reads_scientific_floats_and_yaml11_words_as_text(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "task: {name: text-classification}\ndata: {dataset: glue}\n"
        "training: {output_dir: x, learning_rate: 3e-5, eval_strategy: no, save_strategy: 'no'}\n"
    )
    recipe = load_recipe(path)
    assert recipe.training.learning_rate == pytest.approx(3e-5)
    assert recipe.training.eval_strategy == "no"


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ("training.learning_rat=1e-4", "training.learning_rat", "did you mean: learning_rate"),
        ("data.max_train_sample=10", "data.max_train_sample", "did you mean: max_train_samples"),
        ("model.name=bert", "model.name", "did you mean: name_or_path"),
        ("training.learning_rate=fast", "training.learning_rate", "expected a number"),
        ("data.max_train_samples=1.5", "data.max_train_samples", "expected an integer"),
        (
            "training.per_device_train_batch_size=[1]",
            "training.per_device_train_batch_size",
            "expected an integer",
        ),
        ("training.lr_scheduler_type=cosin", "training.lr_scheduler_type", "did you mean: cosine"),
        ("task.problem_type=regresion", "task.problem_type", "regression"),
        ("trainin.seed=1", "trainin", "did you mean: training"),
        ("data.max_seq_length=0", "data.max_seq_length", "positive integer"),
        ("task.metric=acuracy", "task.metric", "did you mean: accuracy"),
    ],
)
def test_bad_fields_name_the_field_and_the_fix(override, field, fragment):
    with pytest.raises(RecipeError) as err:
        load_recipe(BASE, [override])
    assert f"`{field}`" in str(err.value)
    assert fragment in str(err.value)


def test_unknown_key_in_yaml_file_fails_with_close_matches(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: {name: text-classification, text_colum: sentence}\ndata: {dataset: glue}\n")
    with pytest.raises(RecipeError, match=r"`task.text_colum`: unknown field \(did you mean: text_column"):
        load_recipe(path)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("task:\n  name: text-classification\n data: [unclosed\n")
    with pytest.raises(RecipeError, match=r"broken.yaml: YAML syntax error at line \d+"):
        load_recipe(path)


def test_unknown_task_lists_the_tasks():
    with pytest.raises(
        RecipeError,
        match=r"`task.name`: unknown task 'text-clasification' \(did you mean: text-classification",
    ):
        load_recipe({**BASE, "task": {"name": "text-clasification"}})


def test_trainer_argument_conflicts_are_reported_under_training():
    with pytest.raises(RecipeError, match=r"^`training`: .*"):
        load_recipe(
            BASE,
            [
                "training.load_best_model_at_end=true",
                "training.eval_strategy=steps",
                "training.save_strategy=epoch",
            ],
        )


def test_tokens_are_refused_in_recipes():
    with pytest.raises(RecipeError, match=r"`training.hub_token`: a token in a recipe .* HF_TOKEN"):
        load_recipe(BASE, ["training.hub_token=secret-value"])


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(BASE, ["training.learning_rate=3e-5", "data.max_train_samples=100"])
    path = tmp_path / "recipe.yaml"
    recipe.save(path)
    text = path.read_text()
    again = load_recipe(path)
    assert again.to_dict() == recipe.to_dict()
    assert again.training.learning_rate == pytest.approx(3e-5)
    assert yaml.safe_load(text)["data"]["max_train_samples"] == 100


def test_default_output_dir_comes_from_recipe_name(tmp_path):
    path = tmp_path / "my-run.yaml"
    path.write_text("data: {dataset: glue, config: sst2}\ntask: text-classification\n")
    assert Path(load_recipe(path).training.output_dir) == Path("runs/my-run")


def test_mixed_precision_without_accelerator_runs_on_cpu_and_stays_portable(monkeypatch, caplog):
    from hf_finetune import hardware

    monkeypatch.setattr(hardware, "accelerator_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_native", lambda dtype: True)
    monkeypatch.setattr(hardware, "LOGGED_ONCE", set())
    with caplog.at_level("INFO", logger="hf_finetune"):
        recipe = load_recipe(BASE, ["training.bf16=true"])
        load_recipe(BASE, ["training.bf16=true", "training.seed=1"])  # tune loads a recipe per candidate
    assert recipe.training.bf16 and recipe.training.use_cpu
    assert caplog.text.count("bf16 autocast runs on the CPU") == 1  # said once per process
    assert (
        "use_cpu" not in recipe.to_dict()["training"]
    )  # the saved recipe still uses a GPU where there is one
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(
        RecipeError, match=r"^`training`: .*use_cpu"
    ):  # an explicit setting is never overridden
        load_recipe(BASE, ["training.bf16=true", "training.use_cpu=false"])


def test_mixed_precision_on_a_cpu_without_native_instructions_trains_in_fp32(monkeypatch, caplog):
    """Emulated bf16 is far slower than fp32 on such CPUs: the run falls back to fp32 and says so; the
    saved recipe keeps bf16 for a GPU, and an explicit use_cpu=true forces autocast on the CPU."""
    from hf_finetune import hardware

    monkeypatch.setattr(hardware, "accelerator_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_native", lambda dtype: False)
    # the warning comes once per process: an earlier test on a CPU without bf16 may already have had it
    monkeypatch.setattr(hardware, "LOGGED_ONCE", set())
    with caplog.at_level("WARNING", logger="hf_finetune"):
        recipe = load_recipe(BASE, ["training.bf16=true"])
        load_recipe(BASE, ["training.bf16=true", "training.learning_rate=1e-3"])
    assert not recipe.training.bf16 and not recipe.training.use_cpu
    assert caplog.text.count("training.bf16: no accelerator, and this CPU has no native bf16") == 1
    assert recipe.to_dict()["training"]["bf16"] is True
    forced = load_recipe(BASE, ["training.bf16=true", "training.use_cpu=true"])
    assert forced.training.bf16 and forced.training.use_cpu


@pytest.mark.skipif(
    not Path("/proc/cpuinfo").exists() or __import__("platform").machine() != "x86_64", reason="x86 Linux"
)
def test_native_bf16_detection_matches_the_cpu_flags():
    from hf_finetune.hardware import cpu_has_native

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert cpu_has_native("bf16") == bool({"avx512_bf16", "amx_tile"} & flags)
