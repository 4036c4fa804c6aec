"""`hf-finetune init DATA_FILE`: a commented starter recipe inferred from a data file.

The file is read with the package's own loader (`data.read_data_file`); `columns` finds the task and
its columns. Then: the label list and its balance (the task's own order), `max_seq_length` from token
lengths measured with the model's tokenizer (never its weights), and the evaluation split (a given
file, a validation/dev file next to the data, or `data.validation_size`). Every inference is printed
and written as a comment above its field. The recipe is checked in-process (`load_recipe`, then the
task loads and checks the data as `validate` does) before anything is written, and the file is
written atomically; an existing file is kept unless `force`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .columns import FLAGS, NER, QA, SAMPLE, TC, infer_roles, profile
from .config.coerce import parse_yaml
from .config.load import load_recipe
from .config.schema import DEFAULT_MODEL
from .data import read_data_file
from .errors import FinetuneError
from .labels import MULTI, REGRESSION, SINGLE, build_schema, class_id, classlabel_names, infer_problem_type
from .lengths import choose_length
from .outputs import atomic_write_text
from .tasks import get_task
from .textfile import check_encoding

#: the task fields `init` takes a flag for (--text-column ...)
COLUMN_FLAGS = tuple(name for names in FLAGS.values() for name in names)
SIBLINGS = ("validation", "valid", "dev", "eval")
VALIDATION_SIZE = 0.1
RARE = 0.10  # a class under this share of the rows gets a warning
BATCH = 32
HEADLINE = {SINGLE: "accuracy", MULTI: "f1_micro", REGRESSION: "pearson", NER: "f1", QA: "f1"}


@dataclass
class Options:
    data_file: str
    output: str = "recipe.yaml"
    task: str | None = None
    model: str = DEFAULT_MODEL
    validation_file: str | None = None
    encoding: str | None = None  # the data files' text encoding (--encoding), kept as data.encoding
    force: bool = False
    columns: dict[str, str | None] = field(default_factory=dict)  # text_column=..., from the flags

    def command(self) -> str:
        words = ["hf-finetune", "init", self.data_file]
        for name, value in [("task", self.task), *self.columns.items()]:
            if value:
                words += ["--" + name.replace("_", "-"), value]
        if self.model != DEFAULT_MODEL:
            words += ["--model", self.model]
        if self.validation_file:
            words += ["--validation-file", self.validation_file]
        if self.encoding:
            words += ["--encoding", self.encoding]
        if self.output != "recipe.yaml":
            words += ["--output", self.output]
        return shlex.join(words)


@dataclass
class Setting:
    section: str
    key: str
    value: Any
    why: list[str]
    inferred: bool = True  # printed by the command (fixed defaults only carry their comment)


@dataclass
class Starter:
    """What `init` found and wrote: the report lines, the recipe text, and where it went (None: stdout)."""

    report: list[str]
    text: str
    path: Path | None


def init_recipe(opts: Options) -> Starter:
    """Read, infer, check, then write (or return for stdout): nothing is written before all of it passed."""
    path = None if opts.output == "-" else Path(opts.output)
    if path is not None and path.exists() and not opts.force:
        raise FinetuneError(
            f"--output: {path} exists; pass --force to overwrite it, or give another path with --output."
        )
    with _quiet():
        return _init(opts, path)


def _init(opts: Options, path: Path | None) -> Starter:
    if opts.encoding is not None:
        check_encoding(opts.encoding, "--encoding")
    ds = read_data_file(opts.data_file, "DATA_FILE", opts.encoding, "--encoding")
    columns = profile(ds)
    given = {"task": opts.task, **opts.columns}
    roles = infer_roles(ds, columns, given, opts.data_file)
    sampled = f" (counted in a sample of {SAMPLE} rows)" if len(ds) > SAMPLE else ""
    report = [
        f"read {opts.data_file}: {len(ds)} rows; columns{sampled}: " + ", ".join(map(str, columns.values()))
    ]
    settings = [Setting("task", "name", roles.task, [roles.why_task])]
    order = [*COLUMN_FLAGS, "id_column"]
    for key in sorted(roles.fields, key=order.index):
        settings.append(Setting("task", key, roles.fields[key], [roles.why[key]]))
    problem = SINGLE
    if roles.task == TC:
        problem, label_settings = _class_labels(ds, roles.fields["label_column"])
        settings += label_settings
    elif roles.task == NER:
        settings += _tags(ds, roles.fields["tags_column"])
    else:
        settings += _answers(ds, roles.fields["answers_column"])
    why = "the checkpoint to fine-tune (--model); its tokenizer measured the lengths for data.max_seq_length"
    settings.append(Setting("model", "name_or_path", opts.model, [why]))
    data = _data(opts, ds, roles, problem)
    carved = any(s.key == "validation_size" for s in data)
    settings += data + _training(opts, len(ds), carved, roles.task, problem)
    output_name = opts.output if path is not None else "recipe.yaml"
    text = render(settings, header(opts, output_name))
    summary = check(text, opts.output)
    for setting in settings:
        if setting.inferred:
            report.append(f"{setting.section}.{setting.key}: {_flow(setting.value)}")
            report += _comment(setting.why, "    ")
    report.append(f"checked: {summary}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        report.append(f"wrote {path}. Next:")
    else:
        report.append("the recipe follows on stdout; save it as recipe.yaml, then:")
    report += [f"  hf-finetune validate {output_name}", f"  hf-finetune train {output_name}"]
    return Starter(report, text, path)


# ---------------------------------------------------------------------------------------------- labels


def _class_labels(ds, column: str) -> tuple[str, list[Setting]]:
    values = list(ds[column])
    feature = ds.features[column]
    dtype = getattr(feature, "dtype", "")
    present = [v for v in values if v is not None]
    problem = infer_problem_type(present)
    if dtype.startswith("float") and not all(float(v).is_integer() for v in present):
        problem = REGRESSION
    if problem == REGRESSION:
        low, high = min(present), max(present)
        why = [
            f"column {column} holds numbers ({low:g} to {high:g}, mean {sum(present) / len(present):g}): "
            "regression, one score per example (metrics: Pearson, Spearman, MSE)"
        ]
        return problem, [Setting("task", "problem_type", REGRESSION, why)]
    names = build_schema(problem_type=problem, values=present, feature=feature).names
    counts: Counter = Counter()
    for value in present:
        for item in value if isinstance(value, list) else [value]:
            counts[item if isinstance(item, str) else names[class_id(item)]] += 1
    rows = len(values)
    kind = "rows with each label" if problem == MULTI else "balance"
    balance = ", ".join(f"{name} {counts[name]} ({counts[name] / rows:.1%})" for name in names)
    flat = [x for v in present for x in (v if isinstance(v, list) else [v])]
    ints = not any(isinstance(x, str) for x in flat) and classlabel_names(feature) is None
    order = "class ids 0..n-1" if ints else "sorted label names"
    if classlabel_names(feature) is not None:
        order = "the file's class names"
    why = [
        f"{len(names)} labels ({order}; the model's label ids follow this order)"
        + (": multi-label (lists of labels per row)" if problem == MULTI else ""),
        f"{kind} in {rows} rows: {balance}",
    ]
    empty = [name for name in names if not counts[name]]
    if empty:
        why.append(
            f"no rows have {'id' if ints else 'label'} {', '.join(empty)}: integer labels are class ids 0..n-1; "
            "renumber them from 0, or write the labels as names"
        )
    smallest = min((n for n in names if counts[n]), key=lambda n: counts[n])
    if counts[smallest] / rows < RARE:
        why.append(
            f"WARNING: the smallest class, {smallest}, is {counts[smallest] / rows:.1%} of the rows: accuracy "
            "can look good while it is never predicted; check its F1 (hf-finetune eval prints f1)"
        )
    settings = [Setting("task", "labels", names, why)]
    if problem == MULTI:
        settings.append(Setting("task", "problem_type", MULTI, ["each row holds a list of labels"]))
    return problem, settings


def _tags(ds, column: str) -> list[Setting]:
    entities: Counter = Counter()
    for tags in ds[column]:
        entities.update(t[2:] for t in tags or [] if t.startswith("B-"))
    kinds = sorted({t[2:] for tags in ds[column] for t in tags or [] if t != "O"})
    names = ["O"] + [f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I")]
    shown = ", ".join(f"{kind} {entities[kind]}" for kind in kinds)
    why = [
        f"the tag set: O, then B-/I- of each of the {len(kinds)} entity types found (as the task orders them)",
        f"entities (B- tags) in {len(ds)} sentences: {shown or 'none'}",
    ]
    return [Setting("task", "labels", names, why)]


def _answers(ds, column: str) -> list[Setting]:
    unanswered = sum(1 for a in ds[column] if not (a or {}).get("text"))
    if not unanswered:
        return []
    why = [f"{unanswered} of {len(ds)} questions have no answer: SQuAD v2 (metric squad_v2)"]
    return [Setting("task", "version_2_with_negative", True, why)]


# ------------------------------------------------------------------------------------------------- data


def _data(opts: Options, ds, roles, problem: str) -> list[Setting]:
    files = {"train": opts.data_file}
    split = _validation(opts, roles.task, problem)
    if isinstance(split, Setting):
        why = ["the training file, relative to the directory you run hf-finetune from"]
    else:
        files["validation"], reason = split
        why = [
            "the training and validation files, relative to the directory you run hf-finetune from",
            reason,
        ]
    settings = [Setting("data", "files", files, why)]
    if opts.encoding:
        why = ["the files' text encoding (--encoding); without it they are read as UTF-8"]
        settings.append(Setting("data", "encoding", opts.encoding, why))
    if isinstance(split, Setting):
        settings.append(split)
    return settings + _max_seq_length(opts, ds, roles)


def _validation(opts: Options, task: str, problem: str) -> Setting | tuple[str, str]:
    if opts.validation_file:
        # a bad file fails here, before writing
        read_data_file(opts.validation_file, "--validation-file", opts.encoding, "--encoding")
        return opts.validation_file, f"validation: {opts.validation_file} (--validation-file)"
    given = Path(opts.data_file)
    found = []
    if given.stem.lower() not in SIBLINGS:
        found = [
            str(given.with_name(n + given.suffix))
            for n in SIBLINGS
            if given.with_name(n + given.suffix).is_file()
        ]
    if len(found) > 1:
        raise FinetuneError(
            f"{opts.data_file}: {len(found)} files next to it could be the validation split: "
            f"{', '.join(found)}. Say which with --validation-file."
        )
    if found:
        return found[0], f"validation: {found[0]}, found next to {opts.data_file}"
    looked = ", ".join(n + given.suffix for n in SIBLINGS)
    how = {
        TC: "stratified: every label keeps its share" if problem == SINGLE else "shuffled",
        NER: "shuffled",
        QA: "questions on one context stay together",
    }[task]
    why = [
        f"no validation file given (--validation-file) or found next to {opts.data_file} (looked for {looked}): "
        f"{VALIDATION_SIZE:.0%} of the training rows are held out to evaluate on, {how}; the same rows every run "
        "(data.split_seed). To train without evaluation, drop this line and set data.eval_split: null"
    ]
    return Setting("data", "validation_size", VALIDATION_SIZE, why)


def _max_seq_length(opts: Options, ds, roles) -> list[Setting]:
    choice = choose_length(ds, roles.task, roles.fields, opts.model)
    settings = [Setting("data", "max_seq_length", choice.max_seq_length, choice.why)]
    if choice.doc_stride is not None:
        settings.append(Setting("task", "doc_stride", choice.doc_stride, [choice.stride_why]))
    return settings


# --------------------------------------------------------------------------------------------- training


def _training(opts: Options, rows: int, carved: bool, task: str, problem: str) -> list[Setting]:
    train_rows = rows - math.ceil(VALIDATION_SIZE * rows) if carved else rows
    steps = math.ceil(train_rows / BATCH)
    logging_steps = max(1, min(50, steps // 5))
    metric = HEADLINE[problem if task == TC else task]
    fixed = [
        ("num_train_epochs", 3, "passes over the training data; more for small data sets"),
        ("learning_rate", 5e-5, "full fine-tuning of a small encoder: 2e-5 to 1e-4 is usual"),
        ("per_device_train_batch_size", BATCH, None),
        ("per_device_eval_batch_size", 2 * BATCH, None),
        (
            "train_sampling_strategy",
            "group_by_length",
            "batches of similar lengths: less padding, and faster (docs/figures.md#demo-search)",
        ),
        ("warmup_steps", 0.1, "below 1: a share of the training steps"),
        ("weight_decay", 0.01, None),
        ("eval_strategy", "epoch", "evaluate after every epoch, and keep the best epoch's model"),
        ("save_strategy", "epoch", None),
        ("save_total_limit", 2, "the best and the newest: a run stopped by a signal can resume"),
        ("load_best_model_at_end", True, None),
    ]
    settings = [
        Setting(
            "training", "output_dir", f"runs/{Path(opts.data_file).stem}", ["where the model and metrics go"]
        )
    ]
    settings += [Setting("training", k, v, [why] if why else [], inferred=False) for k, v, why in fixed]
    settings += [
        Setting("training", "metric_for_best_model", metric, [f"the {task} headline metric ({metric})"]),
        Setting(
            "training",
            "logging_steps",
            logging_steps,
            [
                f"about {steps} steps per epoch ({train_rows} training rows, batch {BATCH}): a loss every {logging_steps}"
            ],
        ),
        Setting(
            "training",
            "bf16",
            True,
            [
                "bf16 mixed precision on a GPU (false on GPUs older than Ampere); on a CPU without native bf16 "
                "instructions hf-finetune trains in fp32 instead, and says so"
            ],
            inferred=False,
        ),
        Setting("training", "seed", 42, [], inferred=False),
        Setting("training", "report_to", "none", ["no experiment tracker"], inferred=False),
    ]
    return settings


# ------------------------------------------------------------------------------------- writing, checking


def header(opts: Options, output: str) -> str:
    return "\n".join(
        [
            f"# Starter recipe for {opts.data_file}, written by: {opts.command()}",
            "# The comment above each setting says what it was inferred from; change what you disagree with.",
            f"# Check it (data, labels, tokenizer; no weights):  hf-finetune validate {output}",
            f"# Train it:                                        hf-finetune train {output}",
            "",
        ]
    )


SECTION_ORDER = ("task", "model", "data", "training")


def render(settings: list[Setting], head: str) -> str:
    """The recipe as YAML, each setting under its comment lines."""
    lines = [head.rstrip("\n")]
    for section in SECTION_ORDER:
        lines.append(f"{section}:")
        for s in (s for s in settings if s.section == section):
            lines += _comment(s.why, "  ")
            if isinstance(s.value, dict):
                lines.append(f"  {s.key}:")
                lines += [f"    {k}: {_flow(v)}" for k, v in s.value.items()]
            else:
                lines.append(f"  {s.key}: {_flow(s.value)}")
    return "\n".join(lines) + "\n"


def _comment(paragraphs: list[str], indent: str) -> list[str]:
    return [
        f"{indent}# {line}"
        for text in paragraphs
        for line in textwrap.wrap(text, 100 - len(indent), break_on_hyphens=False, break_long_words=False)
    ]


def _flow(value: Any) -> str:
    """One YAML value on one line (flow style for lists and mappings)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 20)
    return text.removesuffix("\n...\n").strip()


def check(text: str, where: str) -> str:
    """Load ``text`` as `hf-finetune validate` would up to the data checks (no tokenizer run, no weights);
    returns a one-line summary. A bad inference fails here, before anything is written."""
    recipe = load_recipe(parse_yaml(text, where))
    task = get_task(recipe.task.name).task_class(recipe)
    raw = task.load(task.splits_for("validate"))
    task.prepare(raw)
    splits = ", ".join(f"{name} {len(split)} rows" for name, split in raw.items())
    return f"the recipe loads, and the {recipe.task.name} task accepts the data ({splits}; {task.source.description})"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No INFO logs or progress bars from the in-process check: `init` prints what it found itself."""
    import datasets

    package = logging.getLogger("hf_finetune")
    level, bars = package.level, datasets.is_progress_bar_enabled()
    package.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        package.setLevel(level)
        if bars:
            datasets.enable_progress_bars()
