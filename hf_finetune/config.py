"""Recipes: one dataclass per section, read from YAML, with dotted ``section.field=value`` overrides.

A recipe has the sections ``task``, ``model``, ``data`` and ``training``. ``training`` is
:class:`transformers.TrainingArguments` itself, so every Trainer option works in a recipe.
Every key is checked against the dataclass fields (unknown keys fail with close matches) and
every value against the field's type annotation, before any data or weights are touched.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml

from .distributed import launched_world_size
from .errors import RecipeError, close_matches

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SECTIONS = ("task", "model", "data", "strategy", "peft", "training", "hub")
PEFT_METHODS = ("lora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning")


# --------------------------------------------------------------------------------------------
# YAML: 1.2-style scalars. PyYAML follows YAML 1.1, where `no`/`on` are booleans (so
# `eval_strategy: no` would arrive as False) and `3e-5` is a string. Recipes are full of both.
# --------------------------------------------------------------------------------------------
class _RecipeLoader(yaml.SafeLoader):
    pass


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(
            None, f"{source}: YAML syntax error{where}: {problem}. Fix the YAML syntax."
        ) from None


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
def _help(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    if "default_factory" in kw:
        return field(metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text})


@dataclass
class TaskConfig:
    """Base of every task section; each task module subclasses it with its own fields."""

    section: ClassVar[str] = "task"
    name: str = _help("Task name: one of `hf-finetune tasks`.", "text-classification")


@dataclass
class ModelConfig:
    section: ClassVar[str] = "model"
    name_or_path: str = _help("Hub id or local directory of the pretrained checkpoint.", DEFAULT_MODEL)
    revision: str = _help("Hub revision (branch, tag or commit).", "main")
    tokenizer_name_or_path: str | None = _help("Tokenizer, when it differs from the model.", None)
    trust_remote_code: bool = _help(
        "Run Python code shipped in the checkpoint repository (custom architectures). Off unless set: "
        "review that code first.",
        False,
    )
    allow_pickle: bool = _help(
        "Load pickle weights (pytorch_model.bin) when a checkpoint has no safetensors. Unpickling can run "
        "code, so only for checkpoints you trust.",
        False,
    )
    config_overrides: dict[str, Any] = _help(
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
    dataset: str | None = _help("Hub dataset id (e.g. `glue`), also looked up in the mirror.", None)
    config: str | None = _help("Dataset configuration (e.g. `sst2`).", None)
    revision: str | None = _help("Hub dataset revision.", None)
    files: dict[str, str | list[str]] | None = _help(
        "Local files per split, e.g. {train: train.csv, validation: dev.csv} (csv, tsv, json, jsonl, parquet; "
        "conll/txt: CoNLL columns).",
        None,
    )
    mirror: str | None = _help(
        "Local mirror directory laid out <dataset>/<config>/<split>.<ext>; default: $HF_FINETUNE_DATA_MIRROR.",
        None,
    )
    train_split: str = _help("Split to train on.", "train")
    eval_split: str | list[str] | None = _help(
        "Split(s) to evaluate on; a list evaluates each (e.g. MNLI matched and mismatched).", "validation"
    )
    test_split: str | None = _help(
        "A split without labels (e.g. GLUE test); `validate` checks its text columns.", None
    )
    max_train_samples: int | None = _help("Use only the first N training examples.", None)
    max_eval_samples: int | None = _help("Use only the first N examples of each evaluation split.", None)
    max_seq_length: int = _help("Truncate inputs to this many tokens (batches are padded dynamically).", 128)
    padding: Literal["longest", "max_length"] = _help(
        "`longest`: pad each batch to its longest example (fast); `max_length`: pad every batch to "
        "max_seq_length, as transformers' run_glue.py does by default (static shapes, for comparisons or TPUs).",
        "longest",
    )
    preprocessing_num_workers: int | None = _help("Processes for tokenisation (datasets.map num_proc).", None)
    cache_tokenised: bool = _help(
        "Keep tokenised splits on disk (~/.cache/hf_finetune/tokenised, keyed by data, tokenizer and "
        "preprocessing settings) so the next run with the same settings skips tokenisation; false: "
        "tokenise in memory every run.",
        True,
    )
    fix_answer_starts: bool = _help(
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
                split: ([_absolute(p) for p in paths] if isinstance(paths, list) else _absolute(paths))
                for split, paths in self.files.items()
            }
            if self.train_split not in self.files:
                raise RecipeError(
                    "data.files",
                    f"has no file for the training split '{self.train_split}' (splits given: "
                    f"{', '.join(self.files)}); add it or set `data.train_split`.",
                )
        if self.mirror is not None:
            self.mirror = _absolute(self.mirror)

    @property
    def eval_splits(self) -> list[str]:
        if self.eval_split is None:
            return []
        return list(self.eval_split) if isinstance(self.eval_split, list) else [self.eval_split]


@dataclass
class GradualUnfreezingConfig:
    section: ClassVar[str] = "strategy.gradual_unfreezing"
    every: int = _help("Unfreeze one more unit (top down) every this many epochs or optimizer steps.", 1)
    unit: Literal["epoch", "steps"] = _help(
        "What `every` counts: `epoch` or `steps` (optimizer steps).", "epoch"
    )

    def __post_init__(self) -> None:
        if self.every < 1:
            raise RecipeError("strategy.gradual_unfreezing.every", f"must be at least 1, got {self.every}.")


@dataclass
class StrategyConfig:
    """Which parameters train, and at which learning rate. Applied to any encoder checkpoint, on every task."""

    section: ClassVar[str] = "strategy"
    freeze_embeddings: bool = _help(
        "Freeze the embeddings (word/position/type, plus what the encoder shares across layers).", False
    )
    freeze_layers: int = _help(
        "Freeze the bottom N transformer layers; a negative N freezes all but the top |N|.", 0
    )
    freeze_all_but_head: bool = _help("Train the task head only (linear probing).", False)
    freeze_modules: list[str] = _help(
        "Also freeze every parameter whose name matches one of these regular expressions (re.search).",
        default_factory=list,
    )
    layerwise_lr_decay: float = _help(
        "LLRD: layer l of L trains at lr * decay^(L - l), the embeddings at lr * decay^(L + 1); 1.0 is off.",
        1.0,
    )
    head_lr_multiplier: float = _help("The task head trains at training.learning_rate times this.", 1.0)
    gradual_unfreezing: GradualUnfreezingConfig | None = _help(
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
    method: Literal["lora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning"] | None = _help(
        "PEFT method: lora, ia3, prefix_tuning, prompt_tuning or p_tuning; null = no PEFT.", None
    )
    r: int = _help("LoRA rank.", 8)
    alpha: int = _help("LoRA alpha (the update is scaled by alpha / r, or alpha / sqrt(r) with rsLoRA).", 16)
    dropout: float = _help("LoRA dropout on the adapter input.", 0.1)
    target_modules: str | list[str] = _help(
        "`auto` (LoRA: every linear layer inside the transformer blocks; IA3: peft's table for the "
        "architecture), or module names (suffixes) to adapt.",
        "auto",
    )
    use_dora: bool = _help("DoRA: weight-decomposed LoRA.", False)
    use_rslora: bool = _help("rsLoRA: scale by alpha / sqrt(r).", False)
    loraplus_lr_ratio: float | None = _help(
        "LoRA+: the B matrices train at this ratio times the learning rate (16 is usual).", None
    )
    num_virtual_tokens: int = _help("Prompt methods: number of virtual tokens.", 20)
    modules_to_save: list[str] = _help(
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
    push: bool = _help("Push the output to the Hub at the end of training (main process only).", False)
    repo_id: str | None = _help("The model repository, `user/name` or `org/name`; created if missing.", None)
    private: bool = _help("Create the repository as private (an existing one keeps its visibility).", False)
    revision: str | None = _help("Branch to push to (created from main if missing); default main.", None)
    merge: bool = _help(
        "PEFT runs: push the adapter merged into the base weights instead of the adapter.", False
    )
    license: str | None = _help("License in the model card (default: the base model's, when known).", None)
    base_model: str | None = _help(
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
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise RecipeError(
            where,
            f"{repo_id!r} is not a Hub repository id: give `user/name` or `org/name` (letters, digits, "
            "'-', '_', '.'; at most 96 characters each).",
        )
    return repo_id


def _absolute(path: str) -> str:
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
        training = {k: v for k, v in self.training_fields.items() if not _is_secret(k)}
        return {
            "task": _plain(dataclasses.asdict(self.task)),
            "model": _plain(dataclasses.asdict(self.model)),
            "data": _plain(dataclasses.asdict(self.data)),
            "strategy": _plain(dataclasses.asdict(self.strategy)),
            "peft": _plain(dataclasses.asdict(self.peft)),
            "hub": _plain(dataclasses.asdict(self.hub)),
            "training": _plain(training),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path, header: str = "") -> None:
        Path(path).write_text(header + self.to_yaml(), encoding="utf-8")


def _is_secret(name: str) -> bool:
    return "token" in name.lower() and name != "include_num_input_tokens_seen"


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_recipe(
    source: str | Path | dict[str, Any], overrides: Sequence[str] = (), output_dir: str | None = None
) -> Recipe:
    """Read a recipe (a YAML path, or a dict) and apply ``section.field=value`` overrides.

    Raises :class:`RecipeError` naming the field for every problem; loads no data and no weights.
    """
    if isinstance(source, dict):
        raw, origin = _deep_copy(source), None
    else:
        path = Path(source)
        if not path.is_file():
            raise RecipeError(
                None,
                f"recipe file not found: {path}. Give the path of a recipe YAML file "
                "(`hf-finetune recipes` lists the bundled ones).",
            )
        raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
        origin = str(path)
        if raw is None:
            raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(
            None,
            f"{origin or 'recipe'}: expected a mapping with the sections "
            f"{', '.join(SECTIONS)}, got {type(raw).__name__}.",
        )
    for key in raw:
        if key not in SECTIONS:
            raise RecipeError(
                str(key),
                f"unknown recipe section{close_matches(str(key), SECTIONS)}; "
                f"sections are: {', '.join(SECTIONS)}.",
            )
    _apply_overrides(raw, overrides)

    task_raw = raw.get("task")
    if isinstance(task_raw, str):  # shorthand `task: text-classification`
        task_raw = {"name": task_raw}
    task_raw = dict(task_raw or {})
    from .tasks import get_task  # local import: the task modules import this one

    task_name = _coerce_field(task_raw.get("name", TaskConfig.name), str, "task.name")
    spec = get_task(task_name)
    task_raw["name"] = task_name
    task = build_section(spec.config_class, task_raw, "task")
    model = build_section(ModelConfig, raw.get("model"), "model")
    data = build_section(DataConfig, raw.get("data"), "data")
    strategy = build_section(StrategyConfig, raw.get("strategy"), "strategy")
    peft = build_section(PeftSection, raw.get("peft"), "peft")
    hub = build_section(HubConfig, raw.get("hub"), "hub")
    if hub.merge and peft.method not in ("lora", "ia3"):
        raise RecipeError(
            "hub.merge",
            "merges a LoRA or IA3 adapter into the weights; "
            + (
                f"a {peft.method} adapter cannot be merged."
                if peft.enabled
                else "this recipe trains no adapter."
            )
            + " Drop it.",
        )
    _check_strategy_with_peft(strategy, peft)

    training_raw = raw.get("training") or {}
    if not isinstance(training_raw, dict):
        raise RecipeError(
            "training", f"expected a mapping of TrainingArguments fields, got {type(training_raw).__name__}."
        )
    training_raw = dict(training_raw)
    resume = _resume_setting(training_raw)
    for key, value in training_raw.items():
        if _is_secret(str(key)) and value is not None:
            raise RecipeError(
                f"training.{key}",
                "a token in a recipe or an override ends up in saved files and shell history; remove it, "
                "and set the HF_TOKEN environment variable or run `hf auth login` instead.",
            )
    if output_dir is not None:
        training_raw["output_dir"] = output_dir
    if training_raw.get("output_dir") in (None, ""):
        stem = Path(origin).stem if origin else "run"
        training_raw["output_dir"] = os.path.join("runs", stem)
    training, training_fields = build_training_arguments(training_raw)
    _check_training_values(training)
    return Recipe(
        task=task,
        model=model,
        data=data,
        training=training,
        strategy=strategy,
        peft=peft,
        hub=hub,
        source=origin,
        training_fields=training_fields,
        resume=resume,
    )


def _check_training_values(args: Any) -> None:
    """Values the Trainer would accept and then train nothing (or diverge) with."""
    if not args.learning_rate > 0:
        raise RecipeError("training.learning_rate", f"must be positive, got {args.learning_rate}.")
    if args.max_steps == 0 or (args.max_steps < 0 and not args.num_train_epochs > 0):
        field_name = "training.max_steps" if args.max_steps == 0 else "training.num_train_epochs"
        raise RecipeError(
            field_name,
            "trains nothing: give a positive `training.max_steps`, or `training.num_train_epochs` > 0 "
            "with max_steps left at -1.",
        )
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise RecipeError(f"training.{name}", f"must be at least 1, got {getattr(args, name)}.")


def _resume_setting(training_raw: dict[str, Any]) -> str | None:
    """``training.resume`` (or the Trainer's own ``resume_from_checkpoint``), taken out of the section:
    ``auto``/``true`` -> "auto", ``false``/absent -> None, anything else is a checkpoint directory."""
    given = {k: training_raw.pop(k) for k in ("resume", "resume_from_checkpoint") if k in training_raw}
    given = {k: v.parsed(empty=None) if isinstance(v, _Override) else v for k, v in given.items()}
    given = {k: v for k, v in given.items() if v is not None}
    if len(given) > 1:
        raise RecipeError(
            "training.resume", "and `training.resume_from_checkpoint` are both set; keep `training.resume`."
        )
    if not given:
        return None
    key, value = next(iter(given.items()))
    if value is False or (isinstance(value, str) and value.lower() in ("", "no", "never", "false")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("auto", "latest", "true")):
        return "auto"
    if not isinstance(value, str):
        raise RecipeError(
            f"training.{key}",
            f"expected `auto`, `false` or the path of a checkpoint directory, got {value!r}.",
        )
    return _absolute(value)


def _check_strategy_with_peft(strategy: StrategyConfig, peft: PeftSection) -> None:
    if not peft.enabled:
        return
    if strategy.gradual_unfreezing is not None:
        raise RecipeError(
            "strategy.gradual_unfreezing",
            f"cannot be combined with `peft.method: {peft.method}`: PEFT keeps the whole base model frozen and "
            "trains its adapters from the start, so there are no layers to unfreeze. Drop one of the two.",
        )
    for name in ("freeze_embeddings", "freeze_all_but_head"):
        if getattr(strategy, name):
            raise RecipeError(
                f"strategy.{name}",
                f"has no effect with `peft.method: {peft.method}`, which freezes the whole base model already; drop it.",
            )
    if strategy.freeze_layers:
        raise RecipeError(
            "strategy.freeze_layers",
            f"has no effect with `peft.method: {peft.method}`, which freezes the whole base model already; to adapt "
            "only some layers, list their modules in `peft.target_modules`.",
        )


def build_training_arguments(raw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from transformers import TrainingArguments

    values = _coerce_fields(TrainingArguments, raw, "training")
    init = derived_training_init(values)
    try:
        args = TrainingArguments(**init)
    except (ValueError, TypeError, ImportError) as exc:
        raise RecipeError("training", f"{exc}") from None
    return args, values


def derived_training_init(values: dict[str, Any]) -> dict[str, Any]:
    """The TrainingArguments kwargs: the recipe's values plus what this machine and launch imply
    (``use_cpu``, or mixed precision turned off), which are not written into the saved recipe."""
    init = dict(values)
    if "use_cpu" not in values and launched_world_size() > 1 and not _accelerator_available():
        # a multi-process launch (torchrun, accelerate launch) on a machine without a GPU: without use_cpu,
        # Accelerate finds no device to spread over and every process would train alone on all the data
        logger.info(
            "training: %d processes and no accelerator: DDP on the CPU over gloo", launched_world_size()
        )
        init["use_cpu"] = True
    mixed = "bf16" if values.get("bf16") else "fp16" if values.get("fp16") else None
    if mixed and "use_cpu" not in values and not _accelerator_available():
        if _cpu_has_native(mixed):
            # TrainingArguments refuses mixed precision without an accelerator unless use_cpu is set. Derive
            # it here (and keep it out of the saved recipe) so one recipe runs bf16 on a GPU and on a CPU.
            _once(logger.info, ("cpu", mixed))(
                "training: no accelerator found; %s autocast runs on the CPU (use_cpu=true)", mixed
            )
            init["use_cpu"] = True
        else:
            # Without the instructions, autocast emulates the dtype: slower than fp32, not faster (bf16
            # matmuls ran at 1/160 of the fp32 rate on an AVX2-only EPYC). The saved recipe keeps the
            # setting, so the same recipe still uses mixed precision on a GPU.
            _once(logger.warning, ("emulated", mixed))(
                "training.%s: no accelerator, and this CPU has no native %s instructions, where autocast "
                "would emulate %s at a fraction of fp32 speed; training in fp32 instead. To force it on "
                "the CPU anyway, set training.use_cpu=true.",
                mixed,
                mixed,
                mixed,
            )
            for key in (mixed, f"{mixed}_full_eval"):
                init[key] = False
    return init


_LOGGED: set[tuple[str, str]] = set()


def _once(log, key: tuple[str, str]):
    """``log`` the first time this process derives ``key`` (a recipe is loaded many times by tune and bench
    checks), debug after that."""
    if key in _LOGGED:
        return logger.debug
    _LOGGED.add(key)
    return log


def _cpu_has_native(dtype: str) -> bool:
    """Whether this CPU computes ``dtype`` ("bf16" or "fp16") matmuls in hardware.

    x86: AVX512-BF16 or AMX for bf16, AMX-FP16 for fp16; other architectures: oneDNN's own check.
    """
    import platform

    import torch

    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        checks = (
            ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
            if dtype == "bf16"
            else ("_is_amx_fp16_supported",)
        )
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    check = "_is_mkldnn_bf16_supported" if dtype == "bf16" else "_is_mkldnn_fp16_supported"
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return False


def accelerator() -> str | None:
    """The accelerator the Trainer would train on, as torch names it ("cuda", "xpu", "mps"), or None."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return None


def _accelerator_available() -> bool:
    return accelerator() is not None


def build_section(cls: type, raw: Any, section: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(section, f"expected a mapping of fields, got {type(raw).__name__} ({raw!r}).")
    values = _coerce_fields(cls, raw, section)
    try:
        return cls(**values)
    except RecipeError:
        raise
    except (ValueError, TypeError) as exc:
        raise RecipeError(section, str(exc)) from None


def section_fields(cls: type) -> dict[str, Any]:
    """Public init fields of a section dataclass with their resolved type annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}


def _coerce_fields(cls: type, raw: dict[str, Any], section: str) -> dict[str, Any]:
    known = section_fields(cls)
    values = {}
    for key, value in raw.items():
        key = str(key)
        if key not in known:
            hint = close_matches(key, known)
            listing = "" if hint else f"; fields of `{section}` are: {', '.join(sorted(known))}"
            raise RecipeError(f"{section}.{key}", f"unknown field{hint}{listing}.")
        values[key] = _coerce_field(value, known[key], f"{section}.{key}")
    return values


# --------------------------------------------------------------------------------------------
# Overrides and type coercion
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Override:
    """A value typed on the command line: parsed with the field's type in mind."""

    text: str

    def parsed(self, empty: Any = "") -> Any:
        """The text read as a YAML value (so `3e-5` is a number), or as typed when it is not valid YAML."""
        text = self.text.strip()
        if not text:
            return empty
        try:
            return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            return self.text


def _apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise RecipeError(
                None,
                f"override '{item}' is not `section.field=value` (for example training.learning_rate=3e-5).",
            )
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".")]
        if len(parts) < 2 or not all(parts):
            raise RecipeError(
                key, "an override names `section.field` (for example data.max_train_samples=4000)."
            )
        if parts[0] not in SECTIONS:
            raise RecipeError(
                parts[0],
                f"unknown recipe section{close_matches(parts[0], SECTIONS)}; "
                f"sections are: {', '.join(SECTIONS)}.",
            )
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node.get(part), str) and depth == 0 and part == "task":
                node[part] = {"name": node[part]}
            child = node.setdefault(part, {})
            if child is None or child is True:  # `gradual_unfreezing: true` + a sub-field override
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(
                    ".".join(parts[: depth + 1]), "is not a mapping, so it has no sub-fields to override."
                )
            node = child
        node[parts[-1]] = _Override(text)


