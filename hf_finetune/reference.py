"""The field reference of the documentation, generated from the code: every recipe section, the bench file's
settings and the search space's, each field with its type, default and help text.

The help texts are the dataclasses' own (``field_help`` metadata; ``TrainingArguments``' metadata for the
``training`` section), so the reference cannot drift from what the loader accepts. The docs site calls
:func:`table` for each ``<!-- reference: KEY -->`` line (``docs_hooks/reference.py``); the tests check that every
field of every section appears in the built site.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from typing import Any

from .config import coerce, schema

#: what the recipe loader reads besides TrainingArguments' own fields
RESUME_HELP = (
    "hf-finetune's own: `auto` continues from the newest complete checkpoint in the output dir (a fresh start "
    "when there is none), a directory continues from that checkpoint; null starts fresh. How to run, not what "
    "to train: it is not written to the saved recipe.yaml (`hf-finetune train --resume` sets it)."
)
EARLY_STOPPING_HELP = (
    "hf-finetune's own: stop training when the monitored metric has not improved for `patience` evaluations in "
    "a row, and keep the best evaluation's model (transformers' `EarlyStoppingCallback`). `true` (patience 3), "
    "a number (the patience) or a mapping of the fields in the table below; null: off. It monitors the task's "
    "headline metric (the one `bench` and `tune` score by) unless `metric_for_best_model` names another "
    "(lower is better for loss-like metrics). It needs an eval split and `eval_strategy` other than `no`; it "
    "sets `load_best_model_at_end`, a checkpoint at each evaluation (`save_strategy`/`save_steps` as "
    "`eval_strategy`/`eval_steps`, unless the recipe sets them otherwise, which is an error), keeps 2 "
    "checkpoints at least (the best and the newest) and, without `eval_steps`, evaluates every 10% of the steps. "
    "Part of the run: written to recipe.yaml."
)


def _sections() -> dict[str, type]:
    """Table key -> the dataclass it documents (imported on use: the bench, tune and task modules are heavy)."""
    from .bench.spec import BenchSettings, TaskEntry
    from .tasks import available_tasks
    from .tune.space import ParamSpec, PrunerSettings, SamplerSettings

    keys: dict[str, type] = {f"task.{name}": spec.config_class for name, spec in available_tasks().items()}
    keys.update(
        {
            "model": schema.ModelConfig,
            "data": schema.DataConfig,
            "strategy": schema.StrategyConfig,
            "strategy.gradual_unfreezing": schema.GradualUnfreezingConfig,
            "strategy.distill": schema.DistillConfig,
            "training.early_stopping": schema.EarlyStoppingConfig,
            "peft": schema.PeftSection,
            "few_shot": schema.FewShotSection,
            "hub": schema.HubConfig,
            "bench": BenchSettings,
            "bench.task": TaskEntry,
            "space.sampler": SamplerSettings,
            "space.pruner": PrunerSettings,
            "space.parameter": ParamSpec,
        }
    )
    return keys


def keys() -> list[str]:
    """Every table the reference can generate: ``task.<name>`` per registered task, each recipe section,
    ``training``, and the bench-file and search-space tables."""
    return [*_sections(), "training"]


def rows(key: str) -> list[tuple[str, str, str, str]]:
    """(field, type, default, help) for each field of the table ``key``."""
    if key == "training":
        return _training_rows()
    sections = _sections()
    if key not in sections:
        raise KeyError(f"no reference table {key!r}; tables: {', '.join(keys())}")
    cls = sections[key]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        help_text = f.metadata.get("help")
        if not help_text:
            raise ValueError(f"{cls.__name__}.{f.name} has no help text: declare it with field_help(...)")
        default = _default(f)
        if key.startswith("task.") and f.name == "name":
            default = key.removeprefix("task.")  # the section's own task, not the base class's default
        out.append((f.name, coerce.describe_type(hints[f.name]), default, help_text))
    return out


def _training_rows() -> list[tuple[str, str, str, str]]:
    """TrainingArguments' fields; where hf-finetune has a default of its own (`config.defaults`), it is the
    default shown, with transformers' and the reason next to the help text."""
    from transformers import TrainingArguments

    from .config.defaults import documented_defaults

    ours = documented_defaults()
    hints = typing.get_type_hints(TrainingArguments)
    out = []
    for f in dataclasses.fields(TrainingArguments):
        if not f.init or f.name.startswith("_") or schema.is_secret(f.name):
            continue
        help_text = f.metadata.get("help") or "(transformers gives no help text)"
        default = _default(f)
        if f.name in ours:
            own = ours[f.name]
            help_text = (
                f"**hf-finetune's default: {_yaml_inline(own.value)}** ({own.why}; transformers' default: "
                f"{default}{'; ' + own.when if own.when else ''}). {help_text}"
            )
            default = _yaml_inline(own.value)
        out.append((f.name, coerce.describe_type(hints.get(f.name, Any)), default, help_text))
    out.append(("resume", "text or null", "null", RESUME_HELP))
    out.append(("early_stopping", "mapping, true, integer or null", "null", EARLY_STOPPING_HELP))
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return _yaml_inline(value)


def _yaml_inline(value: Any) -> str:
    """A default as it would be written in a recipe: null, true, 3, 5e-05, text, [a, b], {}."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value) if value != "" else '""'
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.dumps(schema.plain(value), default=str)


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped, and `<`/`>` outside code spans shown as text (not as HTML)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def table(key: str) -> str:
    """The Markdown table of ``key``'s fields (in a ``div.reference``, which the site's stylesheet lays out);
    field names are code, each anchored as ``<key>-<field>`` with dots as dashes (``data-files``)."""
    lines = [
        '<div class="reference" markdown>',
        "",
        "| field | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, type_text, default, help_text in rows(key):
        anchor = f"{key}.{name}".replace(".", "-")
        default = default.replace("|", "\\|")
        lines.append(
            f'| <span id="{anchor}"></span>`{name}` | {_cell(type_text)} | `{default}` | {_cell(help_text)} |'
        )
    lines += ["", "</div>"]
    return "\n".join(lines)
