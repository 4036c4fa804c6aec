"""Knowledge distillation (`strategy.distill`): the teacher run checked before any weights load, the teacher
loaded frozen, and the loss that mixes its soft targets with the labels (Hinton et al., 2015).

The loss of a training batch is ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * hard``,
with ``s`` and ``t`` the student's and the teacher's logits and ``hard`` the task's own loss on the labels
(`hf_finetune.losses`: cross-entropy, class weights, focal loss). Items are what the labels count: one per
example for text classification, one per labelled token (label != -100) for token classification. Both terms
are sums over items divided by the Trainer's ``num_items_in_batch`` (the items of the whole optimizer step), so
gradient accumulation gives the gradient of one big batch. Evaluation uses the hard loss only.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.coerce import parse_yaml
from ..config.schema import DistillConfig, Recipe
from ..errors import FinetuneError, RecipeError
from ..outputs import ADAPTER_CONFIG, RECIPE_FILE, RESULTS_FILE, read_json

logger = logging.getLogger(__name__)

#: the tasks a teacher can distil into (their heads give one distribution per item)
TASKS = ("text-classification", "token-classification")
#: adapters that merge into the weights when the teacher loads
MERGEABLE = ("lora", "ia3")
IGNORE_INDEX = -100
#: bumped when the logit cache's format or key changes
CACHE_VERSION = 1
_FIELD = "strategy.distill.teacher"
#: text whose ids the teacher's and the student's tokenizers must agree on (case, accents, digits, rare words)
_PROBE = "Hello, World! The naïve café's CEO paid $1,234.50 — unbelievably, in 2019 (Zürich)."


@dataclass(frozen=True)
class Teacher:
    """What `check_teacher` found out about the teacher run, before any weights load."""

    path: Path
    task: str
    labels: tuple[str, ...]
    peft_method: str | None
    base_model: str | None
    revision: str | None
    metrics: dict[str, Any]

    def record(self, cfg: DistillConfig, num_layers: int | None) -> dict[str, Any]:
        """What the run records (strategy.json, the model card, the log)."""
        out: dict[str, Any] = {
            "teacher": str(self.path),
            "alpha": cfg.alpha,
            "temperature": cfg.temperature,
            "student_num_layers": num_layers,
        }
        if self.peft_method:
            out["teacher_peft"] = f"{self.peft_method} (merged)"
        if self.metrics:
            out["teacher_metrics"] = self.metrics
        return out


def check_teacher(recipe: Recipe, model_config: Any, tokenizer: Any) -> Teacher | None:
    """The teacher of `strategy.distill`, checked against the student (task, label set and order, tokenizer);
    None without distillation. Reads the teacher's recipe.yaml, config.json and tokenizer, no weights."""
    cfg = recipe.strategy.distill
    if cfg is None:
        return None
    task_name = recipe.task.name
    if task_name not in TASKS:
        raise RecipeError(
            "strategy.distill",
            f"distils text and token classification ({', '.join(TASKS)}), not {task_name}; drop "
            "`strategy.distill`.",
        )
    problem = getattr(model_config, "problem_type", None)
    if problem not in (None, "single_label_classification"):
        raise RecipeError(
            "strategy.distill",
            f"distils single-label classification (a softmax over the classes), and this task is "
            f"{problem.replace('_', ' ')}; drop `strategy.distill`.",
        )
    path = Path(cfg.teacher)
    if not path.is_dir():
        raise RecipeError(
            _FIELD,
            f"{path}: no such directory; give the `training.output_dir` of a finished `hf-finetune train` run.",
        )
    if not (path / RECIPE_FILE).is_file():
        raise RecipeError(
            _FIELD,
            f"{path}: has no {RECIPE_FILE}, so it is not an hf-finetune run; give the output directory of a "
            "finished training run.",
        )
    if not (path / "config.json").is_file():
        raise RecipeError(
            _FIELD,
            f"{path}: has no saved model (config.json); its training has not finished. Finish it "
            f"(`hf-finetune train {path / RECIPE_FILE} --resume`), or give another run.",
        )
    raw = parse_yaml((path / RECIPE_FILE).read_text(encoding="utf-8"), str(path / RECIPE_FILE)) or {}
    task_raw = raw.get("task") or {}
    teacher_task = task_raw if isinstance(task_raw, str) else task_raw.get("name", "text-classification")
    if teacher_task != task_name:
        raise RecipeError(
            _FIELD,
            f"{path} is a {teacher_task} run and this recipe is {task_name}; the teacher must be trained "
            "on the same task.",
        )
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    teacher_problem = config.get("problem_type")
    if teacher_problem not in (None, "single_label_classification"):
        raise RecipeError(
            _FIELD,
            f"{path} is a {teacher_problem.replace('_', ' ')} model; distillation needs a single-label one.",
        )
    theirs = _label_names(config.get("id2label") or {})
    ours = _label_names(getattr(model_config, "id2label", None) or {})
    if theirs != ours:
        raise RecipeError(
            _FIELD,
            f"{path} predicts the labels {list(theirs)} and this recipe's are {list(ours)}; the teacher needs "
            "the same labels in the same order (set `task.labels` to its list, or give another teacher).",
        )
    peft = raw.get("peft") or {}
    method = peft.get("method") if isinstance(peft, dict) else None
    base_model = None
    if (path / ADAPTER_CONFIG).is_file():
        if method not in MERGEABLE:
            raise RecipeError(
                _FIELD,
                f"{path} holds a {method or 'peft'} adapter, which cannot be merged into the weights; a "
                "teacher is a full model or a LoRA/IA3 adapter.",
            )
        base_model = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    else:
        method = None
    _check_tokenizer(path, tokenizer)
    model_raw = raw.get("model") or {}
    results = read_json(path / RESULTS_FILE) or {}
    metrics = {k: v for k, v in results.items() if k.startswith("eval_") and isinstance(v, (int, float))}
    per_label = tuple(f"eval_{name}_" for name in theirs)
    noise = ("_runtime", "_per_second", "_samples", "_temperature", "_calibrated")
    metrics = {k: v for k, v in metrics.items() if not k.endswith(noise) and not k.startswith(per_label)}
    return Teacher(
        path=path,
        task=teacher_task,
        labels=theirs,
        peft_method=method,
        base_model=base_model,
        revision=model_raw.get("revision") if isinstance(model_raw, dict) else None,
        metrics=metrics,
    )


