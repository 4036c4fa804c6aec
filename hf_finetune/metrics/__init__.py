"""Offline metrics: `evaluate.Metric` modules that live in this package.

``load_metric("glue/sst2")`` or ``load_metric("seqeval")`` instantiates the module locally; nothing is
fetched from the Hub.
"""

from __future__ import annotations

from .classification import GLUE_TASKS, Classification, Glue, MultiLabel, Regression, glue_task
from .sequence_labeling import Seqeval
from .squad import Squad

__all__ = [
    "GLUE_TASKS",
    "Classification",
    "Glue",
    "MultiLabel",
    "Regression",
    "Seqeval",
    "Squad",
    "available_metrics",
    "glue_task",
    "load_metric",
]

_SIMPLE = {
    "accuracy": (Classification, "multiclass"),
    "classification": (Classification, "multiclass"),
    "classification/binary": (Classification, "binary"),
    "multilabel": (MultiLabel, None),
    "regression": (Regression, None),
    "seqeval": (Seqeval, "default"),
    "seqeval/strict": (Seqeval, "strict"),
    "squad": (Squad, "v1"),
    "squad_v2": (Squad, "v2"),
}


def available_metrics() -> list[str]:
    return sorted(_SIMPLE) + [f"glue/{t}" for t in GLUE_TASKS]


def load_metric(name: str):
    """An `evaluate.Metric` by name: 'glue/<task>', 'classification[/binary]', 'multilabel', 'regression',
    'seqeval[/strict]', 'squad', 'squad_v2'."""
    if name.startswith("glue/"):
        task = name.split("/", 1)[1]
        if task not in GLUE_TASKS:
            raise KeyError(name)
        return Glue(config_name=task, keep_in_memory=True)
    cls, config = _SIMPLE[name]
    return cls(config_name=config, keep_in_memory=True)
