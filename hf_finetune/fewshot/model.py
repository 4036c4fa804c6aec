"""A few-shot run's model as hf-finetune uses it: the sentence encoder and the logistic-regression head as one
torch module that returns a classification head's logits, so evaluation, `predict` and calibration treat it
like any fine-tuned classifier.

The run's directory is also a SetFit model (`setfit.SetFitModel.from_pretrained` reads the encoder, its
config_setfit.json and the head's pickle, model_head.pkl). hf-finetune never unpickles: it reads the same head
from ``classifier_head.safetensors``, written next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import FinetuneError

SETFIT_CONFIG = "config_setfit.json"
HEAD_FILE = "classifier_head.safetensors"
#: the bias of a class the head never saw in training: its probability is zero in practice
ABSENT_CLASS_BIAS = -1.0e4


def is_few_shot_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a few-shot run's model (the encoder plus the head's weights)."""
    path = Path(path)
    return (path / SETFIT_CONFIG).is_file() and (path / HEAD_FILE).is_file()


def head_weights(classifier: Any, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of a linear layer whose softmax is ``classifier``'s `predict_proba` (a fitted
    scikit-learn `LogisticRegression` on label ids), one row per label id. Binary regression has one row,
    z = w.x + b with p(second class) = sigmoid(z) = softmax([0, z])[1]: the first class gets the zero row. A
    label id the classifier never saw gets a zero row and a bias of -1e4."""
    coef = torch.as_tensor(classifier.coef_, dtype=torch.float32)
    intercept = torch.as_tensor(classifier.intercept_, dtype=torch.float32)
    classes = [int(c) for c in classifier.classes_]
    if coef.shape[0] == 1 and len(classes) == 2:  # binary: one decision function for the second class
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    weight = torch.zeros(num_labels, coef.shape[1])
    bias = torch.full((num_labels,), ABSENT_CLASS_BIAS)
    for row, label in enumerate(classes):
        weight[label], bias[label] = coef[row], intercept[row]
    return weight, bias


class SentenceClassifier(torch.nn.Module):
    """A sentence-transformers encoder (its pooling and normalisation included) and a linear head, called like a
    transformers sequence-classification model: ``model(input_ids=..., attention_mask=..., labels=...)`` gives
    ``.logits`` (and ``.loss``, the cross-entropy, with labels)."""

    main_input_name = "input_ids"
    accepts_loss_kwargs = False  # its loss is a batch mean (see trainer.loss_counts_items)
    supports_gradient_checkpointing = False

    def __init__(self, body, weight: torch.Tensor, bias: torch.Tensor, config):
        super().__init__()
        self.body = body
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)
        self.config = config  # the encoder's transformers config, with the run's label maps

    @classmethod
    def from_dir(cls, path: str | Path, device: str | None = None) -> SentenceClassifier:
        """The model saved in a few-shot run's directory ``path`` (no pickle is read)."""
        from safetensors.torch import load_file
        from sentence_transformers import SentenceTransformer

        path = Path(path)
        if not is_few_shot_dir(path):
            raise FinetuneError(f"{path}: holds no {HEAD_FILE}; give the output dir of a few-shot run.")
        body = SentenceTransformer(str(path), device=device or "cpu", local_files_only=True)
        tensors = load_file(str(path / HEAD_FILE))
        config = body[0].auto_model.config
        return cls(body, tensors["weight"], tensors["bias"], config).to(body.device)

    def save_head(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        head = {"weight": self.head.weight.detach().cpu(), "bias": self.head.bias.detach().cpu()}
        save_file({k: v.contiguous() for k, v in head.items()}, str(Path(path) / HEAD_FILE))

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The encoder's sentence embeddings of a tokenised batch."""
        features = {"input_ids": input_ids}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        features["attention_mask"] = attention_mask
        if token_type_ids is not None:
            features["token_type_ids"] = token_type_ids
        return self.body(features)["sentence_embedding"]

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        embedding = self.embed(input_ids, attention_mask, token_type_ids)
        logits = self.head(embedding.to(self.head.weight.dtype))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
