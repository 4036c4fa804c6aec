"""Training a `few_shot` recipe: SetFit (contrastive tuning of the sentence encoder on pairs of the training
examples, then a logistic regression on its embeddings) or the logistic regression alone on the encoder as it
is (`embedding_probe`), through the `setfit` library.

`fit` takes what `pipeline.prepare` checked (data drawn and labelled, tokenizer, config; no weights yet) and
returns the trained model as a `SentenceClassifier`; `save` writes it as a SetFit model directory. The
pipeline evaluates, reports and writes the card as for any run.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FinetuneError, RecipeError
from ..outputs import PARTIAL_PREFIX
from .model import SentenceClassifier, head_weights

logger = logging.getLogger("hf_finetune")

EXTRA = "fewshot"


def check_installed() -> None:
    """The `setfit` library, else an error that says how to install it (before anything loads)."""
    try:
        import setfit  # noqa: F401
    except ImportError as exc:
        raise RecipeError(
            "few_shot.method",
            f"needs the `setfit` library ({exc}); install it with `pip install hf-finetune[{EXTRA}]`.",
        ) from None


def describe(recipe) -> str:
    """What a few-shot recipe trains, in one line (`hf-finetune validate`, strategy.json, the card)."""
    cfg = recipe.few_shot
    head = f"a logistic regression (C={cfg.head_c:g}) on the embeddings"
    if cfg.method == "embedding_probe":
        return f"embedding probe: {head} of the frozen sentence encoder"
    pairs = (
        f"{cfg.num_iterations} pair draws per example"
        if cfg.num_iterations is not None
        else f"{cfg.sampling_strategy} pairs"
    )
    steps = f"{cfg.max_steps} steps" if cfg.max_steps is not None else f"{cfg.num_epochs} epoch(s)"
    return (
        f"SetFit: the sentence encoder tuned contrastively ({pairs}, cosine-similarity loss, {steps} of "
        f"{cfg.batch_size} pairs at lr {cfg.learning_rate:g}), then {head}"
    )


@dataclass
class FewShotResult:
    """A trained few-shot model: as hf-finetune runs it, as setfit saves it, its training metrics and the record
    strategy.json keeps."""

    model: SentenceClassifier
    setfit_model: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def fit(prepared, max_length: int) -> FewShotResult:
    """Train ``prepared``'s recipe (its `few_shot` method) on its training split; ``max_length``: tokens per
    text (the encoder reads what evaluation and `predict` will read)."""
    check_installed()
    from setfit import SetFitModel, Trainer, TrainingArguments

    recipe, task = prepared.recipe, prepared.task
    cfg, args = recipe.few_shot, recipe.training
    train = prepared.raw[recipe.data.train_split]
    texts = [str(t) for t in train[task.cfg.text_column]]
    labels = [task.labels.encode(v) for v in train[task.cfg.label_column]]
    names = list(task.labels.names)

    scratch = tempfile.mkdtemp(prefix="hf-finetune-setfit-")
    started = time.time()
    model = SetFitModel.from_pretrained(
        recipe.model.name_or_path,
        revision=recipe.model.revision,
        trust_remote_code=recipe.model.trust_remote_code,
        labels=names,
        head_params={"C": cfg.head_c, "max_iter": 1000},
    )
    body = model.model_body
    body.max_seq_length = max_length
    setfit_args = TrainingArguments(
        output_dir=scratch,  # setfit's own checkpoints and logs: none are kept
        batch_size=cfg.batch_size,
        num_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        num_iterations=cfg.num_iterations,
        sampling_strategy=cfg.sampling_strategy,
        body_learning_rate=cfg.learning_rate,
        max_length=max_length,
        seed=args.seed,
        logging_steps=int(args.logging_steps) if args.logging_steps and args.logging_steps >= 1 else 5,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        show_progress_bar=not args.disable_tqdm,
    )
    from datasets import Dataset

    trainer = Trainer(
        model=model, args=setfit_args, train_dataset=Dataset.from_dict({"text": texts, "label": labels})
    )
    metrics: dict[str, Any] = {}
    if cfg.method == "setfit":
        embedding_started = time.time()
        trainer.train_embeddings(texts, labels, args=setfit_args)
        state = trainer.st_trainer.state
        losses = [e["embedding_loss"] for e in state.log_history if "embedding_loss" in e]
        metrics["train_embedding_runtime"] = round(time.time() - embedding_started, 3)
        metrics["train_steps"] = state.global_step
        metrics["train_pairs"] = len(trainer.st_trainer.train_dataset)
        if losses:
            metrics["train_embedding_loss_first"] = float(losses[0])
            metrics["train_embedding_loss_last"] = float(losses[-1])
    head_started = time.time()
    trainer.train_classifier(texts, labels, args=setfit_args)
    shutil.rmtree(scratch, ignore_errors=True)
    metrics["train_head_runtime"] = round(time.time() - head_started, 3)
    metrics["train_runtime"] = round(time.time() - started, 3)
    metrics["train_samples"] = len(texts)
    metrics["train_samples_per_second"] = round(len(texts) / metrics["train_runtime"], 3)
    metrics = {k: v for k, v in metrics.items() if v is not None}

    config = body[0].auto_model.config
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = "single_label_classification"
    weight, bias = head_weights(model.model_head, len(names))
    classifier = SentenceClassifier(body, weight, bias, config).to(body.device).eval()
    trained = sum(p.numel() for p in body.parameters()) if cfg.method == "setfit" else 0
    total = sum(p.numel() for p in classifier.parameters())
    head_params = weight.numel() + bias.numel()
    record = {
        "strategy": describe(recipe),
        "few_shot": cfg.method,
        "trainable_params": trained + head_params,
        "total_params": total,
        "trainable_percent": round(100.0 * (trained + head_params) / total, 4),
        "train_examples": len(texts),
    }
    metrics["trainable_params"] = record["trainable_params"]
    metrics["total_params"] = total
    return FewShotResult(classifier, model, metrics, record)


def save(result: FewShotResult, output_dir: Path) -> None:
    """Write the trained model into ``output_dir`` as a SetFit model (encoder, config_setfit.json, the head's
    model_head.pkl) plus the head as safetensors; written in a staging folder first, then moved in, so the
    directory never holds half a model. SetFit's own README.md is not kept (the pipeline writes the card)."""
    staging = output_dir / f"{PARTIAL_PREFIX}few-shot"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result.setfit_model.save_pretrained(str(staging))
        result.model.save_head(staging)
        (staging / "README.md").unlink(missing_ok=True)
        for item in sorted(staging.iterdir()):
            target = output_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    except OSError as exc:
        raise FinetuneError(f"could not save the few-shot model in {output_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
