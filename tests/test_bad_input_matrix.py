"""The bad-input matrix: recipe, data, model, output-dir and CLI mistakes, one row each.

Every row runs the real CLI (`cli.main`) and must: exit with code 2; print exactly one
`hf-finetune: error:` line that contains the expected text (which names the field or file and the fix);
print no traceback; load no weights (conftest.no_weights); and leave every file that existed before
untouched, the output directory included (a row that points at a finished run checks that it survives).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hf_finetune import cli

from .conftest import minilm_path, sentiment_rows, tiny_recipe, write_jsonl, write_recipe
from .test_question_answering import qa_recipe, qa_row
from .test_token_classification import ner_recipe, ner_rows


@pytest.fixture(autouse=True)
def _every_test_refuses_weights(no_weights):
    """No row may load weights: each error comes before that."""


@dataclass
class Ctx:
    tmp: Path
    model: Path
    files: dict[str, str]

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def recipe(self, **sections) -> dict:
        return tiny_recipe(self.model, self.files, self.out, **sections)

    def write(self, recipe: dict, name: str = "recipe.yaml") -> str:
        return write_recipe(self.tmp / name, recipe)

    def train(self, recipe: dict, *extra: str) -> list[str]:
        return ["train", self.write(recipe), *extra]

    def file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def finished_run(self, recipe: dict) -> None:
        """An output dir as a finished run of ``recipe`` leaves it (no training needed for the guard)."""
        from hf_finetune.config.load import load_recipe

        self.out.mkdir(parents=True, exist_ok=True)
        load_recipe(recipe).save(self.out / "recipe.yaml")
        (self.out / "config.json").write_text("{}")
        (self.out / "model.safetensors").write_bytes(b"weights of an earlier run")


@dataclass
class Row:
    id: str
    make: Callable[[Ctx], list[str]]  # sets up files in ctx.tmp, returns the CLI arguments
    expected: str


def _with(recipe: dict, section: str, **values) -> dict:
    recipe.setdefault(section, {}).update(values)
    return recipe


def _drop(recipe: dict, section: str, key: str) -> dict:
    recipe[section].pop(key)
    return recipe


def _ner(c: Ctx, rows: list[dict], **task) -> list[str]:
    files = {"train": str(write_jsonl(c.tmp / "ner.jsonl", rows))}
    return c.train(ner_recipe(c.model, files, c.out, **task))


def _qa(c: Ctx, rows: list[dict]) -> list[str]:
    files = {"train": str(write_jsonl(c.tmp / "qa.jsonl", rows)), "validation": str(c.tmp / "qa.jsonl")}
    return c.train(qa_recipe(c.model, files, c.out))


def _ner_length_mismatch(c: Ctx) -> list[str]:
    rows = ner_rows(10, seed=1)
    rows[4]["ner_tags"] = rows[4]["ner_tags"][:-1]
    return _ner(c, rows)


def _ner_not_iob(c: Ctx) -> list[str]:
    rows = ner_rows(10, seed=1)
    rows[2]["ner_tags"][0] = "PERSON"
    return _ner(c, rows)


def _qa_bad_offset(c: Ctx) -> list[str]:
    return _qa(c, [qa_row(0), qa_row(1, start=3), qa_row(2)])


def _qa_malformed(c: Ctx) -> list[str]:
    row = qa_row(1)
    row["answers"] = {"text": ["a", "b"], "answer_start": [0]}
    return _qa(c, [qa_row(0), row])


def _slow_tokenizer_for_ner(c: Ctx) -> list[str]:
    from transformers import BertTokenizerLegacy

    slow = c.tmp / "slow-tokenizer"
    BertTokenizerLegacy(vocab_file=str(minilm_path() / "vocab.txt")).save_pretrained(slow)
    recipe = ner_recipe(c.model, {"train": str(write_jsonl(c.tmp / "ner.jsonl", ner_rows(10, 1)))}, c.out)
    recipe["model"]["tokenizer_name_or_path"] = str(slow)
    return c.train(recipe)


def _model_copy(c: Ctx, weights: dict[str, bytes]) -> str:
    """The tiny model's config and tokenizer in a new dir, with the given weight files instead of its own."""
    import shutil

    target = c.tmp / "model-copy"
    shutil.copytree(c.model, target, ignore=shutil.ignore_patterns("*.safetensors"))
    for name, data in weights.items():
        (target / name).write_bytes(data)
    return str(target)


