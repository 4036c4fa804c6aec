"""One label schema, end to end.

Label names come from (in order): the recipe's ``task.labels``, the dataset's ``ClassLabel``
feature, or the sorted string values of the training split. Integer labels without names are
indices into the recipe's list (or get the names "0", "1", ...); a whole float such as ``1.0`` (what
pandas writes for an integer column with a missing value) is the class id 1. The schema encodes raw values
into ids for training and becomes ``id2label``/``label2id`` in the saved model config, so a
saved model predicts label names.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError, RecipeError

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = (SINGLE, MULTI, REGRESSION)


@dataclass
class LabelSchema:
    problem_type: str
    names: list[str]
    label2id: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.label2id = {name: i for i, name in enumerate(self.names)}

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == REGRESSION else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def encode(self, value: Any) -> Any:
        """Raw label value -> model target (int id, multi-hot floats, or a float)."""
        if self.problem_type == REGRESSION:
            return float(value)
        if self.problem_type == MULTI:
            hot = [0.0] * len(self.names)
            for item in value:
                hot[self._id(item)] = 1.0
            return hot
        return self._id(value)

    def _id(self, value: Any) -> int:
        if isinstance(value, str):
            return self.label2id[value]
        return int(value)

    def require_classes(self, values: Sequence[Any], split: str, column: str, note: str = "") -> None:
        """A classifier learns from at least two classes: fail when every row of ``split`` (already checked
        with `check_values`) has the same label (multi-label: the same set of labels). ``note`` follows the
        row count (e.g. how the split was cut)."""
        if self.problem_type == REGRESSION or not values:
            return
        if self.problem_type == MULTI:
            sets = {tuple(sorted({self._id(x) for x in v})) for v in values}
            if len(sets) > 1:
                return
            (ids,) = sets
            what = f"the labels [{', '.join(self.names[i] for i in ids)}]" if ids else "no label"
            raise DataError(
                f"`task.label_column`: every row of the {split} split ({len(values)} rows{note}) has {what} "
                f"(column '{column}'): a multi-label classifier learns nothing from rows that all agree. Give it "
                "rows with different label sets."
            )
        present = {self._id(v) for v in values}
        if len(present) > 1:
            return
        name = self.names[present.pop()]
        others = [n for n in self.names if n != name]
        listed = f" (such as {', '.join(others[:5])}, which the label list has)" if others else ""
        raise DataError(
            f"`task.label_column`: every row of the {split} split ({len(values)} rows{note}) has the label "
            f"{name!r} (column '{column}'): a classifier needs examples of at least two classes. Add rows of "
            f"another class{listed}, or point `task.label_column` at the column that holds the classes."
        )

    def check_values(
        self, values: Iterable[Any], split: str, column: str, ids: Sequence[Any] | None = None
    ) -> None:
        """Fail with a clear message on a value that this schema cannot encode."""
        bad: list[tuple[int, Any]] = []
        for row, value in enumerate(values):
            if not self._valid(value):
                bad.append((row, value))
                if len(bad) >= 10:
                    break
        if not bad:
            return
        shown = ", ".join(f"{v!r} (row {ids[r] if ids is not None else r})" for r, v in bad)
        if all(v is None for _, v in bad):
            rows = ", ".join(str(ids[r] if ids is not None else r) for r, _ in bad)
            rows = (
                ("row " if len(bad) == 1 else "rows ") + rows + (" (the first 10)" if len(bad) >= 10 else "")
            )
            raise DataError(
                f"`task.label_column`: rows of the {split} split have no label (null or empty) in column "
                f"'{column}': {rows}. Fill in their labels or drop those rows."
            )
        if self.problem_type == REGRESSION:
            raise DataError(
                f"`task.label_column`: column '{column}' in {split} split has non-numeric values for "
                f"regression: {shown}. Fix the data or set `task.problem_type`."
            )
        listing = ", ".join(self.names)
        kind = "label ids" if all(class_id(v) is not None for _, v in bad) else "label values"
        scores = any(_number(v) and class_id(v) is None for _, v in bad)
        hint = (
            " Numbers that are not whole are scores: for one score per example set "
            "`task.problem_type: regression`."
            if scores
            else ""
        )
        raise DataError(
            f"`task.labels`: {kind} in the {split} split (column '{column}') not in the label list "
            f"[{listing}]: {shown}. Add them to `task.labels` or fix the data.{hint}"
        )

    def _valid(self, value: Any) -> bool:
        if self.problem_type == REGRESSION:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if self.problem_type == MULTI:
            return isinstance(value, (list, tuple)) and all(self._valid_single(v) for v in value)
        return self._valid_single(value)

    def _valid_single(self, value: Any) -> bool:
        if isinstance(value, str):
            return value in self.label2id
        cid = class_id(value)
        return cid is not None and 0 <= cid < len(self.names)


def class_id(value: Any) -> int | None:
    """An integer label as a class id: an int, or a float that is a whole number (``1.0``: pandas writes an
    integer column with a missing value as floats); None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe_values(values: Sequence[Any], examples: int = 5) -> str:
    """What a column holds, for an error: '40 values: 38 bool, 2 null (e.g. True, False, None)'."""
    kinds = Counter("null" if v is None else type(v).__name__ for v in values)
    seen: list[str] = []
    for value in values:
        text = repr(value)
        if text not in seen:
            seen.append(text[:40])
            if len(seen) == examples:
                break
    counted = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    return f"{len(values)} values: {counted} (e.g. {', '.join(seen)})"


