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


def _early(c: Ctx) -> dict:
    """The tiny recipe with early stopping (patience 2) and no save_strategy of its own."""
    recipe = c.recipe(training={"early_stopping": {"patience": 2}})
    recipe["training"].pop("save_strategy")
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


def _labels(c: Ctx, rows: list[dict]) -> list[str]:
    """A training file of ``rows`` (the validation file stays) in the tiny recipe."""
    train = str(write_jsonl(c.tmp / "labels.jsonl", rows))
    return c.train(_with(c.recipe(), "data", files={**c.files, "train": train}))


def _float_labels_one_missing(c: Ctx) -> list[str]:
    rows = [{**row, "label": float(row["label"])} for row in sentiment_rows(40, 6)]  # 1.0 / 0.0, as pandas
    rows[3]["label"] = None
    return _labels(c, rows)


def _latin1(c: Ctx, name: str = "latin.csv") -> str:
    lines = ["sentence,label", "a plain review,0", "un café crème très bon,1", "another one,0"]
    path = c.tmp / name
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return str(path)


def _broken_json_line(c: Ctx) -> list[str]:
    lines = [json.dumps(row) for row in sentiment_rows(5, 6)]
    lines[2] = '{"sentence": "a good film" "label": 1}'
    train = c.file("broken.jsonl", "\n".join(lines) + "\n")
    return c.train(_with(c.recipe(), "data", files={**c.files, "train": train}))


def _init_output_exists(c: Ctx) -> list[str]:
    data = _init_file(c)
    return ["init", data, "--label-column", "sentiment", "--output", c.file("mine.yaml", "my recipe\n")]


def _eval_not_a_run(c: Ctx) -> list[str]:
    (c.tmp / "somewhere").mkdir()
    return ["eval", str(c.tmp / "somewhere")]


def _eval_file(c: Ctx, rows: list[dict] | None) -> list[str]:
    """`eval --file` on a finished run with the tiny model's config (labels negative, positive) and
    tokenizer: everything `eval` reads before the weights."""
    import shutil

    c.finished_run(c.recipe())
    config = json.loads((c.model / "config.json").read_text())
    config.update(id2label={"0": "negative", "1": "positive"}, label2id={"negative": 0, "positive": 1})
    (c.out / "config.json").write_text(json.dumps(config))
    for path in c.model.iterdir():
        if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(path, c.out / path.name)
    target = c.tmp / "test.jsonl"
    if rows is not None:
        write_jsonl(target, rows)
    return ["eval", str(c.out), "--file", str(target)]


def _predict_missing_input(c: Ctx) -> list[str]:
    c.finished_run(c.recipe())
    return ["predict", str(c.out), "--input", str(c.tmp / "nope.jsonl"), "--output", str(c.tmp / "p.jsonl")]


def _predict_broken_calibration(c: Ctx) -> list[str]:
    c.finished_run(c.recipe())
    (c.out / "calibration.json").write_text('{"temperature": 0}')
    src = write_jsonl(c.tmp / "in.jsonl", [{"sentence": "a fine film"}])
    return ["predict", str(c.out), "--input", str(src), "--output", str(c.tmp / "p.jsonl")]


def _export(c: Ctx, *flags: str, target: str = "onnx") -> list[str]:
    """`export --format onnx` of the finished run in ctx.out into ctx.tmp/<target>."""
    return ["export", str(c.out), "--format", "onnx", *flags, "--output", str(c.tmp / target)]


