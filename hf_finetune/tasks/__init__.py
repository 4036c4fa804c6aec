"""Tasks. Importing this package registers every built-in task."""

from . import (
    question_answering,  # noqa: F401  (registers "question-answering")
    text_classification,  # noqa: F401  (registers "text-classification")
    token_classification,  # noqa: F401  (registers "token-classification")
)
from .base import Task
from .registry import TaskSpec, available_tasks, get_task, register_task

__all__ = ["Task", "TaskSpec", "available_tasks", "get_task", "register_task"]
