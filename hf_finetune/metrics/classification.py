"""Text-classification metrics as `evaluate` modules, instantiated locally (never fetched)."""

from __future__ import annotations

import datasets
import evaluate

from . import functional as F

GLUE_TASKS = (
    "cola",
    "sst2",
    "mrpc",
    "stsb",
    "qqp",
    "mnli",
    "mnli_matched",
    "mnli_mismatched",
    "qnli",
    "rte",
    "wnli",
    "hans",
    "ax",
)


def glue_task(dataset: str | None, config: str | None) -> str | None:
    """The GLUE task a recipe's ``data.dataset`` / ``data.config`` name (``glue`` or ``nyu-mll/glue``
    with a GLUE config such as ``sst2``), else None."""
    if dataset and dataset.rstrip("/").split("/")[-1] == "glue" and config in GLUE_TASKS:
        return config
    return None


_CITATION = "Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding (2018)."


def _features(kind: str) -> datasets.Features:
    dtype = {"int": "int64", "float": "float32"}[kind]
    return datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)})


class Glue(evaluate.Metric):
    """The official metric of each GLUE task: CoLA Matthews correlation; STS-B Pearson and Spearman;
    MRPC and QQP F1 and accuracy; the others accuracy."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in GLUE_TASKS:
            raise KeyError(f"GLUE task must be one of {', '.join(GLUE_TASKS)}, got {self.config_name!r}")
        return evaluate.MetricInfo(
            description=self.__doc__,
            citation=_CITATION,
            inputs_description="predictions and references: class ids (STS-B: scores).",
            features=_features("float" if self.config_name == "stsb" else "int"),
        )

    def _compute(self, predictions, references):
        task = self.config_name
        if task == "cola":
            return {"matthews_correlation": F.matthews_correlation(predictions, references)}
        if task == "stsb":
            return {
                "pearson": F.pearson(predictions, references),
                "spearmanr": F.spearman(predictions, references),
            }
        if task in ("mrpc", "qqp"):
            return {"accuracy": F.accuracy(predictions, references), "f1": F.f1(predictions, references)}
        return {"accuracy": F.accuracy(predictions, references)}


class Classification(evaluate.Metric):
    """Accuracy and F1: binary F1 of class 1 for two classes (config 'binary'), macro F1 otherwise."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.__doc__, citation="", inputs_description="class ids", features=_features("int")
        )

    def _compute(self, predictions, references):
        average = "binary" if self.config_name == "binary" else "macro"
        return {
            "accuracy": F.accuracy(predictions, references),
            "f1": F.f1(predictions, references, average=average),
        }


class MultiLabel(evaluate.Metric):
    """Multi-label: micro and macro F1 over label slots, and subset (exact-set) accuracy."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.__doc__,
            citation="",
            inputs_description="multi-hot 0/1 vectors",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int8")),
                    "references": datasets.Sequence(datasets.Value("int8")),
                }
            ),
        )

    def _compute(self, predictions, references):
        import numpy as np

        p, r = np.asarray(predictions), np.asarray(references)
        per_label = [F.f1(p[:, j], r[:, j]) for j in range(p.shape[1])]
        tp = float((p & r).sum())
        fp = float((p & (1 - r)).sum())
        fn = float(((1 - p) & r).sum())
        return {
            "f1_micro": F._prf(tp, fp, fn),
            "f1_macro": float(np.mean(per_label)),
            "subset_accuracy": float((p == r).all(axis=1).mean()),
        }


class Regression(evaluate.Metric):
    """Pearson and Spearman correlation and mean squared error."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.__doc__, citation="", inputs_description="scores", features=_features("float")
        )

    def _compute(self, predictions, references):
        return {
            "pearson": F.pearson(predictions, references),
            "spearmanr": F.spearman(predictions, references),
            "mse": F.mse(predictions, references),
        }
