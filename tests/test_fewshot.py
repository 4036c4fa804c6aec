"""Few-shot text classification: `data.samples_per_class` (a balanced, seeded draw), the head that turns a
logistic regression into logits, and `few_shot.method` end to end on the real MiniLM and SST-2 (SetFit learns
from 8 examples per class; the embedding probe leaves the encoder as it was). Bad inputs are rows of
tests/test_bad_input_matrix.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_finetune import cli, pipeline
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import RecipeError
from hf_finetune.fewshot.model import HEAD_FILE, SentenceClassifier, head_weights

from .conftest import REPO, minilm_path, tiny_recipe


# ---------------------------------------------------------------------------------------------- the draw
def _drawn(model_dir, files, tmp_path, **data) -> tuple[list, pipeline.Prepared]:
    recipe = load_recipe(tiny_recipe(model_dir, files, tmp_path / "out", data=data))
    prepared = pipeline.prepare(recipe)
    return list(prepared.raw["train"]["idx"]), prepared


def test_samples_per_class_draws_a_balanced_subset_seeded_by_the_run(
    tiny_model_dir, sentiment_files, tmp_path
):
    rows, prepared = _drawn(tiny_model_dir, sentiment_files, tmp_path, samples_per_class=5)
    assert Counter(prepared.raw["train"]["label"]) == {0: 5, 1: 5}
    assert len(prepared.raw["validation"]) == 96  # evaluation splits stay whole
    assert (
        "5 per class drawn from the train split (10 examples, seed 7)"
        in prepared.summary["samples_per_class"]
    )
    again, _ = _drawn(tiny_model_dir, sentiment_files, tmp_path, samples_per_class=5)
    assert again == rows  # the same seed, the same draw
    other, _ = _drawn(tiny_model_dir, sentiment_files, tmp_path, samples_per_class=5, sample_seed=8)
    assert other != rows
    recipe = load_recipe(
        tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "o", data={"samples_per_class": 5}),
        ["training.seed=8"],
    )
    assert list(pipeline.prepare(recipe).raw["train"]["idx"]) == other  # null sample_seed: training.seed


def test_few_shot_without_setfit_says_how_to_install_it(
    tiny_model_dir, sentiment_files, tmp_path, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "setfit", None)  # `import setfit` raises ImportError
    recipe = load_recipe(
        tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "out", few_shot={"method": "setfit"})
    )
    with pytest.raises(RecipeError, match=r"few_shot.method.*pip install hf-finetune\[fewshot\]"):
        pipeline.validate(recipe)


# ---------------------------------------------------------------------------------------------- the head
@pytest.mark.parametrize("classes", [(0, 1), (0, 1, 2), (0, 2)], ids=["binary", "three", "one-absent"])
def test_head_logits_give_the_logistic_regressions_probabilities(classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.array([classes[i % len(classes)] for i in range(60)])
    x[np.arange(60), y] += 2.0  # separable enough to fit something
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    weight, bias = head_weights(clf, num_labels=3 if 2 in classes else len(classes))
    probs = torch.softmax(torch.from_numpy(x) @ weight.T + bias, dim=-1).numpy()
    expected = np.zeros_like(probs)
    expected[:, list(clf.classes_)] = clf.predict_proba(x)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    if classes == (0, 2):
        assert probs[:, 1].max() < 1e-30  # a class never seen is never predicted


def test_sentence_classifier_is_called_like_a_classification_head():
    class Body(torch.nn.Module):
        def forward(self, features):
            return {"sentence_embedding": features["input_ids"].float()}

    weight, bias = torch.eye(2, 3), torch.tensor([0.0, 1.0])
    model = SentenceClassifier(Body(), weight, bias, config=None)
    out = model(
        input_ids=torch.tensor([[3, 1, 0]]), attention_mask=torch.ones(1, 3), labels=torch.tensor([1])
    )
    torch.testing.assert_close(out.logits, torch.tensor([[3.0, 2.0]]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])))


# ---------------------------------------------------------------------------------------------- real model
def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k.removeprefix("bert."): v for k, v in load_file(str(path / "model.safetensors")).items()}


def _sst2(shared_data, out: Path, *overrides: str):
    return load_recipe(
        REPO / "recipes" / "glue" / "sst2_setfit.yaml",
        [f"data.mirror={shared_data}", "data.max_eval_samples=256", "training.disable_tqdm=true", *overrides],
        output_dir=str(out),
    )


def test_setfit_learns_sst2_from_8_examples_per_class(shared_data, tmp_path):
    """The bundled SetFit recipe: 16 SST-2 sentences, scored on 256 dev sentences; the directory is a SetFit
    model and an hf-finetune run at once, and both read it the same way."""
    out = tmp_path / "setfit"
    results = pipeline.train(_sst2(shared_data, out))
    assert results["train_samples"] == 16
    assert results["train_pairs"] == 640  # 16 examples x 20 iterations x (one similar + one dissimilar)
    assert results["train_embedding_loss_last"] < results["train_embedding_loss_first"]
    # chance is 0.5, give or take 0.031 on 256 rows; this draw measured 0.648
    assert results["eval_accuracy"] >= 0.60, results

    base, tuned = _weights(minilm_path()), _weights(out)
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(base[name], tuned[name])  # the encoder itself was trained
    assert (out / "model_head.pkl").is_file() and (out / HEAD_FILE).is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"}

    # hf-finetune eval reads it back to the same score, without pickle
    assert cli.main(["eval", str(out)]) == 0
    again = json.loads((out / "eval_validation_results.json").read_text())
    assert again["eval_accuracy"] == pytest.approx(results["eval_accuracy"], abs=1e-9)

    # setfit reads the same directory, and predicts what `hf-finetune predict` predicts
    from setfit import SetFitModel

    dev = [json.loads(line) for line in (shared_data / "glue" / "sst2" / "validation.jsonl").open()][:64]
    inputs = tmp_path / "dev.jsonl"
    inputs.write_text("".join(json.dumps({"sentence": r["sentence"]}) + "\n" for r in dev))
    assert cli.main(["predict", str(out), "--input", str(inputs), "--output", str(tmp_path / "p.jsonl")]) == 0
    ours = [json.loads(line)["label"] for line in (tmp_path / "p.jsonl").open()]
    theirs = list(SetFitModel.from_pretrained(str(out)).predict([r["sentence"] for r in dev]))
    assert ours == [str(label) for label in theirs]

    card = (out / "README.md").read_text()
    assert "library_name: setfit" in card and "SetFitModel.from_pretrained" in card
    assert "8 labelled examples per class (16 in all)" in card


def test_embedding_probe_fits_the_head_and_leaves_the_encoder_alone(shared_data, tmp_path):
    out = tmp_path / "probe"
    results = pipeline.train(
        _sst2(shared_data, out, "few_shot.method=embedding_probe", "data.samples_per_class=32")
    )
    assert results["eval_accuracy"] >= 0.58, results  # 0.617 measured; chance 0.5 +- 0.031
    assert "train_pairs" not in results
    base, kept = _weights(minilm_path()), _weights(out)
    assert all(torch.equal(base[k], kept[k]) for k in base if k in kept)
    assert results["trainable_params"] == 2 * 384 + 2  # the head only


def test_the_few_shot_bench_compares_three_methods_on_the_same_draws():
    from hf_finetune.bench import load_bench

    bench = load_bench(REPO / "recipes" / "bench" / "few-shot.yaml")
    cells = bench.cells()
    assert len(cells) == 3 * 3 * 5
    recipes = {(c.task, c.strategy, c.seed): c.recipe for c in cells}
    for n in (8, 16, 64):
        for seed in range(1, 6):
            setfit, probe, tuned = (
                recipes[(f"sst2-{n}", s, seed)] for s in ("setfit", "embedding-probe", "fine-tune")
            )
            assert [r.few_shot.method for r in (setfit, probe, tuned)] == ["setfit", "embedding_probe", None]
            for recipe in (setfit, probe, tuned):  # one draw per seed, for every method
                assert (recipe.data.samples_per_class, recipe.data.sample_seed, recipe.training.seed) == (
                    n,
                    None,
                    seed,
                )
                assert recipe.data.max_eval_samples is None  # scored on the whole dev set
            assert tuned.training.max_steps == 200 and tuned.strategy.head_lr_multiplier == 10