def _label_names(id2label: Mapping[Any, str]) -> tuple[str, ...]:
    return tuple(str(name) for _, name in sorted((int(i), name) for i, name in id2label.items()))


def _check_tokenizer(path: Path, tokenizer: Any) -> None:
    """The teacher reads the student's input ids, so its tokenizer must map text to the same ids."""
    from transformers import AutoTokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise RecipeError(_FIELD, f"{path}: could not load its tokenizer ({exc}).") from None
    same = (
        theirs.get_vocab() == tokenizer.get_vocab()
        and theirs(_PROBE)["input_ids"] == tokenizer(_PROBE)["input_ids"]
    )
    same = same and theirs.pad_token_id == tokenizer.pad_token_id
    if not same:
        raise RecipeError(
            _FIELD,
            f"{path}'s tokenizer ({type(theirs).__name__}, {len(theirs)} tokens) gives other ids than this "
            f"recipe's ({type(tokenizer).__name__}, {len(tokenizer)} tokens); the teacher reads the student's "
            "input ids, so both need the same tokenizer (e.g. the same checkpoint family).",
        )


def load_teacher(teacher: Teacher, model_class: Any):
    """The teacher model: in eval mode, every parameter frozen, a LoRA/IA3 adapter merged."""
    from transformers import AutoConfig

    if teacher.base_model is not None:
        from peft import PeftModel

        base = model_class.from_pretrained(
            teacher.base_model,
            config=AutoConfig.from_pretrained(teacher.path),
            revision=teacher.revision or "main",
        )
        model = PeftModel.from_pretrained(base, teacher.path).merge_and_unload()
    else:
        model = model_class.from_pretrained(teacher.path)
    model.eval()
    model.requires_grad_(False)
    return model