def infer_problem_type(values: Sequence[Any]) -> str:
    """Lists -> multi-label; non-integral numbers -> regression; anything else -> single label."""
    sample = [v for v in values[:1000] if v is not None]
    if any(isinstance(v, (list, tuple)) for v in sample):
        return MULTI
    if any(isinstance(v, float) and math.isfinite(v) and not v.is_integer() for v in sample):
        return REGRESSION
    return SINGLE


def build_schema(
    *,
    problem_type: str,
    values: Sequence[Any],
    feature: Any = None,
    recipe_labels: list[str] | None = None,
    recipe_num_labels: int | None = None,
    column: str = "label",
) -> LabelSchema:
    """Decide the label names from the recipe, the ClassLabel feature or the training values (of ``column``,
    named in errors)."""
    if problem_type == REGRESSION:
        if recipe_num_labels not in (None, 1):
            raise RecipeError(
                "task.num_labels",
                f"is {recipe_num_labels}, but regression predicts one number; "
                "set `task.num_labels: 1` or remove it.",
            )
        return LabelSchema(REGRESSION, list(recipe_labels or ["score"])[:1])

    feature_names = classlabel_names(feature)
    flat = [x for v in values for x in (v if isinstance(v, (list, tuple)) else [v])]
    strings = sorted({x for x in flat if isinstance(x, str)})
    ints = [i for i in map(class_id, flat) if i is not None]

    if recipe_labels is not None:
        names = list(recipe_labels)
        if feature_names is not None and feature_names != names:
            raise RecipeError(
                "task.labels",
                f"{names} differ from the dataset's ClassLabel names {feature_names}; "
                "remove `task.labels` or list the names in the dataset's order.",
            )
    elif feature_names is not None:
        names = feature_names
    elif strings:
        names = strings
    elif ints:
        count = recipe_num_labels or (max(ints) + 1)
        names = [str(i) for i in range(count)]
    else:
        raise DataError(
            f"`task.label_column`: column '{column}' of the training split holds no usable labels: "
            f"{describe_values(list(values))}. Labels are class names (text), class ids (whole numbers "
            "0, 1, ...; 1.0 counts as 1), lists of names (multi-label) or numbers (regression); point "
            "`task.label_column` at the label column, or write the labels as one of these."
        )

    if recipe_num_labels is not None and recipe_num_labels != len(names):
        origin = (
            "task.labels"
            if recipe_labels is not None
            else "the dataset's ClassLabel feature"
            if feature_names is not None
            else "the string labels in the training split"
        )
        raise RecipeError(
            "task.num_labels",
            f"is {recipe_num_labels}, but {origin} give {len(names)} labels "
            f"({', '.join(names)}); fix `task.num_labels` or remove it.",
        )
    if strings and ints:
        raise DataError(
            "`task.label_column`: the training split mixes string and integer labels; use one kind."
        )
    return LabelSchema(problem_type, names)


def classlabel_names(feature: Any) -> list[str] | None:
    """The names of a `datasets.ClassLabel` feature (also inside a list or sequence feature), else None."""
    import datasets

    if isinstance(feature, list) and feature:
        return classlabel_names(feature[0])
    inner = getattr(feature, "feature", None)  # datasets.List / Sequence of ClassLabel (multi-label)
    if inner is not None and not isinstance(feature, datasets.ClassLabel):
        return classlabel_names(inner)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return None