def _remote_code(c: Ctx) -> list[str]:
    target = Path(_model_copy(c, {"model.safetensors": b""}))
    config = json.loads((target / "config.json").read_text())
    config.update(model_type="my-custom-bert", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (target / "config.json").write_text(json.dumps(config))
    (target / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    tokenizer_config = json.loads((target / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    tokenizer_config["tokenizer_class"] = "CustomTokenizer"
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return c.train(_with(c.recipe(), "model", name_or_path=str(target)))


def _different_run(c: Ctx) -> list[str]:
    c.finished_run(c.recipe())
    return c.train(c.recipe(), "training.learning_rate=1e-3")


def _checkpoints_without_resume(c: Ctx) -> list[str]:
    c.finished_run(c.recipe())
    (c.out / "checkpoint-4").mkdir()
    (c.out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    return c.train(c.recipe())


def _not_a_run(c: Ctx) -> list[str]:
    c.out.mkdir()
    (c.out / "notes.txt").write_text("my own notes")
    return c.train(c.recipe())


def _output_is_a_file(c: Ctx) -> list[str]:
    c.out.write_text("not a directory")
    return c.train(c.recipe())


def _only_train(c: Ctx, **data) -> dict:
    return _with(c.recipe(), "data", files={"train": c.files["train"]}, **data)


def _mirror_with_validation(c: Ctx) -> list[str]:
    for split, path in c.files.items():
        (c.tmp / "mirror" / "mine").mkdir(parents=True, exist_ok=True)
        (c.tmp / "mirror" / "mine" / f"{split}.jsonl").write_text(Path(path).read_text())
    recipe = _drop(c.recipe(), "data", "files")
    return c.train(_with(recipe, "data", dataset="mine", mirror=str(c.tmp / "mirror"), validation_size=0.1))


def _init_file(c: Ctx, name: str = "reviews.csv") -> str:
    lines = ["review,summary,stars,sentiment"] + [
        f"the plot of film {i} was fine and the acting good,a summary of review {i} here,{1 + i % 5},"
        f"{'positive' if i % 2 else 'negative'}"
        for i in range(40)
    ]
    return c.file(name, "\n".join(lines) + "\n")


def _init_output_exists(c: Ctx) -> list[str]:
    data = _init_file(c)
    return ["init", data, "--label-column", "sentiment", "--output", c.file("mine.yaml", "my recipe\n")]


def _eval_not_a_run(c: Ctx) -> list[str]:
    (c.tmp / "somewhere").mkdir()
    return ["eval", str(c.tmp / "somewhere")]


def _predict_missing_input(c: Ctx) -> list[str]:
    c.finished_run(c.recipe())
    return ["predict", str(c.out), "--input", str(c.tmp / "nope.jsonl"), "--output", str(c.tmp / "p.jsonl")]


ROWS = [
    # ---- recipe ---------------------------------------------------------------------------------
    Row(
        "yaml-syntax",
        lambda c: ["train", c.file("r.yaml", "task:\n  name: [oops\n")],
        "YAML syntax error at line",
    ),
    Row(
        "yaml-not-a-mapping", lambda c: ["train", c.file("r.yaml", "- task\n- model\n")], "expected a mapping"
    ),
    Row("missing-recipe-file", lambda c: ["train", str(c.tmp / "missing.yaml")], "recipe file not found"),
    Row(
        "unknown-section",
        lambda c: ["train", c.file("r.yaml", yaml.safe_dump({"trainng": {"seed": 1}}))],
        "`trainng`: unknown recipe section (did you mean: training",
    ),
    Row(
        "unknown-key",
        lambda c: c.train(_with(c.recipe(), "data", max_train_sampels=10)),
        "`data.max_train_sampels`: unknown field (did you mean: max_train_samples",
    ),
    Row(
        "unknown-task",
        lambda c: c.train(_with(c.recipe(), "task", name="text-clasification")),
        "text-classification",
    ),
    Row(
        "wrong-type",
        lambda c: c.train(c.recipe(), "training.num_train_epochs=many"),
        "`training.num_train_epochs`: expected a number, got 'many'",
    ),
    Row(
        "negative-learning-rate",
        lambda c: c.train(c.recipe(), "training.learning_rate=-1e-5"),
        "`training.learning_rate`: must be positive",
    ),
    Row(
        "max-steps-zero",
        lambda c: c.train(c.recipe(), "training.max_steps=0"),
        "`training.max_steps`: trains nothing",
    ),
    Row(
        "batch-size-zero",
        lambda c: c.train(c.recipe(), "training.per_device_train_batch_size=0"),
        "`training.per_device_train_batch_size`: must be at least 1",
    ),
    Row(
        "token-in-recipe",
        lambda c: c.train(c.recipe(), "training.hub_token=hf_abc"),
        "`training.hub_token`: a token in a recipe",
    ),
    Row(
        "llrd-out-of-range",
        lambda c: c.train(_with(c.recipe(), "strategy", layerwise_lr_decay=1.5)),
        "`strategy.layerwise_lr_decay`: must be in (0, 1]",
    ),
    Row(
        "peft-with-freezing",
        lambda c: c.train(_with(_with(c.recipe(), "peft", method="lora"), "strategy", freeze_layers=2)),
        "`strategy.freeze_layers`: has no effect with `peft.method: lora`",
    ),
    Row(
        "config-override-typo",
        lambda c: c.train(c.recipe(), "model.config_overrides.hiden_dropout_prob=0"),
        "`model.config_overrides.hiden_dropout_prob`: BertConfig has no attribute",
    ),
    Row(
        "push-without-repo-id",
        lambda c: c.train(_with(c.recipe(), "hub", push=True)),
        "`hub.repo_id`",
    ),
    Row(
        "resume-from-non-checkpoint",
        lambda c: c.train(c.recipe(), "--resume-from", str(c.tmp)),
        "`training.resume`: ",
    ),
    # ---- command line -------------------------------------------------------------------------------
    Row(
        "override-without-equals",
        lambda c: c.train(c.recipe(), "training.seed"),
        "override 'training.seed' is not `section.field=value`",
    ),
    Row(
        "override-of-missing-section",
        lambda c: c.train(c.recipe(), "trainer.learning_rate=1e-5"),
        "`trainer`: unknown recipe section (did you mean: training",
    ),
    Row(
        "override-of-a-value-as-section",
        lambda c: c.train(c.recipe(), "training.seed.x=1"),
        "`training.seed`: is not a mapping",
    ),
    Row(
        "resume-and-resume-from",
        lambda c: c.train(c.recipe(), "--resume", "--resume-from", str(c.tmp)),
        "--resume and --resume-from: give one of the two",
    ),
    Row("eval-of-a-non-run", _eval_not_a_run, "not an hf-finetune output directory"),
    Row(
        "init-two-label-columns",
        lambda c: ["init", _init_file(c), "--output", str(c.tmp / "new.yaml")],
        "two columns could be the label: stars, sentiment. Say which with --label-column.",
    ),
    Row(
        "init-unknown-column",
        lambda c: ["init", _init_file(c), "--label-column", "rating", "--output", str(c.tmp / "new.yaml")],
        "has no column 'rating'; its columns are: review, summary, stars, sentiment.",
    ),
    Row("init-output-exists", _init_output_exists, "mine.yaml exists; pass --force to overwrite it"),
    Row(
        "init-unsupported-file",
        lambda c: ["init", c.file("data.xlsx", "x\n"), "--output", str(c.tmp / "new.yaml")],
        "`DATA_FILE`: ",
    ),
    Row("predict-missing-input", _predict_missing_input, "nope.jsonl"),
    # ---- data -----------------------------------------------------------------------------------------
    Row(
        "missing-data-file",
        lambda c: c.train(
            _with(c.recipe(), "data", files={**c.files, "validation": str(c.tmp / "nope.jsonl")})
        ),
        "`data.files.validation`: file not found:",
    ),
    Row(
        "unsupported-extension",
        lambda c: c.train(_with(c.recipe(), "data", files={**c.files, "train": c.file("t.xlsx", "x\n")})),
        "has the unsupported extension '.xlsx'",
    ),
    Row(
        "unreadable-file",
        lambda c: c.train(
            _with(c.recipe(), "data", files={**c.files, "train": c.file("t.jsonl", "{oops\n")})
        ),
        "`data.files.train`: could not read",
    ),
    Row(
        "wrong-column",
        lambda c: c.train(_with(c.recipe(), "task", text_column="review")),
        "`task.text_column`: column 'review' not found in the train split",
    ),
    Row(
        "numbers-as-text",
        lambda c: c.train(_with(c.recipe(), "task", text_column="idx")),
        "`task.text_column`: column 'idx' in the train split holds int64 values, not text",
    ),
    Row(
        "unseen-label",
        lambda c: c.train(
            _with(
                c.recipe(),
                "data",
                files={
                    "train": str(write_jsonl(c.tmp / "t.jsonl", sentiment_rows(40, 6, as_names=True))),
                    "validation": str(
                        write_jsonl(
                            c.tmp / "v.jsonl",
                            [
                                *sentiment_rows(5, 5, as_names=True),
                                {"idx": 9, "sentence": "meh", "label": "neutral"},
                            ],
                        )
                    ),
                },
            )
        ),
        "label values in the validation split (column 'label') not in the label list",
    ),
    Row(
        "label-id-beyond-labels",
        lambda c: c.train(
            _with(
                _with(c.recipe(), "task", labels=["neg", "pos"]),
                "data",
                files={
                    **c.files,
                    "train": str(write_jsonl(c.tmp / "t.jsonl", [{"sentence": "x", "label": 5}])),
                },
            )
        ),
        "5 (row 0)",
    ),
    Row(
        "empty-split",
        lambda c: c.train(
            _with(c.recipe(), "data", files={**c.files, "validation": c.file("e.csv", "sentence,label\n")})
        ),
        "split 'validation' is empty",
    ),
    Row(
        "validation-size-and-a-validation-file",
        lambda c: c.train(_with(c.recipe(), "data", validation_size=0.1)),
        "`data.validation_size`: and `data.files.validation` both give the evaluation split 'validation'",
    ),
    Row(
        "validation-size-out-of-range",
        lambda c: c.train(c.recipe(), "data.validation_size=1.5"),
        "`data.validation_size`: must be a fraction in (0, 1) or a whole number of examples, got 1.5",
    ),
    Row(
        "validation-size-leaves-no-training-rows",
        lambda c: c.train(_only_train(c, validation_size=320)),
        "`data.validation_size`: 320 of the 320 rows of the 'train' split leaves no training rows",
    ),
    Row(
        "validation-size-on-data-with-the-split",
        _mirror_with_validation,
        "already has the evaluation split 'validation' (`data.eval_split`); drop `data.validation_size`",
    ),
    Row(
        "no-eval-split-names-validation-size",
        lambda c: c.train(_only_train(c)),
        "carve one out of the training split with `data.validation_size: 0.1`, or train without evaluation "
        "with `data.eval_split: null`",
    ),
    Row("ner-length-mismatch", _ner_length_mismatch, "tokens but"),
    Row("ner-tag-not-iob", _ner_not_iob, "is not IOB"),
    Row("qa-answer-offset", _qa_bad_offset, "does not point at the answer text"),
    Row("qa-malformed-answers", _qa_malformed, "lists of equal length"),
    # ---- model ----------------------------------------------------------------------------------------
    Row(
        "checkpoint-dir-not-a-model",
        lambda c: c.train(_with(c.recipe(), "model", name_or_path=str(c.tmp))),
        "`model.name_or_path`: could not load a tokenizer",
    ),
    Row(
        "hub-id-not-cached-offline",
        lambda c: c.train(_with(c.recipe(), "model", name_or_path="nobody/no-such-model")),
        "no-such-model",
    ),
    Row(
        "pickle-only-weights",
        lambda c: c.train(
            _with(c.recipe(), "model", name_or_path=_model_copy(c, {"pytorch_model.bin": b"pickle"}))
        ),
        "`model.allow_pickle`: ",
    ),
    Row(
        "config-without-weights",
        lambda c: c.train(_with(c.recipe(), "model", name_or_path=_model_copy(c, {}))),
        "has a config but no model weights",
    ),
    Row("needs-remote-code", _remote_code, "`model.trust_remote_code`: "),
    Row("slow-tokenizer-for-ner", _slow_tokenizer_for_ner, "token-classification needs a fast tokenizer"),
    # ---- output directory --------------------------------------------------------------------------
    Row(
        "output-dir-holds-another-run",
        _different_run,
        "holds a different run: its recipe.yaml differs in training.learning_rate",
    ),
    Row(
        "output-dir-has-checkpoints",
        _checkpoints_without_resume,
        "holds checkpoints of this run (newest: checkpoint-4)",
    ),
    Row("output-dir-not-a-run", _not_a_run, "is not empty and holds no recipe.yaml"),
    Row("output-dir-is-a-file", _output_is_a_file, "`training.output_dir`: "),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def ctx(tmp_path, tiny_model_dir, sentiment_files) -> Ctx:
    return Ctx(tmp_path, tiny_model_dir, sentiment_files)


def test_the_matrix_is_at_least_30_rows():
    assert len(ROWS) >= 30 and len({row.id for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Row, ctx: Ctx, capsys):
    argv = row.make(ctx)
    capsys.readouterr()
    before = _snapshot(ctx.tmp)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("hf-finetune: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert row.expected in errors[0], err
    assert "Traceback" not in err + out
    after = _snapshot(ctx.tmp)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed was changed"
    new = [k for k in after if k not in before]
    assert not [k for k in new if k.startswith("out")], f"files written into the output dir: {new}"


def test_debug_flag_shows_the_traceback(ctx):
    recipe = ctx.write(_with(ctx.recipe(), "task", text_column="review"))
    for flags, traceback in (([], False), (["--debug"], True)):
        proc = subprocess.run(
            [sys.executable, "-m", "hf_finetune", *flags, "validate", recipe],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2
        assert ("Traceback" in proc.stderr) is traceback, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("hf-finetune: error: `task.text_column`")