def soft_target_loss(student_logits, teacher_logits, labels, temperature: float, num_items_in_batch=None):
    """``sum over items of KL(softmax(t / T) || softmax(s / T))``, divided by ``num_items_in_batch`` (else by
    the batch's own item count). Items: the positions of ``labels`` that are not -100 (sequence
    classification: logits ``(B, C)``, labels ``(B,)``; token classification: ``(B, L, C)`` and ``(B, L)``).
    Computed in fp32; not yet multiplied by T^2."""
    import torch
    import torch.nn.functional as F

    classes = student_logits.shape[-1]
    student = student_logits.float().reshape(-1, classes) / temperature
    teacher = teacher_logits.float().to(student.device).reshape(-1, classes) / temperature
    mask = labels.to(student.device).reshape(-1) != IGNORE_INDEX
    per_item = F.kl_div(
        F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True, reduction="none"
    ).sum(-1)
    total = torch.where(mask, per_item, torch.zeros_like(per_item)).sum()
    if num_items_in_batch is None:
        return total / mask.sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(device=total.device, dtype=total.dtype)
    return total / num_items_in_batch


def distillation_loss(soft, hard, alpha: float, temperature: float):
    """``alpha * T^2 * soft + (1 - alpha) * hard`` (the T^2 keeps the soft term's gradients on the hard term's
    scale as T changes)."""
    return alpha * temperature * temperature * soft + (1.0 - alpha) * hard


def cache_key(teacher: Teacher, per_token: bool, precision: str) -> str:
    """The key of a teacher's logit cache: its weights and config (their content), the kind of logits and
    the autocast precision they were computed under."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{per_token}|{precision}".encode())
    names = ("config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors")
    for name in names:
        path = teacher.path / name
        if path.is_file():
            h.update(name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    h.update(str(teacher.base_model).encode())  # an adapter's base (its weights: the Hub's, by revision)
    h.update(str(teacher.revision).encode())
    return h.hexdigest()[:32]


class LogitCache:
    """The teacher's logits by input, kept on disk between runs (`strategy.distill.cache_logits`).

    An example is known by a digest of its real tokens (input ids and token types where the attention mask
    is 1), so the cache holds for any data, batching and padding; the file is keyed by the teacher
    (`cache_key`). Logits per example: ``(1, C)`` for sequence classification, ``(tokens, C)`` for token
    classification. Lives in ``teacher_logits/`` of the package cache (`hf_finetune.cache.cache_dir`).
    """

    def __init__(self, path: Path, per_token: bool):
        self.path = Path(path)
        self.per_token = per_token
        self.store: dict[bytes, Any] = {}
        self.new = 0
        if self.path.is_file():
            import numpy as np

            with np.load(self.path) as data:
                keys, lengths, values = data["keys"], data["lengths"], data["values"]
            ends = np.cumsum(lengths)
            for key, end, length in zip(keys, ends, lengths):
                self.store[key.tobytes()] = values[end - length : end]
            logger.info("strategy.distill: %d cached teacher logits from %s", len(self.store), self.path)

    def digests(self, inputs: Mapping[str, Any]) -> tuple[list[bytes], Any]:
        import numpy as np

        ids = inputs["input_ids"].detach().cpu().numpy().astype(np.int64)
        mask = inputs.get("attention_mask")
        mask = np.ones_like(ids, dtype=bool) if mask is None else mask.detach().cpu().numpy().astype(bool)
        types = inputs.get("token_type_ids")
        types = np.zeros_like(ids) if types is None else types.detach().cpu().numpy().astype(np.int64)
        found = [
            hashlib.blake2b(
                ids[i][mask[i]].tobytes() + b"|" + types[i][mask[i]].tobytes(), digest_size=16
            ).digest()
            for i in range(len(ids))
        ]
        return found, mask

    def lookup(self, digests: list[bytes], mask, device):
        """The batch's teacher logits if every example is cached, else None."""
        import numpy as np
        import torch

        rows = [self.store.get(d) for d in digests]
        if any(r is None for r in rows):
            return None
        flat = torch.from_numpy(np.concatenate(rows))
        if not self.per_token:
            return flat.to(device)
        mask = torch.from_numpy(mask)
        out = torch.zeros(*mask.shape, flat.shape[-1], dtype=flat.dtype)
        out[mask] = flat
        return out.to(device)

    def add(self, digests: list[bytes], mask, logits) -> None:
        import torch

        values = logits.detach().float().cpu()
        if self.per_token:
            values = values[torch.from_numpy(mask)]
            rows = values.split(mask.sum(1).tolist())
        else:
            rows = values.split(1)
        for digest, row in zip(digests, rows):
            if digest not in self.store:
                self.store[digest] = row.numpy()
                self.new += 1

    def save(self) -> None:
        """Write the cache (when it learnt something), atomically."""
        import numpy as np

        if not self.new:
            return
        keys = list(self.store)
        values = [self.store[k] for k in keys]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + f".{os.getpid()}.partial")
        with partial.open("wb") as f:
            np.savez(
                f,
                keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(
                    len(keys), -1
                ),  # not S16: it drops NULs
                lengths=np.array([len(v) for v in values], dtype=np.int64),
                values=np.concatenate(values).astype(np.float32),
            )
        os.replace(partial, self.path)
        logger.info("strategy.distill: %d teacher logits cached in %s", len(keys), self.path)
        self.new = 0


