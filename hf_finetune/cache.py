"""The package's on-disk cache: the calibrated peak FLOP/s and tokenised datasets.

Root: ``$HF_FINETUNE_CACHE``, else ``$XDG_CACHE_HOME/hf_finetune``, else ``~/.cache/hf_finetune``.

A tokenised split is stored as one Arrow file named by a key over everything that decides its
contents: the raw split (its `datasets` fingerprint, which covers the source files, their
modification times and any subsampling), the tokenizer (its full serialised state, not its name),
the task and data sections of the recipe, the label schema, the task module's source and the package
version. Change any of them and the split is tokenised again; change nothing and it is read back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

#: bumped when the key's recipe changes, so old entries are never read under new rules
KEY_VERSION = 1
#: data fields that do not change what tokenisation produces (padding happens in the collator)
_DATA_FIELDS_IGNORED = ("padding", "cache_tokenised")
#: tokenizer init kwargs that are locations, not behaviour
_TOKENIZER_PATH_KWARGS = ("name_or_path", "_commit_hash", "vocab_file", "merges_file", "tokenizer_file")


def cache_dir() -> Path:
    root = os.environ.get("HF_FINETUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hf_finetune"
    )
    return Path(root)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does: its serialised pipeline (fast) or vocabulary (slow), and options.

    The truncation/padding state a fast tokenizer keeps from its last call is left out, so the
    fingerprint is the same before and after the tokenizer has been used.
    """
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(json.dumps(sorted(map(str, getattr(tokenizer, "all_special_tokens", [])))).encode())
    options = {
        key: value
        for key, value in tokenizer.init_kwargs.items()
        if key not in _TOKENIZER_PATH_KWARGS and isinstance(value, str | int | float | bool | type(None))
    }
    options["model_max_length"] = tokenizer.model_max_length
    options["padding_side"] = tokenizer.padding_side
    options["truncation_side"] = tokenizer.truncation_side
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


def preprocessing_key(task, ds, split: str, tokenizer, extra: Any = None) -> str:
    """The key of one tokenised split (see the module docstring for what goes in)."""
    from . import __version__

    recipe = task.recipe
    data = {k: v for k, v in dataclasses.asdict(recipe.data).items() if k not in _DATA_FIELDS_IGNORED}
    module = inspect.getmodule(type(task))
    source = Path(inspect.getsourcefile(module)).read_bytes() if module else b""
    parts = {
        "key_version": KEY_VERSION,
        "package": __version__,
        "task": task.name,
        "task_source": hashlib.sha256(source).hexdigest(),
        "task_config": dataclasses.asdict(recipe.task),
        "data": data,
        "labels": repr(getattr(task, "labels", None)),
        "split": split,
        "rows": len(ds),
        "raw": ds._fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "extra": extra,
    }
    blob = json.dumps(parts, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def tokenised_path(key: str) -> Path:
    return cache_dir() / "tokenised" / f"{key}.arrow"
