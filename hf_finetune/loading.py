"""Model loading: the tokenizer, the model config and the pretrained weights a recipe names, and the safety
rules on the way (safetensors weights only unless `model.allow_pickle`, remote code only on request).

Nothing here knows the training run: each function takes the recipe and what it needs, and turns a
loading failure into a `RecipeError` that names the field to change.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from .config import Recipe
from .errors import RecipeError, close_matches, first_line

logger = logging.getLogger(__name__)

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
    if recipe.model.num_layers is not None:
        cut_layers(config, recipe.model.num_layers, name)
    return config


def cut_layers(config, num_layers: int, name: str) -> None:
    """``config`` set to build the bottom ``num_layers`` transformer layers only (`model.num_layers`)."""
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise RecipeError(
            "model.num_layers",
            f"{type(config).__name__} of {name!r} has no `num_hidden_layers`, so its depth cannot be cut; "
            "drop `model.num_layers`, or pick an encoder checkpoint (BERT, RoBERTa, DeBERTa, ELECTRA, ...).",
        )
    if not 1 <= num_layers <= depth:
        raise RecipeError(
            "model.num_layers",
            f"is {num_layers}, but {name!r} has {depth} layers; give a number from 1 to {depth}.",
        )
    config.num_hidden_layers = num_layers
    per_layer = getattr(config, "layer_types", None)  # newer configs list each layer's kind
    if isinstance(per_layer, list) and len(per_layer) == depth:
        config.layer_types = per_layer[:num_layers]


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
    if not pickled and "model.onnx" in names:  # hf_finetune.export.runtime.ONNX_FILE
        raise RecipeError(
            "model.name_or_path",
            f"{path} is an ONNX export (model.onnx), which runs `eval` and `predict` only; train from the run "
            "it was exported from (its export.json names it under source.run).",
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
    cut = recipe.model.num_layers is not None
    try:
        loaded = model_class.from_pretrained(
            recipe.model.name_or_path,
            config=config,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
            use_safetensors=None if recipe.model.allow_pickle else True,
            output_loading_info=cut,
        )
    except OSError as exc:
        if recipe.model.allow_pickle or "safetensors" not in str(exc):
            raise
        raise RecipeError(
            "model.allow_pickle",
            f"{recipe.model.name_or_path} has no safetensors weights ({first_line(exc)}). Loading its pickle "
            "weights can run code: set `model.allow_pickle: true` only if you trust the checkpoint.",
        ) from None
    if not cut:
        return loaded
    model, info = loaded
    check_cut(model, info, recipe.model.name_or_path)
    return model


def check_cut(model, info: dict[str, Any], name: str) -> None:
    """After loading the bottom N layers (`model.num_layers`): every weight of the kept layers and the
    embeddings came from the checkpoint, and the weights it did not load are those of the layers cut."""
    from .strategies.layers import EMBEDDINGS, discover_layout, layer_part

    layout = discover_layout(model)
    kept = [n for i in range(layout.num_layers) for n in layout.params_of(layer_part(i))]
    kept += layout.params_of(EMBEDDINGS)
    missing = [k for k in info.get("missing_keys", ()) if any(n == k or n.endswith("." + k) for n in kept)]
    if missing:
        raise RecipeError(
            "model.num_layers",
            f"{name!r} has no pretrained weights for {len(missing)} parameters of the layers kept "
            f"(e.g. {sorted(missing)[0]}); its checkpoint does not match its config. Drop `model.num_layers`.",
        )
    prefix = getattr(model, "base_model_prefix", "") or ""
    container = layout.layers_module.removeprefix(prefix + ".") if prefix else layout.layers_module
    index = re.compile(rf"(?:^|\.){re.escape(container)}\.(\d+)\.")
    dropped, other = set(), []
    for key in info.get("unexpected_keys", ()):
        found = index.search(key)
        if found and int(found.group(1)) >= layout.num_layers:
            dropped.add(int(found.group(1)))
        else:
            other.append(key)
    if other:
        logger.warning(
            "model.num_layers: %s also has %d weights outside the dropped layers that the model does not "
            "use (e.g. %s)",
            name,
            len(other),
            sorted(other)[0],
        )
    logger.info(
        "model.num_layers: kept the bottom %d layers of %s with their pretrained weights; dropped layers %s",
        layout.num_layers,
        name,
        ", ".join(map(str, sorted(dropped))) or "none",
    )
