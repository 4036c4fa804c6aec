"""Class imbalance: `task.class_weights` (auto or a list) and `task.loss: focal` for text and token
classification. The weights' values, the loss against torch and hand computations, gradient accumulation
giving the gradient of one big batch, the effect on a tiny imbalanced training, and the errors."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from hf_finetune.config.load import load_recipe
from hf_finetune.errors import FinetuneError, RecipeError
from hf_finetune.losses import ImbalanceLoss, imbalance_loss, inverse_frequency_weights, positive_weights
from hf_finetune.pipeline import prepare, train, validate

from .conftest import FILLER, NEGATIVE, POSITIVE, tiny_recipe, write_jsonl
from .test_token_classification import ner_recipe, ner_rows


def skewed_rows(n: int, positive_share: float, seed: int, noise: float | None = None) -> list[dict]:
    """conftest's sentiment sentences with a chosen share of positives (exactly round(n * share)).

    ``noise``: instead, "the movie was <word>", where a ``noise`` share of the negatives have a positive word:
    every positive word is then positive with one probability, which no model can memorise its way around.
    """
    rng = random.Random(seed)
    positives = round(n * positive_share)
    labels = [1] * positives + [0] * (n - positives)
    rng.shuffle(labels)
    rows = []
    for i, label in enumerate(labels):
        if noise is None:
            cue = rng.choice(POSITIVE if label else NEGATIVE)
            words = rng.sample(FILLER, 4) + [cue] + rng.sample(FILLER, 2)
            rng.shuffle(words)
        else:
            words = [
                "the",
                "movie",
                "was",
                rng.choice(POSITIVE if label or rng.random() < noise else NEGATIVE),
            ]
        rows.append({"idx": i, "sentence": " ".join(words), "label": ["negative", "positive"][label]})
    return rows


# ---------------------------------------------------------------------------------------------- the weights
def test_inverse_frequency_weights_on_known_counts():
    weights = inverse_frequency_weights([90, 10])
    assert weights == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])  # [0.5556, 5.0]
    assert 0.9 * weights[0] + 0.1 * weights[1] == pytest.approx(1.0)  # frequency-weighted mean is 1
    three = inverse_frequency_weights([50, 30, 20])
    assert sum(n / 100 * w for n, w in zip([50, 30, 20], three)) == pytest.approx(1.0)
    assert three == pytest.approx([100 / 150, 100 / 90, 100 / 60])
    assert inverse_frequency_weights([7, 7, 7]) == pytest.approx([1.0, 1.0, 1.0])  # balanced: unweighted
    # a class without training examples gets 1 (it multiplies nothing); the others are normalised without it
    assert inverse_frequency_weights([90, 0, 10]) == pytest.approx([100 / (2 * 90), 1.0, 100 / (2 * 10)])
    assert positive_weights([10, 50], 100) == pytest.approx([9.0, 1.0])  # multi-label: negatives / positives
    assert positive_weights([0, 100, 25], 100) == pytest.approx([1.0, 1.0, 3.0])


def test_validate_shows_the_auto_weights_of_the_training_split(tiny_model_dir, tmp_path, no_weights):
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", skewed_rows(40, 0.1, seed=1))),
        "validation": str(write_jsonl(tmp_path / "val.jsonl", skewed_rows(10, 0.5, seed=2))),
    }
    recipe = tiny_recipe(tiny_model_dir, files, tmp_path / "out", task={"class_weights": "auto"})
    summary = validate(load_recipe(recipe))
    assert summary["class_weights"] == pytest.approx(
        {"negative": 40 / (2 * 36), "positive": 40 / (2 * 4)}, abs=1e-6
    )
    assert summary["loss"] == "cross-entropy, class weights auto"

    recipe["task"].update(class_weights=[1, 3.5], loss="focal", focal_gamma=1.5)
    summary = validate(load_recipe(recipe))
    assert summary["class_weights"] == {"negative": 1.0, "positive": 3.5}
    assert summary["loss"] == "focal loss (gamma 1.5), class weights list"
    recipe["task"].pop("class_weights")
    assert "class_weights" not in validate(load_recipe(recipe))


def test_ner_auto_weights_count_word_tags(tiny_model_dir, tmp_path, no_weights):
    """One count per word, whatever the subwords: `okonkwo` splits into several but is one B-/I-PER tag."""
    rows = ner_rows(30, seed=3)
    files = {"train": str(write_jsonl(tmp_path / "ner.jsonl", rows))}
    recipe = ner_recipe(tiny_model_dir, files, tmp_path / "out", class_weights="auto", label_all_tokens=True)
    prepared = prepare(load_recipe(recipe), stage="validate")
    names = prepared.task.labels.names
    counts = [sum(tag == name for row in rows for tag in row["ner_tags"]) for name in names]
    expected = inverse_frequency_weights(counts)
    assert prepared.summary["class_weights"] == pytest.approx(dict(zip(names, expected)), abs=1e-6)
    assert prepared.summary["class_weights"]["O"] < 1 < prepared.summary["class_weights"]["I-PER"]
    assert counts[names.index("I-LOC")] == 0 and prepared.summary["class_weights"]["I-LOC"] == 1.0


def test_multi_label_auto_weights_are_pos_weights(tiny_model_dir, tmp_path, no_weights):
    rng = random.Random(4)
    rows = [
        {
            "sentence": " ".join(rng.sample(FILLER, 5)),
            "label": ["sports"] + (["politics"] if i % 4 == 0 else []),
        }
        for i in range(20)
    ]
    rows[0]["label"] = ["politics"]  # sports: 19 of 20, politics: 5 of 20
    files = {"train": str(write_jsonl(tmp_path / "ml.jsonl", rows))}
    recipe = tiny_recipe(tiny_model_dir, files, tmp_path / "out", task={"class_weights": "auto"})
    recipe["data"]["eval_split"] = None
    summary = validate(load_recipe(recipe))
    assert summary["problem_type"] == "multi_label_classification"
    assert summary["class_weights"] == pytest.approx({"politics": 15 / 5, "sports": 1 / 19}, abs=1e-6)
    assert summary["loss"] == "binary cross-entropy, pos_weight auto"


# ----------------------------------------------------------------------------------------------- the loss
def _logits_and_labels(n: int = 12, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g) * 2, torch.randint(0, classes, (n,), generator=g)


def test_weighted_cross_entropy_matches_torch():
    logits, labels = _logits_and_labels()
    weights = [0.5, 2.0, 3.0]
    ours = imbalance_loss(logits, labels, weights=weights)
    w = torch.tensor(weights)
    # the sum of weighted item losses over the item count (not torch's division by the weights' sum)
    assert ours.item() == pytest.approx(
        F.cross_entropy(logits, labels, weight=w, reduction="sum").item() / len(labels), rel=1e-6
    )
    assert ours.item() == pytest.approx(
        F.cross_entropy(logits, labels, weight=w).item() * w[labels].sum().item() / len(labels), rel=1e-6
    )
    assert imbalance_loss(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )


def test_focal_loss_by_hand_and_gamma_zero_is_cross_entropy():
    logits, labels = _logits_and_labels()
    assert imbalance_loss(logits, labels, focal_gamma=0.0).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )
    weights = [0.5, 2.0, 3.0]
    assert imbalance_loss(logits, labels, focal_gamma=0.0, weights=weights).item() == pytest.approx(
        imbalance_loss(logits, labels, weights=weights).item(), rel=1e-6
    )
    # two items by hand: FL = -w_y (1 - p_y)^gamma log p_y, averaged over the items
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.0]])
    labels = torch.tensor([0, 0])
    expected = 0.0
    for row, (w, gamma) in zip(logits.tolist(), [(0.25, 2.0), (0.25, 2.0)]):
        p = math.exp(row[0]) / (math.exp(row[0]) + math.exp(row[1]))
        expected += -w * (1 - p) ** gamma * math.log(p)
    got = imbalance_loss(logits, labels, focal_gamma=2.0, weights=[0.25, 4.0])
    assert got.item() == pytest.approx(expected / 2, rel=1e-6)
    # the easy item (p = 0.88) is discounted much more than the hard one (p = 0.38)
    easy, hard = (imbalance_loss(logits[i : i + 1], labels[i : i + 1], focal_gamma=2.0) for i in (0, 1))
    ce_easy, ce_hard = (F.cross_entropy(logits[i : i + 1], labels[i : i + 1]) for i in (0, 1))
    assert easy / ce_easy < 0.02 and hard / ce_hard > 0.35


def test_ignored_positions_leave_the_loss_and_its_gradient():
    """Token classification: logits (B, T, C), labels -100 on special tokens and continuation subwords."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 4, generator=g, requires_grad=True)
    labels = torch.tensor([[-100, 1, 3, -100, 0], [-100, 2, -100, -100, -100]])
    weights = [0.2, 1.0, 3.0, 5.0]
    loss = imbalance_loss(logits, labels, weights=weights, focal_gamma=2.0)
    keep = labels != -100
    alone = imbalance_loss(logits[keep], labels[keep], weights=weights, focal_gamma=2.0)
    assert loss.item() == pytest.approx(alone.item(), rel=1e-6)
    loss.backward()
    assert logits.grad[~keep].abs().max() == 0 and logits.grad[keep].abs().max() > 0
    plain = imbalance_loss(logits.detach(), labels)
    assert plain.item() == pytest.approx(
        F.cross_entropy(logits.detach().reshape(-1, 4), labels.reshape(-1), ignore_index=-100).item(),
        rel=1e-6,
    )


