"""Model loading: the tokenizer, the model config and the pretrained weights a recipe names, and the safety
rules on the way (safetensors weights only unless `model.allow_pickle`, remote code only on request).

Nothing here knows the training run: each function takes the recipe and what it needs, and turns a
loading failure into a `RecipeError` that names the field to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Recipe
from .errors import RecipeError, close_matches, first_line

#: pickle weight files of a `save_pretrained` checkpoint (unpickling one can run code)
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def load_tokenizer(recipe: Recipe, **kwargs):
    """The recipe's tokenizer (``model.tokenizer_name_or_path``, else the model's); ``kwargs`` go to
    ``AutoTokenizer.from_pretrained`` (a task's extra settings, e.g. ``add_prefix_space``)."""
    from transformers import AutoTokenizer

    name = recipe.model.tokenizer_name_or_path or recipe.model.name_or_path
    field_name = (
        "model.tokenizer_name_or_path" if recipe.model.tokenizer_name_or_path else "model.name_or_path"
    )
    try:
        return AutoTokenizer.from_pretrained(
            name,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        _refuse_remote_code(recipe, name, exc)
        raise RecipeError(
            field_name, f"could not load a tokenizer from {name!r}: {first_line(exc)}"
        ) from None


def load_model_config(recipe: Recipe, overrides: dict[str, Any]):
    """The checkpoint's config with the task's settings (labels, problem type) and the recipe's
    ``model.config_overrides``; an override of an attribute the config does not have is an error."""
    from transformers import AutoConfig

    name = recipe.model.name_or_path
    try:
        config = AutoConfig.from_pretrained(
            name,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            **overrides,
        )
    except (OSError, ValueError) as exc:
        _refuse_remote_code(recipe, name, exc)
        hint = (
            " It is neither a local model directory nor a cached Hub model; check the id, or run online once."
            if not Path(name).exists()
            else ""
        )
        raise RecipeError(
            "model.name_or_path", f"could not load a model config from {name!r}: {first_line(exc)}.{hint}"
        ) from None
    for key, value in recipe.model.config_overrides.items():
        where = f"model.config_overrides.{key}"
        if key in overrides:
            raise RecipeError(where, f"is set by the task from the `task` section ({key}); set it there.")
        if not hasattr(config, key):
            known = [k for k in config.to_dict() if not k.startswith("_")]
            raise RecipeError(
                where, f"{type(config).__name__} has no attribute {key!r}{close_matches(key, known)}."
            )
        setattr(config, key, value)
    return config


def _refuse_remote_code(recipe: Recipe, name: str, exc: Exception) -> None:
    """The error for a checkpoint whose classes are Python code in its repository, run only on request."""
    if "trust_remote_code" in str(exc) and not recipe.model.trust_remote_code:
        raise RecipeError(
            "model.trust_remote_code",
            f"{name!r} needs its own Python code (a custom architecture in the checkpoint repository), and "
            "remote code is off. Read that code, then set `model.trust_remote_code: true` to run it.",
        ) from None


def check_weight_files(recipe: Recipe) -> None:
    """A local checkpoint must have safetensors weights unless `model.allow_pickle` is set.

    (A Hub checkpoint is held to the same rule when it loads: `use_safetensors` in `load_pretrained`.)
    """
    path = Path(recipe.model.name_or_path)
    if not path.is_dir():
        return
    names = {p.name for p in path.iterdir()}
    if any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        return
    pickled = sorted(names & set(PICKLE_WEIGHTS)) or sorted(n for n in names if n.endswith((".bin", ".pt")))
    if pickled and not recipe.model.allow_pickle:
        raise RecipeError(
            "model.allow_pickle",
            f"{path} has only pickle weights ({', '.join(pickled)}), and unpickling a file can run code. "
            "Convert them to safetensors, or set `model.allow_pickle: true` if you trust the checkpoint.",
        )
    if not pickled:
        raise RecipeError(
            "model.name_or_path",
            f"{path} has a config but no model weights (model.safetensors); give a directory saved with "
            "`save_pretrained`, or a Hub id.",
        )


def load_pretrained(recipe: Recipe, model_class, config):
    """The pretrained weights of ``recipe.model`` in ``model_class`` (a task's ``AutoModelFor...``) with
    ``config``; safetensors only, unless `model.allow_pickle`."""
    try:
        return model_class.from_pretrained(
            recipe.model.name_or_path,
            config=config,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            use_safetensors=None if recipe.model.allow_pickle else True,
        )
    except OSError as exc:
        if recipe.model.allow_pickle or "safetensors" not in str(exc):
            raise
        raise RecipeError(
            "model.allow_pickle",
            f"{recipe.model.name_or_path} has no safetensors weights ({first_line(exc)}). Loading its pickle "
            "weights can run code: set `model.allow_pickle: true` only if you trust the checkpoint.",
        ) from None
