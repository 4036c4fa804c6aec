"""Class imbalance: class weights and focal loss, computed in the Trainer's loss path.

The recipe's ``task.class_weights`` (``auto`` or one weight per label) and ``task.loss`` (``cross_entropy`` or
``focal``, with ``task.focal_gamma``) become an :class:`ImbalanceLoss`, passed to the Trainer as its
``compute_loss_func``. The Trainer then pops ``labels`` from each batch, runs the model without them and calls
the loss with the model outputs, the labels and ``num_items_in_batch``: the number of labels that are not
-100 in the whole optimizer step (every micro-batch of a gradient-accumulation cycle, summed over the DDP
processes), so the loss is a sum over items divided by that count and the gradient is the one of one big batch.

The checks here run before any weights load: the config's ``__post_init__`` checks the fields alone
(:func:`check_loss_fields`), the task's ``prepare`` the weights against the label list and the training split
(:func:`resolve_class_weights`, :func:`resolve_positive_weights`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import RecipeError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of a position the loss skips (special tokens and continuation subwords in token classification)."""

LOSSES = ("cross_entropy", "focal")

# the loss clamps 1 - p_t here before raising it to gamma: finite gradients where p_t rounds to 1
_FOCAL_FLOOR = 1e-12


def check_loss_fields(
    class_weights: str | Sequence[float] | None, loss: str, focal_gamma: float, *, regression: bool = False
) -> None:
    """The fields on their own (a task config's ``__post_init__``): RecipeError naming the field.

    ``regression``: the config already says the task is regression, which has no classes to weight.
    """
    if regression:
        if class_weights is not None:
            raise RecipeError(
                "task.class_weights",
                "class weights need classes, and this task is regression (`task.problem_type: regression` "
                "or `task.num_labels: 1`); remove `task.class_weights`.",
            )
        if loss != "cross_entropy":
            raise RecipeError(
                "task.loss",
                f"{loss!r} is a classification loss, and this task is regression (mean squared error); "
                "remove `task.loss`.",
            )
    if isinstance(class_weights, str) and class_weights != "auto":
        raise RecipeError(
            "task.class_weights", f"expected `auto` or a list of weights, got {class_weights!r}."
        )
    if isinstance(class_weights, (list, tuple)):
        if not class_weights:
            raise RecipeError(
                "task.class_weights", "is an empty list; give one weight per label, `auto`, or remove it."
            )
        bad = [(i, w) for i, w in enumerate(class_weights) if not (math.isfinite(w) and w > 0)]
        if bad:
            shown = ", ".join(f"{w!r} (position {i})" for i, w in bad)
            raise RecipeError(
                "task.class_weights",
                f"weights must be positive numbers; got {shown}. A label the loss should ignore is not a "
                "weight of 0: drop it from the data instead.",
            )
    if not (math.isfinite(focal_gamma) and focal_gamma >= 0):
        raise RecipeError("task.focal_gamma", f"must be a number >= 0, got {focal_gamma!r}.")


def inverse_frequency_weights(counts: Sequence[int]) -> list[float]:
    """``w_c = N / (C * n_c)``: inverse class frequency scaled so that ``sum_c (n_c / N) * w_c = 1``.

    (sklearn calls the same numbers "balanced".) N and C count the classes that have examples; a class with
    none gets 1: its weight multiplies the loss of its own examples only, and training has none.
    """
    present = [n for n in counts if n > 0]
    total, classes = sum(present), len(present)
    return [total / (classes * n) if n > 0 else 1.0 for n in counts]


def positive_weights(positives: Sequence[int], rows: int) -> list[float]:
    """Multi-label ``pos_weight`` per label: negatives / positives, so each label's positive and negative
    examples weigh the same in its binary cross-entropy (the weighting torch's ``BCEWithLogitsLoss``
    documents). A label with no positive or no negative example gets 1 (unweighted)."""
    return [(rows - p) / p if 0 < p < rows else 1.0 for p in positives]


def _check_length(weights: Sequence[float], names: Sequence[str], item: str) -> None:
    if len(weights) != len(names):
        raise RecipeError(
            "task.class_weights",
            f"has {len(weights)} weight{'s' * (len(weights) != 1)}, but there are {len(names)} {item}s "
            f"[{', '.join(names)}]; give one weight per {item}, in this order, or `auto`.",
        )