class _Mismatch(Exception):
    pass


class _BadChoice(_Mismatch):
    """A text value outside a closed set of choices: never rescued by the raw-text fallback."""


def _coerce_field(value: Any, tp: Any, path: str) -> Any:
    nested = _nested_section(tp)
    if nested is not None:
        return _coerce_section(value, tp, nested, path)
    try:
        return _coerce(value, tp)
    except _Mismatch as exc:
        shown = value.text if isinstance(value, _Override) else value
        detail = f" {exc}" if str(exc) else ""
        raise RecipeError(
            path, f"expected {describe_type(tp)}, got {shown!r} ({_kind(shown)}).{detail}"
        ) from None


def _nested_section(tp: Any) -> type | None:
    """The dataclass of a sub-section field (``X`` or ``X | None``), else None."""
    for candidate in _union_args(tp) or (tp,):
        if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
            return candidate
    return None


def _coerce_section(value: Any, tp: Any, cls: type, path: str) -> Any:
    """A sub-section: a mapping of its fields; `true` means its defaults, `false`/null means off (if optional)."""
    if isinstance(value, _Override):
        value = value.parsed(empty=None)
    optional = type(None) in (_union_args(tp) or ())
    if isinstance(value, cls):
        return value
    if value is True:
        value = {}
    if value is None or value is False:
        if optional:
            return None
        raise RecipeError(path, f"expected a mapping of fields, got {value!r}.")
    return build_section(cls, value, path)


