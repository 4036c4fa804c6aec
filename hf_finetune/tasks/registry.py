"""Task registry: adding a task is one module that subclasses `Task` and calls `register_task`.

A task module outside this package registers when it is imported. So that every process of a run
(`hf-finetune` itself, a bench cell, a tune trial, an `accelerate launch` worker) knows it, name the module
in the environment variable ``HF_FINETUNE_TASK_MODULES`` (comma-separated module names), or declare it as
an entry point of the group ``hf_finetune.tasks`` in the distribution that ships it; both are imported the
first time a task is looked up.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass

from ..errors import RecipeError, close_matches


@dataclass(frozen=True)
class TaskSpec:
    name: str
    config_class: type  # a TaskConfig subclass: the fields of the recipe's `task:` section
    task_class: type  # a Task subclass: data checks, preprocessing, collator, metrics, prediction
    description: str


_TASKS: dict[str, TaskSpec] = {}
MODULES_ENV = "HF_FINETUNE_TASK_MODULES"
ENTRY_POINTS = "hf_finetune.tasks"
_PLUGINS_LOADED: set[str] = set()
logger = logging.getLogger(__name__)
#: the facts every task class sets (see `Task` in tasks/base.py); checked when it registers
REQUIRED_FACTS = ("auto_class", "card_title", "usage_example", "peft_task_type")


def register_task(name: str, config_class: type, description: str):
    """Class decorator: register a `Task` subclass as ``name``, its ``task:`` section being ``config_class``."""

    def decorate(task_class: type) -> type:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        missing = [fact for fact in REQUIRED_FACTS if not hasattr(task_class, fact)]
        if missing:
            raise TypeError(
                f"task {name!r}: {task_class.__name__} does not set {', '.join(missing)} "
                "(class attributes documented on hf_finetune.tasks.base.Task)"
            )
        task_class.name = name
        _TASKS[name] = TaskSpec(name, config_class, task_class, description)
        return task_class

    return decorate


def load_task_modules() -> list[str]:
    """Import the task modules named in $HF_FINETUNE_TASK_MODULES and by ``hf_finetune.tasks`` entry points
    (each once per process); returns the names imported by this call. A module that fails to import is an
    error naming it and the variable or entry point, not a task silently missing."""
    from importlib.metadata import entry_points

    wanted = [(m.strip(), f"${MODULES_ENV}") for m in os.environ.get(MODULES_ENV, "").split(",") if m.strip()]
    wanted += [
        (ep.value.split(":")[0], f"entry point {ep.name!r}") for ep in entry_points(group=ENTRY_POINTS)
    ]
    imported = []
    for module, where in wanted:
        if module in _PLUGINS_LOADED:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise RecipeError(
                "task.name",
                f"the task module {module!r} ({where}) does not import: {exc}. Fix the module name or "
                "make it importable (installed, or on PYTHONPATH).",
            ) from exc
        _PLUGINS_LOADED.add(module)
        imported.append(module)
        logger.debug("task module %s imported (%s)", module, where)
    return imported


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        load_task_modules()
    if name not in _TASKS:
        raise RecipeError(
            "task.name",
            f"unknown task {name!r}{close_matches(name, _TASKS)}; "
            f"available tasks: {', '.join(sorted(_TASKS))}.",
        )
    return _TASKS[name]


def available_tasks() -> dict[str, TaskSpec]:
    load_task_modules()
    return dict(sorted(_TASKS.items()))
