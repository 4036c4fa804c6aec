"""User-facing errors.

Every mistake in a recipe, a data file or a command line raises a subclass of
:class:`FinetuneError`. The CLI prints its message (no traceback) and exits with code 2.
Messages name the field or file and say what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FinetuneError(Exception):
    """A problem with the user's input; the message says where and how to fix it."""

    exit_code = 2


class RecipeError(FinetuneError):
    """A recipe field is missing, unknown, mistyped or inconsistent."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        super().__init__(f"`{field}`: {message}" if field else message)


class DataError(FinetuneError):
    """The data does not match what the recipe says (files, splits, columns, labels)."""


def first_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of an exception's message (its class name when the message is empty), cut to
    ``limit`` characters: the cause to quote inside one of our own messages."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the candidates that look like ``word``, or ''."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(word, candidates, n=n, cutoff=0.6)
    if len(word) >= 3:  # `name` -> `name_or_path`
        matches += [c for c in candidates if c.startswith(word) and c not in matches][
            : max(0, n - len(matches))
        ]
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""
