"""The command line (a table of commands; options and overrides in any order), the bundled files it lists,
and dynamic padding in the collator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_finetune import catalog, cli
from hf_finetune.config.load import load_recipe
from hf_finetune.pipeline import make_task

from .conftest import tiny_recipe, write_recipe, write_sentiment_files

GLUE = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def listed_by_kind(text: str) -> dict[str, dict[str, str]]:
    """`hf-finetune recipes` output -> {section title: {name: line}} (sections are blank-line separated)."""
    sections: dict[str, dict[str, str]] = {}
    title = None
    for line in text.splitlines():
        if not line.strip():
            title = None
        elif title is None:
            title = line
            sections[title] = {}
        else:
            sections[title][line.split()[0]] = line
    return sections


def test_console_script_lists_every_bundled_recipe_with_a_description():
    beside = Path(sys.executable).parent / "hf-finetune"  # the environment running the tests
    exe = str(beside) if beside.is_file() else shutil.which("hf-finetune")
    assert exe, "the `hf-finetune` console script is not installed"
    proc = subprocess.run([exe, "recipes"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sections = listed_by_kind(proc.stdout)
    lines = sections[catalog.TITLES[catalog.RECIPE]]
    for name in GLUE:
        assert f"glue/{name}" in lines
        assert "(GLUE)" in lines[f"glue/{name}"]


def test_recipes_are_listed_by_kind_and_filtered_by_kind(capsys):
    assert cli.main(["recipes"]) == 0
    sections = listed_by_kind(capsys.readouterr().out)
    assert list(sections)[:4] == list(catalog.TITLES.values())  # every kind, in order; then the footer
    recipes, bench, spaces, accelerate = (sections[catalog.TITLES[k]] for k in catalog.TITLES)
    assert {"glue/sst2", "ner/conll2003", "qa/squad"} <= set(recipes)
    assert not any(name.startswith(("bench/", "tune/", "accelerate/")) for name in recipes)
    assert set(bench) == {"bench/few-shot", "bench/glue-quick"}
    assert {"tune/default-space", "tune/pairs-space"} == set(spaces)
    assert {"accelerate/cpu-2proc", "accelerate/fsdp"} <= set(accelerate)
    assert all(len(line.split()) > 1 for line in accelerate.values())  # each with its description

    assert cli.main(["recipes", "--kind", "space"]) == 0
    only = listed_by_kind(capsys.readouterr().out)
    assert set(only[catalog.TITLES[catalog.SPACE]]) == set(spaces)
    assert catalog.TITLES[catalog.RECIPE] not in only


def test_catalog_entries_and_names_resolve_with_or_without_their_folder():
    kinds = {e.name: e.kind for e in catalog.entries()}
    assert kinds["glue/rte"] == catalog.RECIPE and kinds["bench/glue-quick"] == catalog.BENCH
    assert kinds["tune/default-space"] == catalog.SPACE and kinds["accelerate/fsdp"] == catalog.ACCELERATE
    assert [e.name for e in catalog.entries(catalog.SPACE)] == ["tune/default-space", "tune/pairs-space"]
    assert catalog.resolve("pairs-space", catalog.SPACE).endswith("recipes/tune/pairs-space.yaml")
    assert catalog.resolve("tune/pairs-space", catalog.SPACE).endswith("recipes/tune/pairs-space.yaml")
    assert catalog.resolve("glue-quick", catalog.BENCH).endswith("recipes/bench/glue-quick.yaml")
    assert catalog.resolve("no/such-recipe") == "no/such-recipe"  # for the loader to report


def test_tasks_command(capsys):
    assert cli.main(["tasks"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    # tests/test_add_a_task.py registers a toy task in every process that collects it: listed too, last
    builtin = [n for n in names if n != "toy-polarity"]
    assert builtin == ["question-answering", "text-classification", "token-classification"]


def test_bundled_recipe_names_resolve():
    assert catalog.resolve("glue/rte").endswith("recipes/glue/rte.yaml")


def test_train_requires_a_recipe_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train"])
    assert exit_info.value.code == 2
    assert "required: recipe\n" in capsys.readouterr().err  # the recipe alone: overrides are optional


def test_every_command_of_the_table_has_a_parser_and_is_listed_in_the_help(capsys):
    names = [command.name for command in cli.COMMANDS]
    assert names == [
        "init", "train", "validate", "plan", "eval", "predict", "export", "push", "bench", "tune", "recipes",
        "tasks",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command.name in usage
        with pytest.raises(SystemExit):
            cli.main([command.name, "--help"])
        assert f"usage: hf-finetune {command.name}" in capsys.readouterr().out


def test_global_options_before_or_after_the_command():
    for argv in (["-v", "--debug", "tasks"], ["tasks", "--debug", "-v"], ["--debug", "tasks", "--verbose"]):
        args = cli.parse_args(argv)
        assert (args.command, args.verbose, args.debug) == ("tasks", True, True)
    assert (cli.parse_args(["tasks"]).verbose, cli.parse_args(["tasks"]).debug) == (False, False)


# Every command that takes dotted overrides: the same line with overrides after an option and before it
# parses to the same arguments (positional arguments keep their order: the recipe, then the overrides).
OVERRIDE_ORDERS = {
    "train": [
        ["train", "R", "--output-dir", "D", "a.b=1", "--resume", "c.d=x"],
        ["train", "--resume", "R", "a.b=1", "--output-dir", "D", "c.d=x"],
    ],
    "validate": [
        ["validate", "R", "--json", "a.b=1", "c.d=x"],
        ["validate", "R", "a.b=1", "--json", "c.d=x"],
    ],
    "plan": [["plan", "--json", "R", "a.b=1", "c.d=x"], ["plan", "R", "a.b=1", "c.d=x", "--json"]],
    "eval": [
        ["eval", "OUT", "--split", "test", "a.b=1", "--batch-size", "8", "c.d=x"],
        ["eval", "OUT", "a.b=1", "c.d=x", "--split", "test", "--batch-size", "8"],
    ],
    "bench": [
        ["bench", "glue-quick", "--no-progress", "a.b=1", "c.d=x"],
        ["bench", "glue-quick", "a.b=1", "--no-progress", "c.d=x"],
    ],
    "tune": [
        # the README's own example
        ["tune", "R", "--space", "S", "--budget-minutes", "30", "a.b=1", "c.d=x", "--trial-seeds", "1", "2"],
        ["tune", "--trial-seeds", "1", "2", "--space", "S", "R", "a.b=1", "--budget-minutes", "30", "c.d=x"],
    ],
}


@pytest.mark.parametrize("command", sorted(OVERRIDE_ORDERS))
def test_overrides_before_and_after_options_parse_the_same(command):
    after, before = (vars(cli.parse_args(argv)) for argv in OVERRIDE_ORDERS[command])
    assert after == before
    assert after["command"] == command
    assert after["overrides"] == ["a.b=1", "c.d=x"]
    assert after.get("recipe", after.get("output_dir", after.get("bench_file"))) in ("R", "OUT", "glue-quick")


def test_the_commands_that_take_overrides_are_all_covered():
    takes = {c.name for c in cli.COMMANDS if "overrides" in vars(cli.parse_args(_minimal(c.name)))}
    assert takes == set(OVERRIDE_ORDERS)


def _minimal(name: str) -> list[str]:
    """The shortest valid command line of each command."""
    return {
        "init": ["init", "F"],
        "train": ["train", "R"],
        "validate": ["validate", "R"],
        "plan": ["plan", "R"],
        "eval": ["eval", "OUT"],
        "predict": ["predict", "OUT", "--input", "i", "--output", "o"],
        "export": ["export", "OUT", "--merge", "--output", "o"],
        "push": ["push", "OUT", "--repo-id", "u/r"],
        "bench": ["bench", "--calibrate"],
        "tune": ["tune", "R"],
    }.get(name, [name])


def test_a_list_of_seeds_ends_at_the_next_option_and_says_so_when_an_override_follows(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["tune", "R", "--confirm-seeds", "1", "2", "a.b=1"])
    assert exit_info.value.code == 2
    assert "'a.b=1' is not a seed" in capsys.readouterr().err
    args = cli.parse_args(["tune", "R", "--confirm-seeds", "1", "2", "--", "a.b=1"])
    assert (args.confirm_seeds, args.overrides) == ([1, 2], ["a.b=1"])


@pytest.fixture()
def tiny_recipe_file(tiny_model_dir, tmp_path) -> str:
    files = write_sentiment_files(tmp_path / "data")
    return write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tiny_model_dir, files, tmp_path / "out"))


@pytest.mark.parametrize("override_first", [False, True], ids=["override-after-json", "override-before-json"])
def test_validate_takes_overrides_after_and_before_its_options(tiny_recipe_file, override_first, capsys):
    argv = ["validate", tiny_recipe_file, "--json", "data.max_train_samples=10"]
    if override_first:
        argv = ["validate", tiny_recipe_file, "data.max_train_samples=10", "--json"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"] == 10  # the override took effect (the file has 320 rows)


@pytest.mark.parametrize("override_first", [False, True], ids=["override-after-json", "override-before-json"])
def test_plan_takes_overrides_after_and_before_its_options(tiny_recipe_file, override_first, capsys):
    argv = ["plan", tiny_recipe_file, "--json", "strategy.freeze_layers=1", "training.learning_rate=0.25"]
    if override_first:
        argv = ["plan", tiny_recipe_file, "strategy.freeze_layers=1", "--json", "training.learning_rate=0.25"]
    assert cli.main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {g["lr"] for g in plan["groups"] if g["trainable"]} == {0.25}
    assert any(not g["trainable"] for g in plan["groups"])  # strategy.freeze_layers=1 froze something


def test_batches_are_padded_to_their_longest_example_not_max_seq_length(
    tiny_model_dir, sentiment_files, tmp_path
):
    from transformers import AutoTokenizer

    recipe = load_recipe(tiny_recipe(tiny_model_dir, sentiment_files, tmp_path, data={"max_seq_length": 128}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    collate = make_task(recipe).data_collator(tokenizer, recipe.training)
    features = [
        dict(tokenizer("a short one"), labels=0),
        dict(tokenizer("a somewhat longer sentence here"), labels=1),
    ]
    batch = collate(features)
    longest = max(len(f["input_ids"]) for f in features)
    assert batch["input_ids"].shape == (2, longest) and longest < 128
    assert batch["attention_mask"][0].sum() == len(features[0]["input_ids"])
