"""Using a finished output directory: evaluate it on a split, predict with it on a JSON Lines file
(`hf-finetune eval`, `predict`); `hf_finetune.export` writes it out as other formats.

The saved model and label maps replace the base checkpoint; the rest of the run's recipe (data, columns,
metric) is read back from its ``recipe.yaml``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .config import Recipe
from .config.load import load_recipe
from .errors import DataError, FinetuneError, RecipeError
from .export.runtime import OrtModel, is_onnx_dir
from .fewshot.model import SentenceClassifier, is_few_shot_dir
from .hub import ensure_hub_mode
from .metrics.calibration import held_out, read_temperature
from .outputs import (
    ADAPTER_CONFIG,
    EVAL_SPLIT_FILE,
    PREDICTIONS_FILE,
    RECIPE_FILE,
    atomic_write_text,
    check_output_dir,
    is_adapter_dir,
    write_jsonl,
)
from .pipeline import make_task, predict_split, write_class_report
from .textfile import codec, encoding_message, first_undecodable
from .trainer import eval_trainer


def load_output_recipe(output_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """The recipe of the run in ``output_dir``, pointed at the model saved there."""
    output_dir = check_output_dir(output_dir)
    # The saved model replaces the base checkpoint; the rest of the recipe (data, labels, metric) is the run's.
    # training.early_stopping=null: how the run trained; an evaluation needs none of what it checks
    recipe = load_recipe(
        output_dir / RECIPE_FILE,
        [*overrides, f"model.name_or_path={output_dir}", "training.early_stopping=null"],
        defaults=False,  # the saved recipe records the defaults the run trained with
    )
    recipe.model.tokenizer_name_or_path = None
    return recipe


def restore_task(output_dir: Path, recipe: Recipe):
    """The task with the saved label maps, and the tokenizer: no weights yet."""
    from transformers import AutoConfig, AutoTokenizer

    ensure_hub_mode()
    task = make_task(recipe)
    task.restore(AutoConfig.from_pretrained(output_dir))
    return task, AutoTokenizer.from_pretrained(output_dir)


def restore_model(output_dir: Path, recipe: Recipe, task):
    """The trained model: a full checkpoint, the base model + the peft adapter (with its head), a few-shot
    run's encoder and head (`hf_finetune.fewshot.model.SentenceClassifier`), or an ONNX export run by
    onnxruntime (`hf_finetune.export.runtime.OrtModel`, on the CPU)."""
    import torch

    if is_onnx_dir(output_dir):
        from transformers import AutoConfig

        return OrtModel.from_dir(output_dir, AutoConfig.from_pretrained(output_dir))
    if is_few_shot_dir(output_dir):  # a sentence encoder and its logistic-regression head (`few_shot`)
        device = "cuda" if torch.cuda.is_available() and not recipe.training.use_cpu else "cpu"
        return SentenceClassifier.from_dir(output_dir, device)
    if is_adapter_dir(output_dir):
        from peft import PeftModel
        from transformers import AutoConfig

        base_name = json.loads((output_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        base = task.auto_model_class.from_pretrained(
            base_name, config=AutoConfig.from_pretrained(output_dir), revision=recipe.model.revision
        )
        model = PeftModel.from_pretrained(base, output_dir)
    else:
        model = task.auto_model_class.from_pretrained(output_dir)
    if torch.cuda.is_available() and not recipe.training.use_cpu:
        model.to("cuda")
    return model


def evaluate_output(
    output_dir: str | Path,
    split: str | None = None,
    overrides=(),
    batch_size: int | None = None,
    *,
    file: str | Path | None = None,
    name: str | None = None,
    predictions: bool = False,
):
    """Re-evaluate a trained model on a split of the recipe's data (``split``, default its eval split), or on
    any labelled data ``file`` (csv, tsv, json, jsonl, parquet, CoNLL), named ``name`` (default: the file's
    stem), without the run's training data. The labels are the saved model's (its config.json), so string
    labels map through them. Writes eval_<name>_results.json (classification: also classification_report_<name>.md
    and, single-label, confusion_matrix_<name>.png) and, with ``predictions``, predictions_<name>.jsonl
    (`predict`'s lines: each row's input fields and the prediction)."""
    output_dir = Path(output_dir)
    recipe = load_output_recipe(output_dir, overrides)
    if file is not None:
        if split is not None:
            raise FinetuneError("--split and --file: give one of the two (--name names the file's results).")
        split = _file_name(Path(file), name)
    elif name is not None:
        raise FinetuneError("--name: names the results of --file; give --file FILE too.")
    split = split or (recipe.data.eval_splits[0] if recipe.data.eval_splits else None)
    if split is None:
        raise RecipeError("data.eval_split", "the recipe names no evaluation split; pass --split NAME.")
    recipe.data.eval_split = split
    if recipe.data.test_split == split:
        recipe.data.test_split = None  # evaluating it means it has labels
    temperature = read_temperature(output_dir)  # calibration.json, None without one
    task, tokenizer = restore_task(output_dir, recipe)
    task.temperature = temperature  # --predictions: calibrated scores, as `predict` gives them
    raw = task.load([split]) if file is None else _load_file(task, Path(file), split, output_dir)
    if file is None:
        task.prepare(raw)  # checks columns and label values against the saved label maps
    data = task.preprocess(raw, tokenizer)[split]
    model = restore_model(output_dir, recipe, task)
    batch_size = batch_size or recipe.training.per_device_eval_batch_size
    onnx = isinstance(model, OrtModel)  # onnxruntime on the CPU: no autocast, no device to move to
    # the same autocast as the evaluation during training; fp32 for onnxruntime and for a few-shot run (its
    # head was fitted on fp32 embeddings, and its training evaluated it in fp32)
    exact = onnx or isinstance(model, SentenceClassifier)
    with eval_trainer(
        task,
        model,
        tokenizer,
        batch_size,
        use_cpu=recipe.training.use_cpu or onnx,
        bf16=recipe.training.bf16 and not exact,
        fp16=recipe.training.fp16 and not exact,
        bf16_full_eval=recipe.training.bf16_full_eval and not exact,
        progress=True,
        by_length=True,  # batches of similar lengths: less padding; the metrics see the rows in order
    ) as trainer:
        metrics = trainer.evaluate(eval_dataset=data, metric_key_prefix="eval")
    calibration = task.calibration_logits() if temperature is not None else None
    if calibration is not None:  # the stored temperature on this data (held out unless it was fitted on it)
        metrics["eval_temperature"] = round(temperature, 6)
        metrics.update(held_out(*calibration, temperature, "eval"))
    metrics["eval_samples"] = len(raw[split])  # examples, not features (QA windows)
    metrics["split"] = split
    if file is not None:
        metrics["file"] = str(Path(file).absolute())
    atomic_write_text(output_dir / EVAL_SPLIT_FILE.format(split=split), json.dumps(metrics, indent=2) + "\n")
    write_class_report(task, output_dir, split, per_split=True)  # classification_report_<split>.md, ...
    if predictions:
        rows = predict_split(task, model, tokenizer, raw[split], batch_size, str(file or split))
        write_jsonl(output_dir / PREDICTIONS_FILE.format(split=split), rows)
    return metrics


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _file_name(path: Path, name: str | None) -> str:
    """The name of `eval --file`'s results (eval_<name>_results.json): ``--name``, else the file's stem."""
    chosen = name if name is not None else path.stem
    if not _NAME.fullmatch(chosen):
        flag = "--name" if name is not None else f"--file {path}: its name"
        raise FinetuneError(
            f"{flag} {chosen!r} cannot name the results file (eval_<name>_results.json); give "
            "--name with letters, digits, '_', '.' or '-'."
        )
    return chosen


def _load_file(task, path: Path, split: str, output_dir: Path):
    """`eval --file`: the file as the split ``split``, checked against the saved model's labels; every
    error names the file."""
    from datasets import DatasetDict

    from .data import read_data_file

    raw = DatasetDict({split: read_data_file(str(path), "--file")})
    try:
        task.prepare(raw)
    except DataError as exc:
        text = str(exc)
        if text.startswith("`task.labels`"):  # the labels are the model's: the recipe's fix does not apply
            for it in ("them", "it"):
                text = text.removesuffix(f" Add {it} to `task.labels` or fix the data.")
            text += (
                f" The model in {output_dir} knows only these labels (its config.json); evaluate a file "
                "that uses them."
            )
        raise DataError(f"--file {path}: {text}") from None
    return raw


#: `predict` reads and writes these by the file's extension; anything else is JSON Lines
DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def predict_output(
    output_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    batch_size: int = 32,
    overrides=(),
    top_k: int | None = None,
    all_scores: bool = False,
    encoding: str | None = None,
    uncalibrated: bool = False,
) -> int:
    """Read JSON Lines, CSV or TSV (by the extension), write the input fields plus label and score per row, as
    JSON Lines or, for a `.csv`/`.tsv` output, in that format.

    ``top_k``: also the K most likely labels with their probabilities (`top_k`); ``all_scores``: also every
    label's probability (`scores`). Both for text classification (not regression). Single-label scores are
    divided by the temperature stored with the model (calibration.json) unless ``uncalibrated``; the labels are
    the same either way. Everything is checked before any weights load."""
    output_dir, input_path, output_path = Path(output_dir), Path(input_path), Path(output_path)
    if top_k is not None and top_k < 1:
        raise FinetuneError(f"--top-k: must be at least 1, got {top_k}.")
    recipe = load_output_recipe(output_dir, overrides)
    records = read_input_records(input_path, encoding)
    temperature = None if uncalibrated else read_temperature(output_dir)
    task, tokenizer = restore_task(output_dir, recipe)
    task.temperature = temperature
    scores = {"top_k": top_k, "all_scores": all_scores} if top_k is not None or all_scores else {}
    if scores and not task.ranks_labels():
        flag = "--top-k" if top_k is not None else "--all-scores"
        raise FinetuneError(
            f"{flag}: ranks the labels of a classifier; this run ({recipe.task.name}"
            f"{', regression' if recipe.task.name == 'text-classification' else ''}) has none to rank. Drop {flag}."
        )
    task.check_inputs(records, str(input_path))
    model = restore_model(output_dir, recipe, task)
    results = task.predict(model, tokenizer, records, batch_size, where=str(input_path), **scores)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    delimiter = DELIMITERS.get(output_path.suffix.lower())
    if delimiter is None:
        write_jsonl(output_path, results)  # atomic: never a half-written output file
    else:
        atomic_write_text(output_path, delimited_text(results, delimiter))
    return len(results)


def read_input_records(path: Path, encoding: str | None = None) -> list[dict[str, Any]]:
    """`predict --input`: a CSV or TSV file (by its extension; a header row names the fields) or JSON Lines."""
    if not path.is_file():
        raise DataError(
            f"--input: file not found: {path}. Give a JSON Lines, CSV or TSV file, one example per line."
        )
    problem = first_undecodable(path, encoding)
    if problem is not None:
        raise DataError(encoding_message("--input", path, problem, encoding, "--encoding"))
    delimiter = DELIMITERS.get(path.suffix.lower())
    if delimiter is None:
        return read_input_jsonl(path, encoding)
    import csv

    kind = "TSV" if delimiter == "\t" else "CSV"
    with path.open(encoding=codec(encoding), newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if not header or not any(name.strip() for name in header):
            raise DataError(f"{path}: an empty {kind} file; the first line names the columns (e.g. text).")
        header = [name.strip() for name in header]
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise DataError(
                f"{path} line 1: the column {duplicated[0]!r} appears twice; name each column once."
            )
        records = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path} line {reader.line_num}: {len(row)} fields where the header has {len(header)}; "
                    f'quote a field that holds a {"tab" if kind == "TSV" else "comma"} ("like, this").'
                )
            records.append(dict(zip(header, row, strict=True)))
    if not records:
        raise DataError(f"{path}: a header and no rows; give one example per line after the header.")
    return records


def delimited_text(rows: list[dict[str, Any]], delimiter: str) -> str:
    """Rows as CSV/TSV text: the union of their fields as the header (in first-seen order); lists and
    mappings (several labels, `top_k`, `scores`) as JSON in their cell."""
    import csv
    import io

    fields: dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow(
            [
                json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else "" if v is None else v
                for v in (row.get(name) for name in fields)
            ]
        )
    return out.getvalue()


def read_input_jsonl(path: Path, encoding: str | None = None) -> list[dict[str, Any]]:
    """The records of a user's JSON Lines file (`predict --input`), strictly: a line that is not one JSON
    object is an error that names the line (`read_input_records` has checked the file is there and decodes).
    (Files this package writes are read with `outputs.read_jsonl`.)"""
    records = []
    with path.open(encoding=codec(encoding)) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {number}: not valid JSON ({exc.msg}); each line must be one JSON object."
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}.")
            records.append(record)
    if not records:
        raise DataError(f"{path}: no input lines; give one JSON object per line.")
    return records
