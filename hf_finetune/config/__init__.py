"""Recipes: one dataclass per section, read from YAML, with dotted ``section.field=value`` overrides.

- `config.schema`: the section dataclasses and `Recipe`, `field_help` (imports nothing of the package
  but errors; the task modules, data and strategies import it directly).
- `config.coerce`: the YAML dialect, typed coercion of values by annotation, dotted overrides.
- `config.load`: `load_recipe`, the cross-section checks, `TrainingArguments`.

This package re-exports their public names, so ``from hf_finetune.config import load_recipe`` works.
The `config.load` names are imported on first use: a module below recipe loading (a task module, data,
a strategy) that imports `config.schema` runs this file first, and `config.load` reads the task
registry, so importing it here eagerly would make every such import a cycle.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..hardware import accelerator
from .coerce import (
    Override,
    RecipeLoader,
    apply_overrides,
    build_section,
    coerce_field,
    coerce_fields,
    describe_type,
    parse_yaml,
    section_fields,
)
from .schema import (
    DEFAULT_MODEL,
    PEFT_METHODS,
    SECTIONS,
    DataConfig,
    GradualUnfreezingConfig,
    HubConfig,
    ModelConfig,
    PeftSection,
    Recipe,
    StrategyConfig,
    TaskConfig,
    absolute_path,
    check_repo_id,
    field_help,
    is_secret,
    plain,
)

_LOAD = ("load_recipe", "build_training_arguments", "derived_training_init")

__all__ = [
    "DEFAULT_MODEL",
    "PEFT_METHODS",
    "SECTIONS",
    "DataConfig",
    "GradualUnfreezingConfig",
    "HubConfig",
    "ModelConfig",
    "Override",
    "PeftSection",
    "Recipe",
    "RecipeLoader",
    "StrategyConfig",
    "TaskConfig",
    "absolute_path",
    "accelerator",
    "apply_overrides",
    "build_section",
    "check_repo_id",
    "coerce_field",
    "coerce_fields",
    "describe_type",
    "field_help",
    "is_secret",
    "parse_yaml",
    "plain",
    "section_fields",
    *_LOAD,
]


def __getattr__(name: str) -> Any:
    if name in _LOAD:
        return getattr(import_module(".load", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
