"""The recipe's ``peft`` section as a `peft` config, applied to the task model.

- ``task_type`` comes from the task class (its ``peft_task_type``: SEQ_CLS, TOKEN_CLS, QUESTION_ANS).
- The task head is found by introspection (everything outside the base model, see layers.py) and goes
  to ``modules_to_save``: it is trained whole and saved with the adapter. It is never a LoRA target.
- ``target_modules: auto``: LoRA adapts every ``nn.Linear`` inside the transformer blocks (attention
  projections and the feed-forward layers); IA3 uses peft's table for the architecture.
- Method x task combinations that peft cannot train are refused up front: each task class lists them
  in ``refused_peft_methods``, with the reason.

Everything here also runs on a ``meta``-device model, so errors come before any weights load.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..config.schema import PeftSection, Recipe
from ..errors import RecipeError, first_line
from ..tasks import get_task
from .layers import HEAD, discover_layout

PROMPT_METHODS = ("prefix_tuning", "prompt_tuning", "p_tuning")


def head_modules(model: nn.Module) -> list[str]:
    """Top-level modules of the task head: classifier, pre_classifier, qa_outputs, DeBERTa's pooler..."""
    layout = discover_layout(model)
    return [name.split(".")[0] for name in layout.modules.get(HEAD, [])]


def auto_lora_targets(model: nn.Module) -> str:
    """A regex (peft full-matches it against module names) for every Linear inside the transformer blocks."""
    layout = discover_layout(model)
    container = model.get_submodule(layout.layers_module)
    names: list[str] = []
    for block in container:
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) and name not in names:
                names.append(name)
    if not names:
        raise RecipeError(
            "peft.target_modules", "found no linear layers in the transformer blocks; list them."
        )
    alternatives = "|".join(re.escape(n) for n in names)
    return rf"{re.escape(layout.layers_module)}\.\d+\.(?:{alternatives})"


def peft_config(section: PeftSection, task_name: str, model: nn.Module) -> Any:
    import peft

    method = section.method
    task = get_task(task_name).task_class
    refused = task.refused_peft_methods
    if method in refused:
        raise RecipeError("peft.method", f"{method} does not work for {task_name}: {refused[method]}.")
    task_type = task.peft_task_type
    if task_type is None:
        raise RecipeError(
            "peft.method", f"{task_name} has no PEFT task type, so peft cannot wrap its model; drop `peft`."
        )
    heads = head_modules(model)
    to_save = list(dict.fromkeys(heads + list(section.modules_to_save)))
    _check_modules_exist(model, section.modules_to_save)
    if method == "lora":
        targets = (
            auto_lora_targets(model) if section.target_modules == "auto" else list(section.target_modules)
        )
        _check_not_head(targets, heads)
        return peft.LoraConfig(
            task_type=task_type,
            r=section.r,
            lora_alpha=section.alpha,
            lora_dropout=section.dropout,
            target_modules=targets,
            use_dora=section.use_dora,
            use_rslora=section.use_rslora,
            modules_to_save=to_save,
        )
    if method == "ia3":
        from peft.utils.constants import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        )
        from peft.utils.constants import (
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
        )

        model_type = getattr(model.config, "model_type", None)
        if section.target_modules == "auto":
            if model_type not in TARGETS:
                raise RecipeError(
                    "peft.target_modules",
                    f"peft has no default IA3 modules for model type {model_type!r}; list the key/value and "
                    "feed-forward linear layers to scale (`hf-finetune plan` shows the module names).",
                )
            targets, feedforward = list(TARGETS[model_type]), list(FEEDFORWARD.get(model_type, []))
        else:
            targets, feedforward = list(section.target_modules), []
        _check_not_head(targets, heads)
        return peft.IA3Config(
            task_type=task_type,
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=to_save,
        )
    common = dict(task_type=task_type, num_virtual_tokens=section.num_virtual_tokens, modules_to_save=to_save)
    if method == "prompt_tuning":
        return peft.PromptTuningConfig(**common)
    if method == "prefix_tuning":
        return peft.PrefixTuningConfig(**common)
    if method == "p_tuning":
        return peft.PromptEncoderConfig(**common, encoder_hidden_size=model.config.hidden_size)
    raise AssertionError(method)


def wrap(model: nn.Module, recipe: Recipe):
    """The task model wrapped by peft as the recipe says (a `peft.PeftModel`)."""
    import peft

    config = peft_config(recipe.peft, recipe.task.name, model)
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        field = "peft.target_modules" if "target" in str(exc).lower() else "peft"
        raise RecipeError(field, f"peft refused the model: {first_line(exc, 300)}") from None


def _check_not_head(targets: list[str] | str, heads: list[str]) -> None:
    if isinstance(targets, str):
        return
    for target in targets:
        if target in heads or any(target.startswith(h + ".") for h in heads):
            raise RecipeError(
                "peft.target_modules",
                f"{target!r} is part of the task head ({', '.join(heads)}), which trains whole "
                "(modules_to_save); target the encoder's linear layers instead.",
            )


def _check_modules_exist(model: nn.Module, names: list[str]) -> None:
    modules = [n for n, _ in model.named_modules()]
    for i, name in enumerate(names):
        if not any(m == name or m.endswith("." + name) for m in modules):
            raise RecipeError(
                f"peft.modules_to_save[{i}]", f"no module named {name!r} in {type(model).__name__}."
            )


def is_peft_model(model: Any) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")
