"""One label schema, end to end.

Label names come from (in order): the recipe's ``task.labels``, the dataset's ``ClassLabel``
feature, or the sorted string values of the training split. Integer labels without names are
indices into the recipe's list (or get the names "0", "1", ...). The schema encodes raw values
into ids for training and becomes ``id2label``/``label2id`` in the saved model config, so a
saved model predicts label names.
"""

from __future__ import annotations

import math
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
        if self.problem_type == REGRESSION:
            raise DataError(
                f"`task.label_column`: column '{column}' in {split} split has non-numeric values for "
                f"regression: {shown}. Fix the data or set `task.problem_type`."
            )
        listing = ", ".join(self.names)
        kind = "label ids" if all(isinstance(v, int) for _, v in bad) else "label values"
        raise DataError(
            f"`task.labels`: {kind} in the {split} split (column '{column}') not in the label list "
            f"[{listing}]: {shown}. Add them to `task.labels` or fix the data."
        )

    def _valid(self, value: Any) -> bool:
        if self.problem_type == REGRESSION:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if self.problem_type == MULTI:
            return isinstance(value, (list, tuple)) and all(self._valid_single(v) for v in value)
        return self._valid_single(value)

    def _valid_single(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if isinstance(value, str):
            return value in self.label2id
        if isinstance(value, int):
            return 0 <= value < len(self.names)
        return False


def infer_problem_type(values: Sequence[Any]) -> str:
    """Lists -> multi-label; non-integral numbers -> regression; anything else -> single label."""
    sample = [v for v in values[:1000] if v is not None]
    if any(isinstance(v, (list, tuple)) for v in sample):
        return MULTI
    if any(isinstance(v, float) and not float(v).is_integer() for v in sample):
        return REGRESSION
    return SINGLE


def build_schema(
    *,
    problem_type: str,
    values: Sequence[Any],
    feature: Any = None,
    recipe_labels: list[str] | None = None,
    recipe_num_labels: int | None = None,
) -> LabelSchema:
    """Decide the label names from the recipe, the ClassLabel feature or the training values."""
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
    ints = [x for x in flat if isinstance(x, int) and not isinstance(x, bool)]

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
            "`task.label_column`: the training split has no usable label values; check the column."
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
