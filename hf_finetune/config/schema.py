"""The recipe's shape: one dataclass per section, the `Recipe` that holds them, and their own checks.

Every field is declared with :func:`field_help`, so its help text travels with it (the README's recipe
reference and error messages read it). This module imports nothing of the package but ``errors``: the
task modules, the data loader and the strategies build on it, and `config.load` reads recipes into it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from ..errors import RecipeError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SECTIONS = ("task", "model", "data", "strategy", "peft", "training", "hub")
PEFT_METHODS = ("lora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning")


def field_help(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A documented dataclass field: ``name: int = field_help("What it does.", 8)``.

    ``text`` is the field's help (``metadata["help"]``: the README reference and `hf-finetune` errors show
    it); ``default`` its default, or pass ``default_factory=list`` for a mutable one. Other keywords go
    to :func:`dataclasses.field`. Task modules declare their ``task:`` fields with it.
    """
    if "default_factory" in kw:
        return field(metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class TaskConfig:
    """Base of every task section; each task module subclasses it with its own fields."""

    section: ClassVar[str] = "task"
    name: str = field_help("Task name: one of `hf-finetune tasks`.", "text-classification")


@dataclass
class ModelConfig:
    section: ClassVar[str] = "model"
    name_or_path: str = field_help("Hub id or local directory of the pretrained checkpoint.", DEFAULT_MODEL)
    revision: str = field_help("Hub revision (branch, tag or commit).", "main")
    tokenizer_name_or_path: str | None = field_help("Tokenizer, when it differs from the model.", None)
    trust_remote_code: bool = field_help(
        "Run Python code shipped in the checkpoint repository (custom architectures). Off unless set: "
        "review that code first.",
        False,
    )
    allow_pickle: bool = field_help(
        "Load pickle weights (pytorch_model.bin) when a checkpoint has no safetensors. Unpickling can run "
        "code, so only for checkpoints you trust.",
        False,
    )
    config_overrides: dict[str, Any] = field_help(
        "Model config attributes to change before the model is built, e.g. {hidden_dropout_prob: 0.0}; "
        "each must be an attribute the checkpoint's config has (checked before weights load).",
        default_factory=dict,
    )

    def __post_init__(self) -> None:
        if not self.name_or_path or not str(self.name_or_path).strip():
            raise RecipeError("model.name_or_path", "is empty; give a Hub id or a local model directory.")


@dataclass
class DataConfig:
    section: ClassVar[str] = "data"
    dataset: str | None = field_help("Hub dataset id (e.g. `glue`), also looked up in the mirror.", None)
    config: str | None = field_help("Dataset configuration (e.g. `sst2`).", None)
    revision: str | None = field_help("Hub dataset revision.", None)
    files: dict[str, str | list[str]] | None = field_help(
        "Local files per split, e.g. {train: train.csv, validation: dev.csv} (csv, tsv, json, jsonl, parquet; "
        "conll/txt: CoNLL columns).",
        None,
    )
    mirror: str | None = field_help(
        "Local mirror directory laid out <dataset>/<config>/<split>.<ext>; default: $HF_FINETUNE_DATA_MIRROR.",
        None,
    )
    train_split: str = field_help("Split to train on.", "train")
    eval_split: str | list[str] | None = field_help(
        "Split(s) to evaluate on; a list evaluates each (e.g. MNLI matched and mismatched).", "validation"
    )
    test_split: str | None = field_help(
        "A split without labels (e.g. GLUE test); `validate` checks its text columns.", None
    )
    max_train_samples: int | None = field_help("Use only the first N training examples.", None)
    max_eval_samples: int | None = field_help("Use only the first N examples of each evaluation split.", None)
    max_seq_length: int = field_help(
        "Truncate inputs to this many tokens (batches are padded dynamically).", 128
    )
    padding: Literal["longest", "max_length"] = field_help(
        "`longest`: pad each batch to its longest example (fast); `max_length`: pad every batch to "
        "max_seq_length, as transformers' run_glue.py does by default (static shapes, for comparisons or TPUs).",
        "longest",
    )
    preprocessing_num_workers: int | None = field_help(
        "Processes for tokenisation (datasets.map num_proc).", None
    )
    cache_tokenised: bool = field_help(
        "Keep tokenised splits on disk (~/.cache/hf_finetune/tokenised, keyed by data, tokenizer and "
        "preprocessing settings) so the next run with the same settings skips tokenisation; false: "
        "tokenise in memory every run.",
        True,
    )
    fix_answer_starts: bool = field_help(
        "Question answering: re-find an answer whose answer_start misses it (nearest occurrence in the context).",
        False,
    )

    def __post_init__(self) -> None:
        if self.dataset is None and not self.files:
            raise RecipeError(
                "data", "give either `data.dataset` (a Hub id) or `data.files` (local files per split)."
            )
        if self.dataset is not None and self.files:
            raise RecipeError("data.files", "set either `data.dataset` or `data.files`, not both.")
        for name in ("max_train_samples", "max_eval_samples", "max_seq_length", "preprocessing_num_workers"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise RecipeError(f"data.{name}", f"must be a positive integer, got {value}.")
        if isinstance(self.eval_split, list) and not self.eval_split:
            raise RecipeError("data.eval_split", "is an empty list; name a split or set it to null.")
        if self.files:
            for split, paths in self.files.items():
                if not paths:
                    raise RecipeError(f"data.files.{split}", "is empty; give a file path.")
            # Relative paths are relative to the working directory; store them absolute so the
            # resolved recipe written next to the model reproduces the run from anywhere.
            self.files = {
                split: (
                    [absolute_path(p) for p in paths] if isinstance(paths, list) else absolute_path(paths)
                )
                for split, paths in self.files.items()
            }
            if self.train_split not in self.files:
                raise RecipeError(
                    "data.files",
                    f"has no file for the training split '{self.train_split}' (splits given: "
                    f"{', '.join(self.files)}); add it or set `data.train_split`.",
                )
        if self.mirror is not None:
            self.mirror = absolute_path(self.mirror)

    @property
    def eval_splits(self) -> list[str]:
        if self.eval_split is None:
            return []
        return list(self.eval_split) if isinstance(self.eval_split, list) else [self.eval_split]


@dataclass
class GradualUnfreezingConfig:
    section: ClassVar[str] = "strategy.gradual_unfreezing"
    every: int = field_help("Unfreeze one more unit (top down) every this many epochs or optimizer steps.", 1)
    unit: Literal["epoch", "steps"] = field_help(
        "What `every` counts: `epoch` or `steps` (optimizer steps).", "epoch"
    )

    def __post_init__(self) -> None:
        if self.every < 1:
            raise RecipeError("strategy.gradual_unfreezing.every", f"must be at least 1, got {self.every}.")


@dataclass
class StrategyConfig:
    """Which parameters train, and at which learning rate. Applied to any encoder checkpoint, on every task."""

    section: ClassVar[str] = "strategy"
    freeze_embeddings: bool = field_help(
        "Freeze the embeddings (word/position/type, plus what the encoder shares across layers).", False
    )
    freeze_layers: int = field_help(
        "Freeze the bottom N transformer layers; a negative N freezes all but the top |N|.", 0
    )
    freeze_all_but_head: bool = field_help("Train the task head only (linear probing).", False)
    freeze_modules: list[str] = field_help(
        "Also freeze every parameter whose name matches one of these regular expressions (re.search).",
        default_factory=list,
    )
    layerwise_lr_decay: float = field_help(
        "LLRD: layer l of L trains at lr * decay^(L - l), the embeddings at lr * decay^(L + 1); 1.0 is off.",
        1.0,
    )
    head_lr_multiplier: float = field_help("The task head trains at training.learning_rate times this.", 1.0)
    gradual_unfreezing: GradualUnfreezingConfig | None = field_help(
        "ULMFiT: start with the head only and unfreeze one more layer, top down, every `every` epochs or steps "
        "(`true` means every epoch).",
        None,
    )

    def __post_init__(self) -> None:
        if not (0.0 < self.layerwise_lr_decay <= 1.0):
            raise RecipeError(
                "strategy.layerwise_lr_decay",
                f"must be in (0, 1] (1.0 turns it off), got {self.layerwise_lr_decay}; 0.8-0.95 is usual.",
            )
        if not (0.0 < self.head_lr_multiplier < float("inf")):
            raise RecipeError(
                "strategy.head_lr_multiplier", f"must be a positive number, got {self.head_lr_multiplier}."
            )
        for i, pattern in enumerate(self.freeze_modules):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise RecipeError(
                    f"strategy.freeze_modules[{i}]", f"{pattern!r} is not a valid regular expression: {exc}."
                ) from None
        if self.freeze_all_but_head:
            if self.gradual_unfreezing is not None:
                raise RecipeError(
                    "strategy.gradual_unfreezing",
                    "has nothing to unfreeze when `strategy.freeze_all_but_head` is true; drop one of the two.",
                )
            if self.layerwise_lr_decay != 1.0:
                raise RecipeError(
                    "strategy.layerwise_lr_decay",
                    "has no effect when `strategy.freeze_all_but_head` is true (no layer trains); drop one of the two.",
                )

    @property
    def is_default(self) -> bool:
        return self == StrategyConfig()


@dataclass
class PeftSection:
    """A `peft` method instead of full fine-tuning: the base model stays frozen, adapters and the head train."""

    section: ClassVar[str] = "peft"
    method: Literal["lora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning"] | None = field_help(
        "PEFT method: lora, ia3, prefix_tuning, prompt_tuning or p_tuning; null = no PEFT.", None
    )
    r: int = field_help("LoRA rank.", 8)
    alpha: int = field_help(
        "LoRA alpha (the update is scaled by alpha / r, or alpha / sqrt(r) with rsLoRA).", 16
    )
    dropout: float = field_help("LoRA dropout on the adapter input.", 0.1)
    target_modules: str | list[str] = field_help(
        "`auto` (LoRA: every linear layer inside the transformer blocks; IA3: peft's table for the "
        "architecture), or module names (suffixes) to adapt.",
        "auto",
    )
    use_dora: bool = field_help("DoRA: weight-decomposed LoRA.", False)
    use_rslora: bool = field_help("rsLoRA: scale by alpha / sqrt(r).", False)
    loraplus_lr_ratio: float | None = field_help(
        "LoRA+: the B matrices train at this ratio times the learning rate (16 is usual).", None
    )
    num_virtual_tokens: int = field_help("Prompt methods: number of virtual tokens.", 20)
    modules_to_save: list[str] = field_help(
        "Extra modules trained and saved whole, besides the task head (found automatically), e.g. [pooler].",
        default_factory=list,
    )

    def __post_init__(self) -> None:
        if self.method is None:
            return
        if self.r < 1:
            raise RecipeError("peft.r", f"must be a positive integer, got {self.r}.")
        if self.alpha <= 0:
            raise RecipeError("peft.alpha", f"must be positive, got {self.alpha}.")
        if not (0.0 <= self.dropout < 1.0):
            raise RecipeError("peft.dropout", f"must be in [0, 1), got {self.dropout}.")
        if self.num_virtual_tokens < 1:
            raise RecipeError(
                "peft.num_virtual_tokens", f"must be at least 1, got {self.num_virtual_tokens}."
            )
        lora_only = {"use_dora": self.use_dora, "use_rslora": self.use_rslora}
        lora_only["loraplus_lr_ratio"] = self.loraplus_lr_ratio is not None
        for name, used in lora_only.items():
            if used and self.method != "lora":
                raise RecipeError(f"peft.{name}", f"applies to `peft.method: lora` only, not {self.method}.")
        if self.loraplus_lr_ratio is not None and not self.loraplus_lr_ratio > 0:
            raise RecipeError("peft.loraplus_lr_ratio", f"must be positive, got {self.loraplus_lr_ratio}.")
        if isinstance(self.target_modules, str) and self.target_modules != "auto":
            self.target_modules = [self.target_modules]
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise RecipeError("peft.target_modules", "is empty; give module names or `auto`.")
        if self.method in ("prefix_tuning", "prompt_tuning", "p_tuning") and self.target_modules != "auto":
            raise RecipeError(
                "peft.target_modules", f"does not apply to {self.method} (it adds virtual tokens)."
            )

    @property
    def enabled(self) -> bool:
        return self.method is not None


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


@dataclass
class HubConfig:
    """Publishing: push the trained model (or PEFT adapter) with its model card to the Hugging Face Hub.

    The token is the usual one (``HF_TOKEN`` or `hf auth login`); it never goes into a recipe.
    """

    section: ClassVar[str] = "hub"
    push: bool = field_help("Push the output to the Hub at the end of training (main process only).", False)
    repo_id: str | None = field_help(
        "The model repository, `user/name` or `org/name`; created if missing.", None
    )
    private: bool = field_help(
        "Create the repository as private (an existing one keeps its visibility).", False
    )
    revision: str | None = field_help("Branch to push to (created from main if missing); default main.", None)
    merge: bool = field_help(
        "PEFT runs: push the adapter merged into the base weights instead of the adapter.", False
    )
    license: str | None = field_help(
        "License in the model card (default: the base model's, when known).", None
    )
    base_model: str | None = field_help(
        "Hub id of the base model for the card, when model.name_or_path is a local directory.", None
    )

    def __post_init__(self) -> None:
        if self.repo_id is not None:
            check_repo_id(self.repo_id, "hub.repo_id")
        if self.push and not self.repo_id:
            raise RecipeError(
                "hub.repo_id", "is required with `hub.push: true`; give `user/name` or `org/name`."
            )


def check_repo_id(repo_id: str, where: str) -> str:
    """``repo_id`` if it is a Hub repository id (`user/name`), else a RecipeError naming ``where``."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise RecipeError(
            where,
            f"{repo_id!r} is not a Hub repository id: give `user/name` or `org/name` (letters, digits, "
            "'-', '_', '.'; at most 96 characters each).",
        )
    return repo_id


def absolute_path(path: str) -> str:
    """``path`` with ``~`` expanded, made absolute against the working directory (not resolved)."""
    return str(Path(os.path.expanduser(path)).absolute())


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------
@dataclass
class Recipe:
    task: TaskConfig
    model: ModelConfig
    data: DataConfig
    training: Any  # transformers.TrainingArguments
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    peft: PeftSection = field(default_factory=PeftSection)
    hub: HubConfig = field(default_factory=HubConfig)
    source: str | None = None
    # The training fields the recipe and overrides set explicitly (the rest are Trainer defaults).
    training_fields: dict[str, Any] = field(default_factory=dict)
    # `training.resume`: None (start fresh), "auto" (the newest complete checkpoint in the output dir, if
    # any) or a checkpoint directory. How to run, not what to train: it is not written to recipe.yaml.
    resume: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data; `load_recipe` of it gives the same recipe back."""
        training = {k: v for k, v in self.training_fields.items() if not is_secret(k)}
        return {
            "task": plain(dataclasses.asdict(self.task)),
            "model": plain(dataclasses.asdict(self.model)),
            "data": plain(dataclasses.asdict(self.data)),
            "strategy": plain(dataclasses.asdict(self.strategy)),
            "peft": plain(dataclasses.asdict(self.peft)),
            "hub": plain(dataclasses.asdict(self.hub)),
            "training": plain(training),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path, header: str = "") -> None:
        Path(path).write_text(header + self.to_yaml(), encoding="utf-8")


def is_secret(name: str) -> bool:
    """Whether a training field holds a token, which never goes into a recipe or a saved file."""
    return "token" in name.lower() and name != "include_num_input_tokens_seen"


def plain(value: Any) -> Any:
    """``value`` as plain YAML/JSON data: enums by value, tuples as lists, recursively."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