def resolve_class_weights(
    setting: str | Sequence[float] | None, names: Sequence[str], counts: Sequence[int], item: str = "label"
) -> list[float] | None:
    """The weights of ``task.class_weights`` for single-label classes (or tags): None, the recipe's list
    (checked against ``names``), or ``auto`` from the training split's ``counts`` per class."""
    if setting is None:
        return None
    if setting != "auto":
        _check_length(setting, names, item)
        return [float(w) for w in setting]
    missing = [name for name, n in zip(names, counts) if n == 0]
    if missing:
        logger.warning(
            "task.class_weights auto: the training split has no example of %s; weight 1 (it weighs nothing "
            "in training, only the evaluation loss)",
            ", ".join(missing),
        )
    return inverse_frequency_weights(counts)


def resolve_positive_weights(
    setting: str | Sequence[float] | None, names: Sequence[str], positives: Sequence[int], rows: int
) -> list[float] | None:
    """Multi-label ``task.class_weights``: the ``pos_weight`` of each label's binary cross-entropy; ``auto``
    is negatives / positives of the training split."""
    if setting is None:
        return None
    if setting != "auto":
        _check_length(setting, names, "label")
        return [float(w) for w in setting]
    degenerate = [name for name, p in zip(names, positives) if p in (0, rows)]
    if degenerate:
        logger.warning(
            "task.class_weights auto: %s is on no training example or on all of them; pos_weight 1",
            ", ".join(degenerate),
        )
    return positive_weights(positives, rows)


def build_loss(
    cfg: Any,
    names: Sequence[str],
    counts: Sequence[int],
    *,
    rows: int,
    multi_label: bool = False,
    label_smoothing: float = 0.0,
    item: str = "label",
) -> ImbalanceLoss | None:
    """The loss a task config asks for (``cfg.class_weights``, ``cfg.loss``, ``cfg.focal_gamma``), or None
    for the model's own cross-entropy. ``counts``: training examples per class (multi-label: positives per
    label) over ``rows`` training examples (or tags). Logs the weights; RecipeError on a bad setting."""
    if cfg.class_weights is None and cfg.loss == "cross_entropy":
        return None
    if label_smoothing:
        field = "task.class_weights" if cfg.class_weights is not None else "task.loss"
        raise RecipeError(
            "training.label_smoothing_factor",
            f"is {label_smoothing:g}, and `{field}` replaces the Trainer's loss, so the smoothing would be "
            f"silently dropped; remove one of the two.",
        )
    if multi_label:
        weights = resolve_positive_weights(cfg.class_weights, names, counts, rows)
    else:
        weights = resolve_class_weights(cfg.class_weights, names, counts, item)
    loss = ImbalanceLoss(
        names=tuple(names),
        weights=None if weights is None else tuple(weights),
        loss=cfg.loss,
        focal_gamma=float(cfg.focal_gamma),
        multi_label=multi_label,
        weights_from=None if cfg.class_weights is None else "auto" if cfg.class_weights == "auto" else "list",
    )
    if weights is None:
        logger.info("loss: %s", loss.description)
    else:
        shown = ", ".join(f"{n} {w:.4g} ({c} of {rows})" for n, w, c in zip(names, weights, counts))
        logger.info("loss: %s; from the training split: %s", loss.description, shown)
    return loss


