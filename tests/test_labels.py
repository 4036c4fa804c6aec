"""One label schema: from ClassLabel names, strings, ints + recipe names; contradictions fail."""

from __future__ import annotations

import datasets
import pytest

from hf_finetune.errors import DataError, RecipeError
from hf_finetune.labels import MULTI, REGRESSION, SINGLE, build_schema, infer_problem_type


def test_names_from_classlabel_feature():
    feature = datasets.ClassLabel(names=["neg", "pos"])
    schema = build_schema(problem_type=SINGLE, values=[0, 1, 1], feature=feature)
    assert schema.names == ["neg", "pos"] and schema.encode(1) == 1
    assert schema.id2label == {0: "neg", 1: "pos"}


def test_names_from_string_values_are_sorted_and_encoded():
    schema = build_schema(problem_type=SINGLE, values=["spam", "ham", "spam"])
    assert schema.names == ["ham", "spam"]
    assert schema.encode("spam") == 1


def test_recipe_names_index_integer_labels():
    schema = build_schema(problem_type=SINGLE, values=[0, 1], recipe_labels=["negative", "positive"])
    assert schema.label2id == {"negative": 0, "positive": 1}


def test_recipe_names_must_match_classlabel():
    with pytest.raises(RecipeError, match="task.labels"):
        build_schema(
            problem_type=SINGLE,
            values=[0],
            feature=datasets.ClassLabel(names=["a", "b"]),
            recipe_labels=["b", "a"],
        )


def test_num_labels_contradicting_the_data():
    with pytest.raises(RecipeError, match=r"`task.num_labels`: is 3, but the string labels .* give 2 labels"):
        build_schema(problem_type=SINGLE, values=["x", "y"], recipe_num_labels=3)


def test_unseen_validation_label_is_named():
    schema = build_schema(problem_type=SINGLE, values=["x", "y"])
    with pytest.raises(DataError, match=r"not in the label list \[x, y\]: 'z' \(row 7\)"):
        schema.check_values(["x", "z"], "validation", "label", ids=[3, 7])


def test_integer_label_out_of_range():
    schema = build_schema(problem_type=SINGLE, values=[0, 1], recipe_labels=["a", "b"])
    with pytest.raises(DataError, match="label ids"):
        schema.check_values([0, 2], "validation", "label")


def test_multilabel_encoding_and_inference():
    values = [["a", "b"], ["c"]]
    assert infer_problem_type(values) == MULTI
    schema = build_schema(problem_type=MULTI, values=values)
    assert schema.encode(["c", "a"]) == [1.0, 0.0, 1.0]


def test_regression():
    assert infer_problem_type([0.5, 3.2]) == REGRESSION
    schema = build_schema(problem_type=REGRESSION, values=[0.5, 3.2])
    assert schema.num_labels == 1 and schema.encode(3) == 3.0
    with pytest.raises(RecipeError, match="task.num_labels"):
        build_schema(problem_type=REGRESSION, values=[0.5], recipe_num_labels=2)
