"""Task registry: adding a task is one module that subclasses `Task` and calls `register_task`."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RecipeError, close_matches


@dataclass(frozen=True)
class TaskSpec:
    name: str
    config_class: type  # a TaskConfig subclass: the fields of the recipe's `task:` section
    task_class: type  # a Task subclass: data checks, preprocessing, collator, metrics, prediction
    description: str


_TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, config_class: type, description: str):
    def decorate(task_class: type) -> type:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        task_class.name = name
        _TASKS[name] = TaskSpec(name, config_class, task_class, description)
        return task_class

    return decorate


def get_task(name: str) -> TaskSpec:
    if name not in _TASKS:
        raise RecipeError(
            "task.name",
            f"unknown task {name!r}{close_matches(name, _TASKS)}; "
            f"available tasks: {', '.join(sorted(_TASKS))}.",
        )
    return _TASKS[name]


def available_tasks() -> dict[str, TaskSpec]:
    return dict(sorted(_TASKS.items()))