@dataclass(frozen=True)
class ImbalanceLoss:
    """The Trainer's ``compute_loss_func`` for a classification head (sequence or token).

    ``weights``: one per class (single-label: the class weight of each item's true class; multi-label: the
    ``pos_weight`` of each label's positive term), or None. ``loss``: ``cross_entropy`` or ``focal``.
    ``names``: the class names, for the record of the run.
    """

    names: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    loss: str = "cross_entropy"
    focal_gamma: float = 2.0
    multi_label: bool = False
    weights_from: str | None = None  # "auto" or "list": how the weights were given

    def __call__(self, outputs: Any, labels: Any, num_items_in_batch: Any = None):
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        return imbalance_loss(
            logits,
            labels,
            weights=self.weights,
            focal_gamma=self.focal_gamma if self.loss == "focal" else None,
            multi_label=self.multi_label,
            num_items_in_batch=num_items_in_batch,
        )

    @property
    def description(self) -> str:
        """The loss in words, e.g. "focal loss (gamma 2), class weights auto"."""
        if self.loss == "focal":
            text = f"{'binary ' if self.multi_label else ''}focal loss (gamma {self.focal_gamma:g})"
        else:
            text = "binary cross-entropy" if self.multi_label else "cross-entropy"
        if self.weights is not None:
            kind = "pos_weight" if self.multi_label else "class weights"
            text += f", {kind} {self.weights_from or 'list'}"
        return text

    def weights_by_name(self) -> dict[str, float] | None:
        if self.weights is None:
            return None
        return {name: round(w, 6) for name, w in zip(self.names, self.weights)}

    def record(self) -> dict[str, Any]:
        """What a run records about its loss (all_results.json, the model card)."""
        out: dict[str, Any] = {"loss_function": self.description}
        if self.weights is not None:
            out["class_weights"] = self.weights_by_name()
        return out


def imbalance_loss(
    logits,
    labels,
    *,
    weights: Sequence[float] | None = None,
    focal_gamma: float | None = None,
    multi_label: bool = False,
    num_items_in_batch=None,
):
    """Class-weighted and/or focal loss of ``logits`` against ``labels``, in fp32.

    Single-label (sequence classification: logits ``(B, C)``, labels ``(B,)``; token classification: logits
    ``(B, T, C)``, labels ``(B, T)``): per item ``w_y * (1 - p_y)^gamma * -log p_y``, items labelled -100
    left out. Multi-label (logits and 0/1 labels ``(B, C)``): per element the binary cross-entropy, its
    positive term times ``pos_weight_c`` (``weights``), times ``(1 - p_t)^gamma`` for focal.

    Normalisation: the sum over items divided by ``num_items_in_batch`` when the Trainer gives it (the count of
    non-ignored labels over the whole optimizer step: all gradient-accumulation micro-batches and, with
    ``average_tokens_across_devices``, all DDP processes; the Trainer scales the loss by the process count
    for DDP's averaging), so accumulation and DDP give exactly the gradient of one big batch. Without it, the
    batch's own item count (evaluation, or a direct call). This is not torch's weighted mean (which divides by
    the sum of the items' weights): that sum is not known until the whole accumulated batch has been seen.
    With ``auto`` weights the expected weight of an item is 1, so the loss keeps the scale of plain
    cross-entropy and the learning rate that suits it.
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()  # fp32 even under bf16/fp16 autocast
    labels = labels.to(logits.device)
    if multi_label:
        targets = labels.float()
        mask = labels != IGNORE_INDEX
        targets = torch.where(mask, targets, torch.zeros_like(targets))
        per_item = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if focal_gamma:
            # p_t = exp(-bce): the probability given to the true value of each label
            per_item = (-torch.expm1(-per_item)).clamp(min=_FOCAL_FLOOR).pow(focal_gamma) * per_item
        if weights is not None:
            pos_weight = torch.tensor(weights, dtype=torch.float32, device=logits.device)
            # BCEWithLogitsLoss' pos_weight (labels are 0/1): the positive term times pos_weight_c
            per_item = per_item * (1 + (pos_weight - 1) * targets)
    else:
        classes = logits.shape[-1]
        logits = logits.reshape(-1, classes)
        labels = labels.reshape(-1)
        mask = labels != IGNORE_INDEX
        target = torch.where(mask, labels, torch.zeros_like(labels)).long()
        log_p = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
        per_item = -log_p
        if focal_gamma:
            per_item = (-torch.expm1(log_p)).clamp(min=_FOCAL_FLOOR).pow(focal_gamma) * per_item
        if weights is not None:
            per_item = per_item * torch.tensor(weights, dtype=torch.float32, device=logits.device)[target]
    total = torch.where(mask, per_item, torch.zeros_like(per_item)).sum()
    if num_items_in_batch is None:
        return total / mask.sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(device=total.device, dtype=total.dtype)
    return total / num_items_in_batch
