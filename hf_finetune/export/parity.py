"""Parity at export: the exported model against the PyTorch one, on the run's evaluation split.

Both models go through what `hf-finetune eval` runs: the task's preprocessing, its collator and
`compute_metrics`, in a `FinetuneTrainer` prediction (fp32 on the CPU, batches in order). The report holds

- the largest absolute difference of the outputs (logits; QA: start and end logits) over the real tokens,
- the share of identical predictions: the label (argmax; multi-label: the thresholded label set; regression:
  the value within the logit tolerance) per example, per labelled token (token classification), or the
  answer text per example (question answering),
- the task metric of each model and their difference.

`check` turns a report into the verdict: an fp32 export must stay within the tolerances (`Tolerance`), an int8
one only within ``max_metric_drop`` when given. Beyond them it raises `ParityError` (exit code 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import FinetuneError
from ..labels import MULTI, REGRESSION
from ..outputs import NOT_METRICS
from ..tasks.base import lower_is_better, score_key

IGNORE = -100  # the label id of tokens without a label, and the Trainer's padding of gathered predictions


class ParityError(FinetuneError):
    """The exported model disagrees with the PyTorch one beyond the tolerance: not an input mistake, a failed
    check (exit code 1)."""

    exit_code = 1


@dataclass
class Tolerance:
    """How far an export may be from the PyTorch model. The logit and identical-prediction bounds apply to
    fp32 exports (int8 changes the logits by design); ``max_metric_drop`` (None: not checked) to both."""

    max_logit_diff: float = 1e-3
    min_identical: float = 0.999
    max_metric_drop: float | None = None


def predict(task, model, tokenizer, data, batch_size: int):
    """The Trainer's prediction of ``model`` on the tokenised split ``data``: (outputs tuple, label ids,
    metrics), with the full logits (no `preprocess_logits_for_metrics`), fp32 on the CPU."""
    from ..trainer import eval_trainer

    with eval_trainer(task, model, tokenizer, batch_size, full_logits=True) as trainer:
        result = trainer.predict(data, metric_key_prefix="eval")
    outputs = result.predictions if isinstance(result.predictions, tuple) else (result.predictions,)
    return tuple(np.asarray(o) for o in outputs), result.label_ids, result.metrics


def compare(
    task, recipe, split: str, examples: int, data, reference, exported, tolerance: Tolerance
) -> dict[str, Any]:
    """The parity report of two `predict` results (reference: PyTorch, exported: ONNX) on ``split``
    (``examples`` raw examples, tokenised into the rows of ``data``)."""
    ref_outputs, label_ids, ref_metrics = reference
    got_outputs, _, got_metrics = exported
    lengths = np.array([len(ids) for ids in data["input_ids"]])
    per_token = task.name != "text-classification"
    diff = 0.0
    for ref, got in zip(ref_outputs, got_outputs, strict=True):
        gap = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        if per_token:  # only the real tokens of each row: padding is never read
            real = np.arange(gap.shape[1])[None, :] < lengths[:, None]
            gap = gap[real]
        diff = max(diff, float(gap.max(initial=0.0)))
    same, total, unit = _agreement(task, split, ref_outputs, got_outputs, label_ids, tolerance)
    ref_scores, got_scores = _metrics(ref_metrics), _metrics(got_metrics)
    name = score_key(recipe, ref_metrics).removeprefix("eval_")
    if name not in ref_scores:  # the task ranks runs by a metric this run does not compute: its first one
        name = next(iter(ref_scores), name)
    headline = {
        "name": name,
        "pytorch": ref_scores.get(name),
        "onnx": got_scores.get(name),
        "delta": None,
        "higher_is_better": not lower_is_better(name),
    }
    if headline["pytorch"] is not None and headline["onnx"] is not None:
        headline["delta"] = headline["onnx"] - headline["pytorch"]
    return {
        "split": split,
        "examples": examples,
        "rows": len(data),
        "max_abs_logit_diff": diff,
        "identical_predictions": same / total if total else 1.0,
        "differing": total - same,
        "compared": total,
        "unit": unit,
        "metric": headline,
        "pytorch_metrics": ref_scores,
        "onnx_metrics": got_scores,
        "tolerance": asdict(tolerance),
    }


def _metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        key.removeprefix("eval_"): value
        for key, value in metrics.items()
        if key.startswith("eval_")
        and not key.endswith((*NOT_METRICS, "_time"))  # the Trainer's model_preparation_time
        and isinstance(value, (int, float))
    }


def _agreement(task, split, ref_outputs, got_outputs, label_ids, tolerance) -> tuple[int, int, str]:
    """(identical predictions, predictions compared, what one is) of the two models."""
    if task.name == "question-answering":
        ref = task.answers_for(split, *ref_outputs[:2])
        got = task.answers_for(split, *got_outputs[:2])
        return sum(a["answer"] == b["answer"] for a, b in zip(ref, got)), len(ref), "answers"
    ref, got = ref_outputs[0], got_outputs[0]
    if task.name == "token-classification":
        labels = label_ids[0] if isinstance(label_ids, tuple) else label_ids
        labelled = labels != IGNORE
        same = ref.argmax(-1)[labelled] == got.argmax(-1)[labelled]
        return int(same.sum()), int(labelled.sum()), "labelled tokens"
    if task.name == "text-classification":
        ref, got = task.documents(ref, None)[0], task.documents(got, None)[0]  # windows: per document
        problem = task.labels.problem_type
        if problem == REGRESSION:
            same = np.abs(ref - got).max(axis=-1) <= tolerance.max_logit_diff
        elif problem == MULTI:
            threshold = task.cfg.multi_label_threshold
            same = ((_sigmoid(ref) > threshold) == (_sigmoid(got) > threshold)).all(axis=-1)
        else:
            same = ref.argmax(-1) == got.argmax(-1)
        return int(same.sum()), len(same), "examples"
    same = ref.argmax(-1) == got.argmax(-1)  # a task added later: its first output's argmax
    return int(same.sum()), int(same.size), "predictions"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def problems(report: dict[str, Any], tolerance: Tolerance, quantized: bool) -> list[str]:
    """What in ``report`` is beyond ``tolerance`` (empty: parity holds)."""
    found = []
    if not quantized:
        diff, bound = report["max_abs_logit_diff"], tolerance.max_logit_diff
        if diff > bound:
            found.append(
                f"max |logit diff| {diff:.3g} exceeds the tolerance {bound:g} by {diff - bound:.3g} "
                f"({diff / bound:.1f}x; --max-logit-diff)"
            )
        share, bound = report["identical_predictions"], tolerance.min_identical
        if share < bound:
            found.append(
                f"identical predictions {share:.2%} are below {bound:.2%} by {bound - share:.2%} "
                f"({report['differing']} of {report['compared']} {report['unit']} differ; --min-identical)"
            )
    metric = report["metric"]
    if tolerance.max_metric_drop is not None and metric["delta"] is not None:
        drop = -metric["delta"] if metric["higher_is_better"] else metric["delta"]
        if drop > tolerance.max_metric_drop:
            found.append(
                f"{metric['name']} drops by {drop:.4g} ({metric['pytorch']:.4f} -> {metric['onnx']:.4f}), "
                f"more than --max-metric-drop {tolerance.max_metric_drop:g} by {drop - tolerance.max_metric_drop:.4g}"
            )
    return found


def summary(report: dict[str, Any]) -> str:
    """The parity report in one line, as `hf-finetune export` prints it."""
    metric = report["metric"]
    scores = ""
    if metric["delta"] is not None:
        scores = (
            f"; {metric['name']} {metric['pytorch']:.4f} (PyTorch) vs {metric['onnx']:.4f} (ONNX), "
            f"delta {metric['delta']:+.4f}"
        )
    return (
        f"parity on {report['split']} ({report['examples']} examples): max |logit diff| {report['max_abs_logit_diff']:.2g}, "
        f"identical predictions {report['identical_predictions']:.2%} ({report['differing']} of "
        f"{report['compared']} {report['unit']} differ){scores}"
    )