def _export_prompt_tuning(c: Ctx) -> list[str]:
    c.finished_run(c.recipe(peft={"method": "prompt_tuning"}))
    (c.out / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING"}')
    return _export(c)


def _export_unknown_quantisation(c: Ctx) -> list[str]:
    c.finished_run(c.recipe())
    return _export(c, "--quantize", "int4")


def _export_output_not_empty(c: Ctx) -> list[str]:
    c.finished_run(c.recipe())
    (c.tmp / "onnx").mkdir()
    (c.tmp / "onnx" / "notes.txt").write_text("mine")
    return _export(c)


def _teacher(c: Ctx, task: str = "text-classification", labels=("0", "1"), model: bool = True) -> str:
    """A teacher run dir as a finished training leaves it, without weights (validate reads none)."""
    import shutil

    path = c.tmp / "teacher"
    path.mkdir()
    (path / "recipe.yaml").write_text(
        yaml.safe_dump({"task": {"name": task}, "model": {"name_or_path": "x"}})
    )
    if model:
        config = json.loads((c.model / "config.json").read_text())
        config["id2label"] = {str(i): name for i, name in enumerate(labels)}
        config["label2id"] = {name: i for i, name in enumerate(labels)}
        (path / "config.json").write_text(json.dumps(config))
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(c.model / name, path / name)
    return str(path)


def _distilled(c: Ctx, teacher: str, *extra: str) -> list[str]:
    return c.train(_with(c.recipe(), "strategy", distill={"teacher": teacher}), *extra)


def _teacher_other_tokenizer(c: Ctx) -> list[str]:
    from transformers import BertTokenizerLegacy

    teacher = Path(_teacher(c))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (teacher / name).unlink()
    vocab = c.tmp / "vocab.txt"
    vocab.write_text("".join(minilm_path().joinpath("vocab.txt").read_text().splitlines(True)[:2000]))
    BertTokenizerLegacy(vocab_file=str(vocab)).save_pretrained(teacher)
    return _distilled(c, str(teacher))


def _distill_question_answering(c: Ctx) -> list[str]:
    return [*_qa(c, [qa_row(0), qa_row(1)]), f"strategy.distill.teacher={c.tmp}"]


def _few_shot(c: Ctx, *extra: str, method: str = "setfit") -> list[str]:
    return c.train(_with(c.recipe(), "few_shot", method=method), *extra)


def _multi_label(c: Ctx, *extra: str) -> list[str]:
    """Rows with a list of labels each (multi-label classification)."""
    rows = [
        {"sentence": r["sentence"], "label": [r["label"]] + ([1 - r["label"]] if i % 3 == 0 else [])}
        for i, r in enumerate(sentiment_rows(40, seed=1))
    ]
    files = {"train": str(write_jsonl(c.tmp / "multi.jsonl", rows)), "validation": str(c.tmp / "multi.jsonl")}
    return c.train(tiny_recipe(c.model, files, c.out), *extra)


def _tune(c: Ctx, *extra: str) -> list[str]:
    # the default space's learning rates include the recipe's (its first trial is the recipe as given)
    recipe, lr = c.write(c.recipe()), "training.learning_rate=1e-4"
    return ["tune", recipe, lr, "--trials", "1", "--output-dir", str(c.out), *extra]


def _resume_few_shot_run(c: Ctx) -> list[str]:
    recipe = _with(c.recipe(), "few_shot", method="setfit")
    c.finished_run(recipe)
    (c.out / "checkpoint-4").mkdir()
    (c.out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    return c.train(recipe, "--resume")


def _export_few_shot_run(c: Ctx) -> list[str]:
    c.finished_run(_with(c.recipe(), "few_shot", method="setfit"))
    (c.out / "config_setfit.json").write_text('{"labels": ["0", "1"]}')
    (c.out / "classifier_head.safetensors").write_bytes(b"head")
    return ["export", str(c.out), "--format", "onnx", "--output", str(c.tmp / "onnx")]


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
    # early stopping (hf_finetune.early_stopping)
    Row(
        "early-stopping-without-eval-split",
        lambda c: c.train(_early(c), "data.eval_split=null"),
        "`training.early_stopping`: stops when the evaluation metric stops improving, but `data.eval_split` is null",
    ),
    Row(
        "early-stopping-without-evaluations",
        lambda c: c.train(_early(c), "training.eval_strategy=no"),
        "`training.early_stopping`: needs evaluations during training, but `training.eval_strategy` is `no`",
    ),
    Row(
        "early-stopping-without-checkpoints",
        lambda c: c.train(_early(c), "training.save_strategy=no"),
        "`training.save_strategy`: is `no` and `training.eval_strategy` is `epoch`: early stopping loads",
    ),
    Row(
        "early-stopping-save-steps-off-the-evaluations",
        lambda c: c.train(
            _early(c), "training.eval_strategy=steps", "training.eval_steps=4", "training.save_steps=6"
        ),
        "`training.save_steps`: is 6, not a multiple of `training.eval_steps` (4)",
    ),
    Row(
        "early-stopping-without-the-best-model",
        lambda c: c.train(_early(c), "training.load_best_model_at_end=false"),
        "`training.load_best_model_at_end`: is false, but `training.early_stopping` keeps the model",
    ),
    Row(
        "early-stopping-keeping-one-checkpoint",
        lambda c: c.train(_early(c), "training.save_total_limit=1"),
        "`training.save_total_limit`: is 1: with the best model loaded at the end",
    ),
    Row(
        "early-stopping-patience-zero",
        lambda c: c.train(_early(c), "training.early_stopping.patience=0"),
        "`training.early_stopping.patience`: must be at least 1",
    ),
    Row(
        "early-stopping-metric-typo",
        lambda c: c.train(_early(c), "training.metric_for_best_model=accurracy"),
        "`training.metric_for_best_model`: 'accurracy' is not among the metrics this run's evaluation "
        "reports (did you mean: eval_accuracy",
    ),
    # class imbalance (hf_finetune.losses)
    Row(
        "class-weights-wrong-length",
        lambda c: c.train(_with(c.recipe(), "task", class_weights=[1.0, 2.0, 3.0])),
        "`task.class_weights`: has 3 weights, but there are 2 labels [0, 1]; give one weight per label",
    ),
    Row(
        "class-weights-not-positive",
        lambda c: c.train(c.recipe(), "task.class_weights=[1, 0]"),
        "`task.class_weights`: weights must be positive numbers; got 0.0 (position 1)",
    ),
    Row(
        "class-weights-for-regression",
        lambda c: c.train(_with(c.recipe(), "task", problem_type="regression", class_weights="auto")),
        "`task.class_weights`: class weights need classes, and this task is regression",
    ),
    Row(
        "focal-loss-on-regression-data",
        lambda c: c.train(
            _with(
                _with(c.recipe(), "task", loss="focal"),
                "data",
                files={
                    **c.files,
                    "train": str(
                        write_jsonl(c.tmp / "t.jsonl", [{"sentence": "x", "label": i / 4} for i in range(8)])
                    ),
                },
            )
        ),
        "`task.loss`: column 'label' holds non-integral numbers, so this task is regression",
    ),
    Row(
        "focal-loss-with-label-smoothing",
        lambda c: c.train(_with(c.recipe(), "task", loss="focal"), "training.label_smoothing_factor=0.1"),
        "`training.label_smoothing_factor`: is 0.1, and `task.loss` replaces the Trainer's loss",
    ),
    Row(
        "ner-class-weights-wrong-length",
        lambda c: _ner(c, ner_rows(10, seed=1), class_weights=[1, 2]),
        "`task.class_weights`: has 2 weights, but there are 5 tags [O, B-LOC, I-LOC, B-PER, I-PER]",
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
    Row("eval-file-missing", lambda c: _eval_file(c, None), "`--file`: file not found: "),
    Row(
        "eval-file-unknown-label",
        lambda c: _eval_file(
            c, [*sentiment_rows(4, 1, as_names=True), {"idx": 4, "sentence": "meh", "label": "neutral"}]
        ),
        "test.jsonl: `task.labels`: label values in the test split (column 'label') not in the label list "
        "[negative, positive]: 'neutral' (row 4). The model in ",
    ),
    Row(
        "eval-file-without-the-text-column",
        lambda c: _eval_file(c, [{"review": "good", "label": "positive"}]),
        "test.jsonl: `task.text_column`: column 'sentence' not found in the test split",
    ),
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
        "labels-that-are-not-labels",
        lambda c: _labels(c, [{"sentence": f"film {i}", "label": bool(i % 2)} for i in range(20)]),
        "column 'label' of the training split holds no usable labels: 20 values: 20 bool (e.g. False, True)",
    ),
    Row(
        "float-labels-with-a-missing-label",
        _float_labels_one_missing,
        "rows of the train split have no label (null or empty) in column 'label': row 3.",
    ),
    Row(
        "one-class-train-split",
        lambda c: _labels(c, [{"sentence": f"a fine film {i}", "label": "positive"} for i in range(20)]),
        "every row of the train split (20 rows) has the label 'positive' (column 'label'): a classifier needs "
        "examples of at least two classes",
    ),
    Row(
        "latin-1-csv",
        lambda c: c.train(_with(c.recipe(), "data", files={**c.files, "train": _latin1(c)})),
        "latin.csv is not UTF-8 text: line 3 (byte 38 of the file) has 0xe9",
    ),
    Row(
        "init-latin-1-csv",
        lambda c: ["init", _latin1(c), "--output", str(c.tmp / "new.yaml")],
        "or give the encoding it was saved in with --encoding (e.g. --encoding latin-1",
    ),
    Row(
        "unknown-encoding",
        lambda c: c.train(c.recipe(), "data.encoding=latin-7x"),
        "`data.encoding`: unknown encoding 'latin-7x'",
    ),
    Row("broken-json-line", _broken_json_line, "broken.jsonl as JSON Lines: line 3 is not valid JSON"),
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
        "test-split-is-the-eval-split",
        lambda c: c.train(c.recipe(), "data.test_split=validation"),
        "`data.test_split`: 'validation' is also the evaluation split; a test split is held out",
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
    # ---- long documents (data.long_text: windows) ------------------------------------------------------
    Row(
        "window-stride-not-below-max-seq-length",
        lambda c: c.train(c.recipe(), "data.long_text=windows", "data.window_stride=32"),
        "`data.window_stride`: is 32; the tokens shared by consecutive windows must be at least 0 and less "
        "than a window (data.max_seq_length=32)",
    ),
    Row(
        "window-stride-leaves-no-text-room",
        lambda c: c.train(c.recipe(), "data.long_text=windows", "data.window_stride=30"),
        "`data.window_stride`: is 30, but a window of 32 tokens holds 30 tokens of text",
    ),
    Row(
        "windows-in-training-without-windows",
        lambda c: c.train(c.recipe(), "data.windows_in_training=true"),
        "`data.windows_in_training`: trains on the windows of long documents, but `data.long_text` is "
        "`truncate`; set `data.long_text: windows` too",
    ),
    Row(
        "long-text-windows-for-pairs",
        lambda c: c.train(_with(c.recipe(), "task", text_pair_column="sentence"), "data.long_text=windows"),
        "`data.long_text`: `windows` reads single texts in windows, but this recipe classifies pairs",
    ),
    Row(
        "long-text-windows-for-question-answering",
        lambda c: [*_qa(c, [qa_row(0), qa_row(1)]), "data.long_text=windows"],
        "`data.long_text`: `windows` reads long documents in windows for text classification only, not for "
        "the question-answering task; it reads long contexts in overlapping windows of its own",
    ),
    Row(
        "long-text-windows-for-token-classification",
        lambda c: [*_ner(c, ner_rows(10, seed=1)), "data.long_text=windows"],
        "not for the token-classification task",
    ),
    Row(
        "window-aggregate-unknown",
        lambda c: c.train(c.recipe(), "data.long_text=windows", "data.window_aggregate=median"),
        "`data.window_aggregate`: expected one of: mean, max, got 'median'",
    ),
    # ---- distillation (strategy.distill) and layer-cut students (model.num_layers) ---------------------
    Row(
        "num-layers-zero",
        lambda c: c.train(c.recipe(), "model.num_layers=0"),
        "`model.num_layers`: must be at least 1 layer, got 0",
    ),
    Row(
        "num-layers-more-than-the-checkpoint",
        lambda c: c.train(c.recipe(), "model.num_layers=5"),
        "has 2 layers; give a number from 1 to 2",
    ),
    Row(
        "num-layers-and-config-override",
        lambda c: c.train(c.recipe(), "model.num_layers=1", "model.config_overrides.num_hidden_layers=1"),
        "`model.config_overrides.num_hidden_layers`: and `model.num_layers` both set the depth",
    ),
    Row(
        "distill-without-teacher",
        lambda c: c.train(c.recipe(), "strategy.distill=true"),
        "`strategy.distill.teacher`: is empty; give the output directory of a finished training run",
    ),
    Row(
        "distill-teacher-missing",
        lambda c: _distilled(c, str(c.tmp / "no-such-run")),
        "no-such-run: no such directory; give the `training.output_dir` of a finished",
    ),
    Row(
        "distill-teacher-not-a-run",
        lambda c: _distilled(c, str(c.model)),
        "has no recipe.yaml, so it is not an hf-finetune run",
    ),
    Row(
        "distill-teacher-unfinished",
        lambda c: _distilled(c, _teacher(c, model=False)),
        "has no saved model (config.json); its training has not finished",
    ),
    Row(
        "distill-teacher-other-task",
        lambda c: _distilled(c, _teacher(c, task="token-classification")),
        "is a token-classification run and this recipe is text-classification",
    ),
    Row(
        "distill-teacher-other-labels",
        lambda c: _distilled(c, _teacher(c, labels=("1", "0"))),
        "predicts the labels ['1', '0'] and this recipe's are ['0', '1']; the teacher needs the same labels",
    ),
    Row("distill-teacher-other-tokenizer", _teacher_other_tokenizer, "gives other ids than this recipe's"),
    Row(
        "distill-alpha-out-of-range",
        lambda c: _distilled(c, _teacher(c), "strategy.distill.alpha=1.5"),
        "`strategy.distill.alpha`: must be in [0, 1]",
    ),
    Row(
        "distill-temperature-zero",
        lambda c: _distilled(c, _teacher(c), "strategy.distill.temperature=0"),
        "`strategy.distill.temperature`: must be a positive number, got 0.0",
    ),
    Row(
        "distill-regression",
        lambda c: _distilled(c, _teacher(c), "task.problem_type=regression"),
        "`strategy.distill`: distils single-label classification (a softmax over the classes), and this task "
        "is regression",
    ),
    Row(
        "distill-question-answering",
        _distill_question_answering,
        "`strategy.distill`: distils text and token classification",
    ),
    # ---- experiment tracking (training.report_to; a tracker not installed: tests/test_tracking.py) ----------
    Row(
        "report-to-unknown-tracker",
        lambda c: c.train(c.recipe(), "training.report_to=[tensorbord]"),
        "`training.report_to`: unknown tracker 'tensorbord' (did you mean: tensorboard?); hf-finetune logs "
        "offline to tensorboard, trackio, mlflow (install them with `pip install 'hf-finetune[track]'`)",
    ),
    Row(
        "tune-report-to-unknown-tracker",
        lambda c: ["tune", c.write(c.recipe()), "--trials", "1", "--report-to", "mlflow", "ml-flow"],
        "`--report-to`: unknown tracker 'ml-flow' (did you mean: mlflow?)",
    ),
    # ---- tune across processes and machines (--workers, --storage, --join) ---------------------------------
    Row(
        "tune-storage-driver-missing",
        # a driver that no extra installs, so the row holds whatever this machine has
        lambda c: _tune(c, "--storage", "postgresql+pg8000://user@127.0.0.1/tune"),
        "--storage postgresql+pg8000://user@127.0.0.1/tune: its driver pg8000 is not installed; pip install "
        "it, or leave the driver out (postgresql://...) to use an installed one.",
    ),
    Row(
        "tune-storage-unreachable",
        lambda c: _tune(c, "--storage", "postgresql://tune:secret@127.0.0.1:9/tune"),
        "--storage postgresql://tune:***@127.0.0.1:9/tune: cannot open the database: ",
    ),
    Row(
        "tune-storage-not-a-url",
        lambda c: _tune(c, "--storage", "my-database"),
        "--storage 'my-database': not a database URL; give sqlite:///PATH, postgresql://USER@HOST/DB",
    ),
    Row(
        "tune-join-no-study",
        lambda c: _tune(c, "--storage", f"sqlite:///{c.tmp / 'studies.db'}", "--join"),
        "holds no study named 'hf-finetune-tune'; start the search first (the same command without --join)",
    ),
    Row(
        "tune-folds-one",
        lambda c: _tune(c, "--folds", "1"),
        "--folds: at least 2 (each fold is evaluated on by a model trained on the others), got 1",
    ),
    Row(
        "tune-folds-too-many-for-the-data",
        lambda c: _tune(c, "--folds", "200"),
        "--folds 200: `data.folds`: 200 folds of the 320 rows of the 'train' split: too few rows for 200 folds "
        "(label 0 has",
    ),
    Row(
        "data-fold-without-folds",
        lambda c: c.train(c.recipe(), "data.fold=1"),
        "`data.fold`: picks one of the `data.folds` folds; set `data.folds` too, or drop it.",
    ),
    Row(
        "data-folds-and-validation-size",
        lambda c: c.train(c.recipe(), "data.folds=5", "data.fold=0", "data.validation_size=0.1"),
        "`data.folds`: and `data.validation_size` both carve the evaluation split out of the training split",
    ),
    Row(
        "tune-workers-zero",
        lambda c: _tune(c, "--workers", "0"),
        "--workers: at least 1, got 0.",
    ),
    Row(
        "bench-workers-zero",
        lambda c: ["bench", "bench/few-shot", "--workers", "0"],
        "--workers: at least 1, got 0.",
    ),
    Row(
        "bench-devices-repeated",
        lambda c: ["bench", "bench/few-shot", "--devices", "0,1,0"],
        "--devices: repeats a device: ['0', '1', '0'].",
    ),
    Row(
        "tune-join-and-confirm",
        lambda c: _tune(c, "--join", "--confirm-seeds", "1"),
        "--confirm-seeds: the process that started the search confirms its winner; drop it with --join.",
    ),
    # ---- calibrated scores (task.calibration) --------------------------------------------------------
    Row(
        "unknown-calibration",
        lambda c: c.train(_with(c.recipe(), "task", calibration="platt")),
        "`task.calibration`: expected one of: temperature, none, got 'platt'",
    ),
    Row(
        "predict-broken-calibration-file",
        _predict_broken_calibration,
        "calibration.json: has no positive, finite `temperature`. Delete the file to use the model's raw scores",
    ),
    # ---- export --format onnx ---------------------------------------------------------------------------
    Row(
        "export-prompt-tuning-run",
        _export_prompt_tuning,
        "a prompt_tuning adapter adds virtual tokens at run time and cannot be merged into the weights, so the "
        "run cannot be exported to ONNX",
    ),
    Row(
        "export-not-a-run",
        lambda c: ["export", _eval_not_a_run(c)[1], "--format", "onnx", "--output", str(c.tmp / "onnx")],
        "has no recipe.yaml, so it is not an hf-finetune output directory",
    ),
    Row(
        "export-unknown-quantisation",
        _export_unknown_quantisation,
        "--quantize: unknown quantisation method 'int4'; expected one of: int8",
    ),
    Row("export-output-not-empty", _export_output_not_empty, "exists and is not empty; give a new directory"),
    Row(
        "train-from-an-onnx-export",
        lambda c: c.train(_with(c.recipe(), "model", name_or_path=_model_copy(c, {"model.onnx": b"graph"}))),
        "is an ONNX export (model.onnx), which runs `eval` and `predict` only; train from the run",
    ),
    # ---- few-shot (few_shot.method, data.samples_per_class) ----------------------------------------------
    Row(
        "samples-per-class-larger-than-a-class",
        lambda c: c.train(c.recipe(), "data.samples_per_class=200"),
        "`data.samples_per_class`: 200 training examples of each class are asked for, but in the train split "
        "(column 'label') class '0' has",
    ),
    Row(
        "samples-per-class-on-ner",
        lambda c: [*_ner(c, ner_rows(10, seed=1)), "data.samples_per_class=4"],
        "`data.samples_per_class`: draws N examples of each class, for text classification; this recipe's task "
        "is token-classification",
    ),
    Row(
        "samples-per-class-multi-label",
        lambda c: _multi_label(c, "data.samples_per_class=4"),
        "`data.samples_per_class`: draws N examples of each class, one class per example",
    ),
    Row(
        "few-shot-on-ner",
        lambda c: [*_ner(c, ner_rows(10, seed=1)), "few_shot.method=setfit"],
        "`few_shot.method`: classifies whole texts (text-classification); this recipe's task is "
        "token-classification",
    ),
    Row(
        "few-shot-on-question-answering",
        lambda c: [*_qa(c, [qa_row(0), qa_row(1)]), "few_shot.method=setfit"],
        "`few_shot.method`: classifies whole texts (text-classification); this recipe's task is "
        "question-answering",
    ),
    Row(
        "few-shot-multi-label",
        lambda c: _multi_label(c, "few_shot.method=setfit"),
        "`few_shot.method`: `setfit` learns single-label classes; column 'label' makes this task "
        "multi_label_classification",
    ),
    Row(
        "few-shot-unknown-method",
        lambda c: _few_shot(c, method="set-fit"),
        "`few_shot.method`: expected one of",
    ),
    Row(
        "few-shot-with-peft",
        lambda c: _few_shot(c, "peft.method=lora"),
        "`peft.method`: `few_shot.method: setfit` trains the sentence encoder itself",
    ),
    Row(
        "few-shot-with-a-strategy",
        lambda c: _few_shot(c, "strategy.freeze_layers=1"),
        "`strategy.freeze_layers`: shapes fine-tuning; `few_shot.method: setfit` has its own schedule",
    ),
    Row(
        "few-shot-on-pairs",
        lambda c: _few_shot(c, "task.text_pair_column=sentence"),
        "`task.text_pair_column`: `few_shot.method: setfit` embeds single texts",
    ),
    Row(
        "few-shot-resume",
        _resume_few_shot_run,
        "`training.resume`: a few-shot run writes no checkpoints to resume from; drop `--resume`.",
    ),
    Row(
        "export-few-shot-run",
        _export_few_shot_run,
        "is a few-shot run (`few_shot.method: setfit`: a sentence encoder and a logistic regression)",
    ),
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
