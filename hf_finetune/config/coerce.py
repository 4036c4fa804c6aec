"""Typed values for the recipe's dataclasses: YAML scalars, dotted overrides and coercion by annotation.

Every key of a section is checked against the dataclass's fields (unknown keys fail with close
matches) and every value against the field's type annotation, so a wrong value fails naming the
field and the type it wants before any data or weights are touched. Command-line overrides
(``section.field=value``) are read in the recipe's own YAML dialect with the field's type in mind.
Bench files and search spaces go through the same functions as recipes, so their errors read alike.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import yaml

from ..errors import RecipeError, close_matches
from .schema import SECTIONS


# --------------------------------------------------------------------------------------------
# YAML: 1.2-style scalars. PyYAML follows YAML 1.1, where `no`/`on` are booleans (so
# `eval_strategy: no` would arrive as False) and `3e-5` is a string. Recipes are full of both.
# Overrides are read in the same dialect, so it lives here.
# --------------------------------------------------------------------------------------------
class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans (true/false only) and exponent floats without a dot."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """``text`` read in the recipe dialect; a syntax error is a RecipeError naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(
            None, f"{source}: YAML syntax error{where}: {problem}. Fix the YAML syntax."
        ) from None


def build_section(cls: type, raw: Any, section: str) -> Any:
    """An instance of the section dataclass ``cls`` from the mapping ``raw`` (None: all defaults), every
    value coerced to its field's type; errors name ``section.field``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(section, f"expected a mapping of fields, got {type(raw).__name__} ({raw!r}).")
    values = coerce_fields(cls, raw, section)
    try:
        return cls(**values)
    except RecipeError:
        raise
    except (ValueError, TypeError) as exc:
        raise RecipeError(section, str(exc)) from None


def section_fields(cls: type) -> dict[str, Any]:
    """Public init fields of a section dataclass with their resolved type annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}


def coerce_fields(cls: type, raw: dict[str, Any], section: str) -> dict[str, Any]:
    """``raw``'s values coerced to the types of ``cls``'s fields (not instantiated); an unknown key fails."""
    known = section_fields(cls)
    values = {}
    for key, value in raw.items():
        key = str(key)
        if key not in known:
            hint = close_matches(key, known)
            listing = "" if hint else f"; fields of `{section}` are: {', '.join(sorted(known))}"
            raise RecipeError(f"{section}.{key}", f"unknown field{hint}{listing}.")
        values[key] = coerce_field(value, known[key], f"{section}.{key}")
    return values


# --------------------------------------------------------------------------------------------
# Overrides and type coercion
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Override:
    """A value typed on the command line: parsed with the field's type in mind."""

    text: str

    def parsed(self, empty: Any = "") -> Any:
        """The text read as a YAML value (so `3e-5` is a number), or as typed when it is not valid YAML."""
        text = self.text.strip()
        if not text:
            return empty
        try:
            return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            return self.text


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> None:
    """Set each ``section.field=value`` of ``overrides`` in the raw recipe mapping ``raw`` (in place).

    A value is kept as an :class:`Override`, read later with the field's type in mind (so `3e-5` is a
    number for a float field and `007` stays text for a text field).
    """
    for item in overrides:
        if "=" not in item:
            raise RecipeError(
                None,
                f"override '{item}' is not `section.field=value` (for example training.learning_rate=3e-5).",
            )
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".")]
        if len(parts) < 2 or not all(parts):
            raise RecipeError(
                key, "an override names `section.field` (for example data.max_train_samples=4000)."
            )
        if parts[0] not in SECTIONS:
            raise RecipeError(
                parts[0],
                f"unknown recipe section{close_matches(parts[0], SECTIONS)}; "
                f"sections are: {', '.join(SECTIONS)}.",
            )
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node.get(part), str) and depth == 0 and part == "task":
                node[part] = {"name": node[part]}
            child = node.setdefault(part, {})
            if child is None or child is True:  # `gradual_unfreezing: true` + a sub-field override
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(
                    ".".join(parts[: depth + 1]), "is not a mapping, so it has no sub-fields to override."
                )
            node = child
        node[parts[-1]] = Override(text)