class Distiller:
    """The training loss of `strategy.distill`: the teacher's forward on the student's batch, and the mix.

    ``hard_loss(outputs, labels, num_items_in_batch=...)`` is the task's loss on the labels, normalised by
    ``num_items_in_batch`` (an `ImbalanceLoss`). ``load_teacher()`` gives the teacher model, loaded on first
    need (never, when ``cache`` holds the logits of every batch). The teacher is no submodule of the student,
    so it is neither trained nor saved; it moves to the student's device on first use.
    """

    def __init__(
        self,
        load_teacher: Callable[[], Any],
        cfg: DistillConfig,
        hard_loss: Callable[..., Any],
        cache: LogitCache | None = None,
    ):
        self.load_teacher = load_teacher
        self._teacher = None
        self.alpha = cfg.alpha
        self.temperature = cfg.temperature
        self.hard_loss = hard_loss
        self.cache = cache
        #: running sums of the soft term (KL at T, before T^2) and the hard term since the last log
        self.sums = {"soft": 0.0, "hard": 0.0, "count": 0}

    @property
    def teacher(self):
        if self._teacher is None:
            self._teacher = self.load_teacher()
            self.accepted = set(inspect.signature(self._teacher.forward).parameters)
        return self._teacher

    def teacher_logits(self, inputs: Mapping[str, Any], device):
        import torch

        digests = mask = None
        if self.cache is not None:
            digests, mask = self.cache.digests(inputs)
            cached = self.cache.lookup(digests, mask, device)
            if cached is not None:
                return cached
        teacher = self.teacher
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        if teacher.training:  # someone called .train() on everything: the teacher stays in eval mode
            teacher.eval()
        with torch.no_grad():
            logits = teacher(**{k: v for k, v in inputs.items() if k in self.accepted}).logits
        if self.cache is not None:
            self.cache.add(digests, mask, logits)
        return logits

    def save_cache(self) -> None:
        if self.cache is not None:
            self.cache.save()

    def loss(self, model, inputs: Mapping[str, Any], num_items_in_batch=None, autocast=nullcontext):
        """(loss, student outputs) of a training batch; ``autocast``: the student's autocast context, for the
        teacher's forward."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise FinetuneError("strategy.distill: a training batch has no labels to distil on.")
        outputs = model(**inputs)
        hard = self.hard_loss(outputs, labels, num_items_in_batch=num_items_in_batch)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        if self.alpha == 0.0:  # the labels only: no teacher forward
            self._add(None, hard)
            return hard, outputs
        with autocast():
            teacher = self.teacher_logits(inputs, logits.device)
        soft = soft_target_loss(logits, teacher, labels, self.temperature, num_items_in_batch)
        self._add(soft, hard)
        return distillation_loss(soft, hard, self.alpha, self.temperature), outputs

    def _add(self, soft, hard) -> None:
        self.sums["soft"] += 0.0 if soft is None else float(soft.detach())
        self.sums["hard"] += float(hard.detach())
        self.sums["count"] += 1

    def take_logs(self, accumulation: int) -> dict[str, float]:
        """The mean soft (KL at T) and hard terms per optimizer step since the last call, for the log."""
        count, out = self.sums["count"], {}
        if count:
            steps = max(count / max(accumulation, 1), 1.0)  # each micro-batch holds its share of the step
            out = {
                "distill_kl": round(self.sums["soft"] / steps, 6),
                "distill_hard_loss": round(self.sums["hard"] / steps, 6),
            }
        self.sums = {"soft": 0.0, "hard": 0.0, "count": 0}
        return out


def hard_loss(task_loss: Any = None):
    """The hard term: the task's own loss (`ImbalanceLoss`: class weights, focal loss), else plain
    cross-entropy, both normalised by ``num_items_in_batch``."""
    from ..losses import ImbalanceLoss

    return task_loss if task_loss is not None else ImbalanceLoss(names=())
