"""Recipes: one dataclass per section, read from YAML, with dotted ``section.field=value`` overrides.

- `config.schema`: the section dataclasses and `Recipe`, `field_help` (imports nothing of the package
  but errors; the task modules, data and strategies import it directly).
- `config.coerce`: the YAML dialect, typed coercion of values by annotation, dotted overrides.
- `config.load`: `load_recipe`, the cross-section checks, `TrainingArguments`.

This package re-exports the names of `schema` and `coerce`, not those of `load`: a module below recipe
loading (a task module, data, a strategy) that imports `config.schema` runs this file first, and
`config.load` reads the task registry, so this file importing it would put every such module in a
cycle. Load a recipe with ``from hf_finetune.config.load import load_recipe`` (or
``hf_finetune.load_recipe``).
"""

from __future__ import annotations

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
    DistillConfig,
    EarlyStoppingConfig,
    FewShotSection,
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

__all__ = [
    "DEFAULT_MODEL",
    "PEFT_METHODS",
    "SECTIONS",
    "DataConfig",
    "DistillConfig",
    "EarlyStoppingConfig",
    "GradualUnfreezingConfig",
    "HubConfig",
    "ModelConfig",
    "Override",
    "FewShotSection",
    "PeftSection",
    "Recipe",
    "RecipeLoader",
    "StrategyConfig",
    "TaskConfig",
    "absolute_path",
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
]