class _Mismatch(Exception):
    pass


class _BadChoice(_Mismatch):
    """A text value outside a closed set of choices: never rescued by the raw-text fallback."""


def coerce_field(value: Any, tp: Any, path: str) -> Any:
    """``value`` as the annotation ``tp`` says (sub-sections built too); a RecipeError naming ``path``."""
    nested = _nested_section(tp)
    if nested is not None:
        return _coerce_section(value, tp, nested, path)
    try:
        return _coerce(value, tp)
    except _Mismatch as exc:
        shown = value.text if isinstance(value, Override) else value
        detail = f" {exc}" if str(exc) else ""
        raise RecipeError(
            path, f"expected {describe_type(tp)}, got {shown!r} ({_kind(shown)}).{detail}"
        ) from None


def _nested_section(tp: Any) -> type | None:
    """The dataclass of a sub-section field (``X`` or ``X | None``), else None."""
    for candidate in _union_args(tp) or (tp,):
        if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
            return candidate
    return None


def _coerce_section(value: Any, tp: Any, cls: type, path: str) -> Any:
    """A sub-section: a mapping of its fields; `true` means its defaults, `false`/null means off (if optional)."""
    if isinstance(value, Override):
        value = value.parsed(empty=None)
    optional = type(None) in (_union_args(tp) or ())
    if isinstance(value, cls):
        return value
    if value is True:
        value = {}
    if value is None or value is False:
        if optional:
            return None
        raise RecipeError(path, f"expected a mapping of fields, got {value!r}.")
    return build_section(cls, value, path)


def _kind(value: Any) -> str:
    if isinstance(value, Override):
        return "text"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "text",
        list: "list",
        dict: "mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _accepts_str(tp: Any) -> bool:
    args = _union_args(tp)
    if args is not None:
        return any(_accepts_str(a) for a in args)
    return tp is str or tp is Any


def _coerce(value: Any, tp: Any) -> Any:
    if isinstance(value, Override):
        parsed = value.parsed()
        try:
            return _coerce(parsed, tp)
        except _BadChoice:
            raise
        except _Mismatch:
            if _accepts_str(tp) and not isinstance(parsed, (list, dict)):
                return value.text
            raise
    if tp is Any or tp is object:
        return value
    args = _union_args(tp)
    if args is not None:
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch()
        enum_choices = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enum_choices and isinstance(value, str):
            allowed = [m.value for e in enum_choices for m in e]
            if value not in allowed:
                raise _BadChoice(
                    f"Allowed: {', '.join(map(str, allowed))}.{close_matches(value, map(str, allowed))}"
                )
            return value
        for candidate in args:
            if candidate is type(None):
                continue
            try:
                return _coerce(value, candidate)
            except _Mismatch:
                continue
        raise _Mismatch()
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise _BadChoice(close_matches(str(value), map(str, choices)).strip())
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch()
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise _Mismatch()
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch() from None
        raise _Mismatch()
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        if value in [m.value for m in tp]:
            return value
        raise _Mismatch()
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise _Mismatch()
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch()
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp): _coerce(v, val_tp) for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch()
    return value


def describe_type(tp: Any) -> str:
    """A type annotation in words, for error messages and the docs: ``int | None`` -> "an integer or null"."""
    args = _union_args(tp)
    if args is not None:
        parts = [describe_type(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return text + (" or null" if type(None) in args else "")
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of: " + ", ".join(map(str, typing.get_args(tp)))
    if origin is list or tp is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {describe_type(item)}" if item is not Any else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of: " + ", ".join(str(m.value) for m in tp)
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        type(None): "null",
        Any: "any value",
    }.get(tp, getattr(tp, "__name__", str(tp)))