def _kind(value: Any) -> str:
    if isinstance(value, _Override):
        return "text"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "text",
        list: "list",
        dict: "mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _accepts_str(tp: Any) -> bool:
    args = _union_args(tp)
    if args is not None:
        return any(_accepts_str(a) for a in args)
    return tp is str or tp is Any


def _coerce(value: Any, tp: Any) -> Any:
    if isinstance(value, _Override):
        parsed = value.parsed()
        try:
            return _coerce(parsed, tp)
        except _BadChoice:
            raise
        except _Mismatch:
            if _accepts_str(tp) and not isinstance(parsed, (list, dict)):
                return value.text
            raise
    if tp is Any or tp is object:
        return value
    args = _union_args(tp)
    if args is not None:
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch()
        enum_choices = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enum_choices and isinstance(value, str):
            allowed = [m.value for e in enum_choices for m in e]
            if value not in allowed:
                raise _BadChoice(
                    f"Allowed: {', '.join(map(str, allowed))}.{close_matches(value, map(str, allowed))}"
                )
            return value
        for candidate in args:
            if candidate is type(None):
                continue
            try:
                return _coerce(value, candidate)
            except _Mismatch:
                continue
        raise _Mismatch()
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise _BadChoice(close_matches(str(value), map(str, choices)).strip())
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch()
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise _Mismatch()
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch() from None
        raise _Mismatch()
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        if value in [m.value for m in tp]:
            return value
        raise _Mismatch()
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise _Mismatch()
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch()
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp): _coerce(v, val_tp) for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch()
    return value


def describe_type(tp: Any) -> str:
    args = _union_args(tp)
    if args is not None:
        parts = [describe_type(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return text + (" or null" if type(None) in args else "")
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of: " + ", ".join(map(str, typing.get_args(tp)))
    if origin is list or tp is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {describe_type(item)}" if item is not Any else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of: " + ", ".join(str(m.value) for m in tp)
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        type(None): "null",
        Any: "any value",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