def test_multi_label_loss_matches_bce_with_pos_weight():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, generator=g)
    targets = (torch.rand(6, 3, generator=g) > 0.6).float()
    pos_weight = [4.0, 0.5, 1.5]
    ours = imbalance_loss(logits, targets, weights=pos_weight, multi_label=True)
    torch_loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor(pos_weight))
    assert ours.item() == pytest.approx(torch_loss.item(), rel=1e-6)
    focal0 = imbalance_loss(logits, targets, weights=pos_weight, multi_label=True, focal_gamma=0.0)
    assert focal0.item() == pytest.approx(torch_loss.item(), rel=1e-6)
    focal = imbalance_loss(logits, targets, multi_label=True, focal_gamma=2.0)
    p = torch.sigmoid(logits)
    p_t = torch.where(targets > 0, p, 1 - p)
    assert focal.item() == pytest.approx((-((1 - p_t) ** 2) * torch.log(p_t)).mean().item(), rel=1e-5)


def test_loss_is_fp32_and_splits_over_micro_batches():
    logits, labels = _logits_and_labels(n=8)
    half = logits.to(torch.bfloat16)
    loss = imbalance_loss(half, labels, weights=[1.0, 2.0, 3.0], focal_gamma=2.0)
    assert loss.dtype == torch.float32
    exact = imbalance_loss(half.float(), labels, weights=[1.0, 2.0, 3.0], focal_gamma=2.0)
    assert loss.item() == exact.item()
    # with the step's item count, the micro-batches' losses add up to the whole batch's
    whole = imbalance_loss(logits, labels, weights=[1.0, 2.0, 3.0], num_items_in_batch=torch.tensor(8))
    parts = sum(
        imbalance_loss(logits[i : i + 4], labels[i : i + 4], weights=[1.0, 2.0, 3.0], num_items_in_batch=8)
        for i in (0, 4)
    )
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def test_focal_gradient_is_finite_when_the_model_is_certain():
    logits = torch.tensor([[60.0, -60.0], [0.0, 0.0]], requires_grad=True)
    loss = imbalance_loss(logits, torch.tensor([0, 1]), focal_gamma=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_the_trainer_callable_reads_model_outputs():
    from transformers.modeling_outputs import SequenceClassifierOutput

    logits, labels = _logits_and_labels(classes=2)
    loss = ImbalanceLoss(names=("a", "b"), weights=(1.0, 3.0), loss="focal", focal_gamma=1.0)
    got = loss(SequenceClassifierOutput(logits=logits), labels, num_items_in_batch=torch.tensor(24))
    expected = imbalance_loss(logits, labels, weights=[1.0, 3.0], focal_gamma=1.0) * len(labels) / 24
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.record() == {
        "loss_function": "focal loss (gamma 1), class weights list",
        "class_weights": {"a": 1.0, "b": 3.0},
    }


# ----------------------------------------------------------------------------- gradient accumulation
def _one_step(recipe: dict, batch: int, accumulation: int) -> dict[str, torch.Tensor]:
    """The model's parameters after one SGD step (lr 1, so the change is minus the gradient) on all the
    training examples: ``batch`` per micro-batch, ``accumulation`` micro-batches."""
    from transformers import set_seed

    from hf_finetune.pipeline import load_model
    from hf_finetune.trainer import FinetuneTrainer

    recipe["training"].update(
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,  # no clipping: the raw gradient
        bf16=False,  # fp32 throughout, where the package default would pick bf16 on a CPU that has it
        eval_strategy="no",
        logging_steps=1,
    )
    loaded = load_recipe(recipe)
    prepared = prepare(loaded)
    set_seed(0)
    model = load_model(prepared)
    tokenised = prepared.task.preprocess(prepared.raw, prepared.tokenizer)
    trainer = FinetuneTrainer(
        model=model,
        args=loaded.training,
        train_dataset=tokenised[loaded.data.train_split],
        data_collator=prepared.task.data_collator(prepared.tokenizer, loaded.training),
        compute_loss_func=prepared.task.loss_function(),
        recipe=loaded,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


DROPOUT_OFF = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.mark.parametrize("kind", ["text-weighted-ce", "ner-weighted-focal"])
def test_gradient_accumulation_gives_the_gradient_of_one_big_batch(kind, tiny_model_dir, tmp_path):
    """2 x 4 examples with accumulation and 8 at once: the same update to ~1e-6, for sentences and for
    tokens (whose micro-batches hold different numbers of tagged subwords)."""
    if kind.startswith("text"):
        files = {"train": str(write_jsonl(tmp_path / "t.jsonl", skewed_rows(8, 0.25, seed=5)))}
        recipe = tiny_recipe(tiny_model_dir, files, tmp_path / "out", task={"class_weights": "auto"})
        recipe["data"]["eval_split"] = None
    else:
        files = {"train": str(write_jsonl(tmp_path / "n.jsonl", ner_rows(8, seed=5)))}
        recipe = ner_recipe(tiny_model_dir, files, tmp_path / "out", class_weights="auto", loss="focal")
    recipe["model"]["config_overrides"] = DROPOUT_OFF
    big = _one_step(json.loads(json.dumps(recipe)), batch=8, accumulation=1)
    small = _one_step(json.loads(json.dumps(recipe)), batch=4, accumulation=2)
    size = max(d.abs().max().item() for d in big.values())
    assert size > 1e-4  # the step moved the weights
    assert _max_difference(big, small) < 1e-6 * max(1.0, size), _max_difference(big, small)


def test_accumulation_check_would_see_a_per_micro_batch_mean(tiny_model_dir, tmp_path):
    """The check above is sensitive: the model's own token loss (a mean per micro-batch) moves differently
    with accumulation, because the two micro-batches hold different numbers of tagged subwords."""
    files = {"train": str(write_jsonl(tmp_path / "n.jsonl", ner_rows(8, seed=5)))}
    recipe = ner_recipe(tiny_model_dir, files, tmp_path / "out")
    recipe["model"]["config_overrides"] = DROPOUT_OFF
    big = _one_step(json.loads(json.dumps(recipe)), batch=8, accumulation=1)
    small = _one_step(json.loads(json.dumps(recipe)), batch=4, accumulation=2)
    assert _max_difference(big, small) > 1e-4


def test_two_processes_give_the_update_of_one_with_the_doubled_batch(tiny_model_dir, tmp_path):
    """DDP (2 CPU processes, gloo) at batch 4 against one process at batch 8, for tags with weighted focal
    loss: the ranks hold different numbers of tagged subwords, and the loss divides by the step's count over
    both, so the weights agree to float summation order."""
    from .conftest import write_recipe
    from .test_distributed import ATOL, max_difference, single, torchrun, weights

    files = {"train": str(write_jsonl(tmp_path / "n.jsonl", ner_rows(48, seed=6)))}
    recipe = ner_recipe(tiny_model_dir, files, tmp_path / "unused", class_weights="auto", loss="focal")
    recipe["model"]["config_overrides"] = DROPOUT_OFF
    recipe["training"].update(
        max_steps=6, eval_strategy="no", save_strategy="no", bf16=False, train_sampling_strategy="random"
    )
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun(path, 2, f"training.output_dir={two}", "training.per_device_train_batch_size=4")
    single(path, f"training.output_dir={one}", "training.per_device_train_batch_size=8")
    assert json.loads((two / "all_results.json").read_text())["world_size"] == 2
    assert max_difference(weights(two), weights(one)) < ATOL


# ------------------------------------------------------------------------------------------ the effect
def _minority_run(tiny_model_dir, tmp_path, name: str, **task) -> tuple[float, float]:
    """Macro-F1 and positive recall on a balanced validation split after training on 10% positives, where
    30% of the negatives also have a positive word: a positive word is then positive 27% of the time, so
    plain cross-entropy learns to say negative to everything, and `auto` weights (x9 for positives) flip it."""
    from hf_finetune.inference import predict_output

    root = tmp_path / name
    validation = skewed_rows(100, 0.5, seed=12, noise=0.0)
    files = {
        "train": str(write_jsonl(root / "train.jsonl", skewed_rows(300, 0.1, seed=11, noise=0.3))),
        "validation": str(write_jsonl(root / "val.jsonl", validation)),
    }
    recipe = tiny_recipe(tiny_model_dir, files, root / "out", task={"metric": "classification", **task})
    recipe["training"].update(num_train_epochs=6, eval_strategy="no", bf16=False)
    results = train(load_recipe(recipe))
    predict_output(root / "out", files["validation"], root / "pred.jsonl")
    predicted = [json.loads(line)["label"] for line in (root / "pred.jsonl").read_text().splitlines()]
    positives = [p for p, row in zip(predicted, validation) if row["label"] == "positive"]
    return results["eval_f1"], sum(p == "positive" for p in positives) / len(positives)


def test_auto_class_weights_lift_the_minority_class(tiny_model_dir, tmp_path):
    f1_none, recall_none = _minority_run(tiny_model_dir, tmp_path, "none")
    f1_auto, recall_auto = _minority_run(tiny_model_dir, tmp_path, "auto", class_weights="auto")
    assert recall_auto >= recall_none + 0.5, (recall_none, recall_auto)
    assert f1_auto >= f1_none + 0.3, (f1_none, f1_auto)  # macro-F1; measured 0.33 -> 0.94
    results = json.loads((tmp_path / "auto" / "out" / "all_results.json").read_text())
    assert results["class_weights"] == pytest.approx(
        {"negative": 300 / (2 * 270), "positive": 300 / (2 * 30)}, abs=1e-6
    )
    assert results["loss_function"] == "cross-entropy, class weights auto"
    card = (tmp_path / "auto" / "out" / "README.md").read_text()
    assert "- loss: cross-entropy, class weights auto" in card
    assert "- class_weights: negative 0.5556, positive 5" in card


# ------------------------------------------------------------------------------------------ the errors
@pytest.mark.parametrize(
    ("task", "field", "message"),
    [
        ({"class_weights": [1.0, 0.0]}, "task.class_weights", "weights must be positive numbers; got 0.0"),
        ({"class_weights": [1.0, -2.0]}, "task.class_weights", "-2.0 (position 1)"),
        ({"class_weights": []}, "task.class_weights", "is an empty list"),
        ({"focal_gamma": -1.0}, "task.focal_gamma", "must be a number >= 0"),
        ({"class_weights": "balanced"}, "task.class_weights", "expected one of: auto or a list of a number"),
        ({"loss": "dice"}, "task.loss", "cross_entropy"),
        (
            {"problem_type": "regression", "class_weights": "auto"},
            "task.class_weights",
            "this task is regression",
        ),
        ({"num_labels": 1, "loss": "focal"}, "task.loss", "this task is regression"),
    ],
)
def test_bad_loss_fields_fail_when_the_recipe_loads(task, field, message, tiny_model_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, {"train": "t.jsonl"}, tmp_path / "out", task=task)
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert info.value.field == field and message in str(info.value)


def test_errors_against_the_data(tiny_model_dir, tmp_path, no_weights):
    files = {"train": str(write_jsonl(tmp_path / "t.jsonl", skewed_rows(20, 0.2, seed=1)))}
    base = tiny_recipe(tiny_model_dir, files, tmp_path / "out")
    base["data"]["eval_split"] = None

    def fails(task: dict, training: dict | None = None) -> str:
        recipe = json.loads(json.dumps(base))
        recipe["task"].update(task)
        recipe["training"].update(training or {})
        with pytest.raises(FinetuneError) as info:
            validate(load_recipe(recipe))
        return str(info.value)

    assert "has 3 weights, but there are 2 labels [negative, positive]" in fails({"class_weights": [1, 2, 3]})
    message = fails({"loss": "focal"}, {"label_smoothing_factor": 0.1})
    assert "`training.label_smoothing_factor`" in message and "remove one of the two" in message
    numbers = [{"sentence": f"row {i}", "label": i / 3} for i in range(10)]
    files["train"] = str(write_jsonl(tmp_path / "r.jsonl", numbers))
    base["data"]["files"] = files
    assert "so this task is regression" in fails({"class_weights": "auto"})
