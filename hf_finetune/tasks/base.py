"""What every task provides, and the data checks and helpers they share.

A task turns raw splits into model inputs and model outputs into metrics and predictions.
Everything up to ``prepare`` runs without a model: `hf-finetune validate` stops there.

A task also owns its facts, as class attributes the rest of the package reads from the registered
class (``get_task(name).task_class``): the Auto class of its head, the model card's title and usage
snippet, the PEFT task type and the PEFT methods it refuses, and the metric a bench or a search ranks
runs by. Adding a task is one module: a `Task` subclass that sets them, registered with `register_task`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..cache import preprocessing_key, tokenised_path
from ..config.schema import Recipe
from ..data import DataSource, SplitBy, load_splits
from ..errors import DataError, RecipeError

logger = logging.getLogger(__name__)


class Task:
    name: ClassVar[str]
    """The registered task name (set by `register_task`), e.g. "text-classification"."""

    # ---------------------------------------------------------------- the task's facts
    # Required ones have no value here: `register_task` refuses a class that leaves one unset.
    auto_class: ClassVar[str]
    """Name of the `transformers` Auto class of the task head, e.g. "AutoModelForSequenceClassification"."""

    card_title: ClassVar[str]
    """The task as the model card's evaluation results name it, e.g. "Text Classification"."""

    usage_example: ClassVar[str]
    """The call the model card's usage snippet makes on a `transformers.pipeline` of this task, e.g.
    ``model("a gripping, beautifully acted film")``."""

    pipeline_kwargs: ClassVar[str] = ""
    """Extra keyword arguments (Python source, with a leading comma) for the card's `pipeline(...)` call,
    e.g. ``', aggregation_strategy="simple"'``."""

    peft_task_type: ClassVar[str | None]
    """The `peft.TaskType` name of the head ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"); None: no PEFT."""

    refused_peft_methods: ClassVar[Mapping[str, str]] = {}
    """PEFT methods peft wraps for this task but cannot train correctly: method -> why, and what to use
    instead. A recipe that asks for one fails before any weights load."""

    reads_windows: ClassVar[bool] = False
    """Whether the task reads documents longer than ``data.max_seq_length`` in windows under
    ``data.long_text: windows`` (text classification); the others refuse that setting."""

    long_text_note: ClassVar[str] = ""
    """How the task treats inputs longer than ``data.max_seq_length`` instead, for the error that refuses
    ``data.long_text: windows``."""

    headline_candidates: ClassVar[tuple[str, ...]] = ("accuracy",)
    """The metrics :meth:`headline_metric` picks from by default, preferred first."""

    @classmethod
    def headline_metric(cls, recipe: Recipe, results: Mapping[str, Any]) -> str:
        """The metric (no ``eval_`` prefix) a bench or a search ranks this recipe's runs by.

        ``results`` is a run's ``all_results.json``. The default is the first of
        :attr:`headline_candidates` that ``results`` holds (see :func:`metric_key`), else the first.
        """
        return first_metric(recipe, results, cls.headline_candidates)

    @property
    def auto_model_class(self) -> Any:
        """The `transformers` Auto class named by :attr:`auto_class` (imported on use)."""
        import transformers

        return getattr(transformers, self.auto_class)

    def __init__(self, recipe: Recipe):
        if recipe.data.long_text == "windows" and not self.reads_windows:
            note = f"; {self.long_text_note}" if self.long_text_note else ""
            raise RecipeError(
                "data.long_text",
                f"`windows` reads long documents in windows for text classification only, not for the "
                f"{self.name} task{note}. Drop `data.long_text` (or set it to `truncate`).",
            )
        self.recipe = recipe
        self.cfg = recipe.task
        self.source: DataSource | None = None
        #: the split `compute_metrics` scores when it needs its raw examples (QA maps features back to them):
        #: None means the first evaluation split; the pipeline sets it while it scores the test split
        self.scored_split: str | None = None
        #: the per-class report (`hf_finetune.metrics.report.ClassReport`) of the latest `compute_metrics`
        #: call, for tasks that make one (classification); the pipeline writes it after the final evaluation
        self.class_report: Any = None
        #: the temperature scores are divided by (calibration.json; `calibration_logits` says which tasks fit
        #: one), or None: raw scores
        self.temperature: float | None = None

    # ---------------------------------------------------------------- data, before any model
    def splits_for(self, stage: str) -> list[str]:
        data = self.recipe.data
        if stage in ("train", "validate"):
            return [data.train_split, *data.eval_splits] + ([data.test_split] if data.test_split else [])
        raise ValueError(stage)

    def load(self, splits: Sequence[str]):
        """Load, subsample and check the splits; returns a DatasetDict of raw examples.

        ``data.validation_size`` carves the evaluation split out of the training split first (as
        :meth:`split_by` says), then ``max_train_samples``/``max_eval_samples`` take the first rows of each
        (the test split is kept whole: its score is reported, so it is never a subsample).
        """
        raw, self.source = load_splits(self.recipe.data, list(splits), self.split_by)
        data = self.recipe.data
        for split in list(raw):
            limit = data.max_train_samples if split == data.train_split else data.max_eval_samples
            if split == data.test_split:
                limit = None
            if limit is not None and len(raw[split]) > limit:
                raw[split] = raw[split].select(range(limit))
            if len(raw[split]) == 0:
                field = _split_field(data, split)
                raise DataError(
                    f"`{field}`: split '{split}' is empty in {self.source.description}; "
                    "give a split with examples."
                )
        return raw

    def split_by(self, train) -> SplitBy | None:
        """How ``data.validation_size`` carves the evaluation split out of the raw training split ``train``:
        stratified by a label, rows grouped by a column, or None (the default) for a seeded shuffle. It may
        read the data and the recipe, never a model: `eval` of a finished run carves the same rows again."""
        return None

    def prepare(self, raw) -> None:
        """Check columns and values and settle the label schema. No model is involved."""
        raise NotImplementedError

    def label_column(self) -> str | None:
        """The column evaluation scores against (a class, the tags, the answers); None: the task has none."""
        return None

    def is_labelled(self, split: str, ds) -> bool:
        """Whether the raw split ``ds`` is scored against labels. Every split is but the test split
        (`data.test_split`), which is when its label column is present and holds at least one label: a
        value that is not null, empty, or -1 (how GLUE's test splits mark a missing label)."""
        if split != self.recipe.data.test_split:
            return True
        column = self.label_column()
        return column is not None and column in ds.column_names and any(map(_is_label, ds[column]))

    def require_columns(self, raw, split: str, columns: dict[str, str | None]) -> None:
        """``columns`` maps a recipe field (e.g. 'task.text_column') to the column it names."""
        present = raw[split].column_names
        for field, column in columns.items():
            if column is not None and column not in present:
                raise DataError(
                    f"`{field}`: column '{column}' not found in the {split} split; columns are: "
                    f"{', '.join(present)}. Set `{field}` to one of them."
                )

    def require_text(self, raw, split: str, field: str, column: str) -> None:
        ds = raw[split]
        feature = ds.features[column]
        dtype = getattr(feature, "dtype", None)
        if dtype not in ("string", "large_string"):
            kind = dtype or type(feature).__name__
            raise DataError(
                f"`{field}`: column '{column}' in the {split} split holds {kind} values, not text. "
                "Point it at a text column."
            )
        values = list(ds[column])
        missing = [i for i, v in enumerate(values) if v is None][:10]
        if missing:
            raise DataError(
                f"`{field}`: column '{column}' in the {split} split has empty (null) values at rows "
                f"{', '.join(map(str, missing))}. Fill or drop those rows."
            )

    def describe(self) -> dict[str, Any]:
        """What `hf-finetune validate` reports about the settled task (labels, metrics)."""
        return {}

    # ---------------------------------------------------------------- model side
    def model_config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `AutoConfig.from_pretrained` (label maps, problem type)."""
        return {}

    def restore(self, model_config) -> None:
        """Rebuild the label schema from a saved model config (for eval/predict)."""

    def tokenizer_kwargs(self, tokenizer) -> dict[str, Any]:
        """Options to reload the tokenizer with when this task needs them (default: none)."""
        return {}

    def check_tokenizer(self, tokenizer) -> None:
        """Fail early when the tokenizer cannot serve this task."""

    def tokenizer_field(self) -> tuple[str, str]:
        """(recipe field, name) of where the tokenizer comes from, for error messages."""
        model = self.recipe.model
        if model.tokenizer_name_or_path:
            return "model.tokenizer_name_or_path", model.tokenizer_name_or_path
        return "model.name_or_path", model.name_or_path

    def require_fast_tokenizer(self, tokenizer, why: str) -> None:
        if not getattr(tokenizer, "is_fast", False):
            field, name = self.tokenizer_field()
            raise RecipeError(
                field,
                f"{self.name} needs a fast tokenizer ({why}), but {name!r} loads the slow "
                f"{type(tokenizer).__name__}. Use a checkpoint that ships a tokenizer.json, or point "
                "`model.tokenizer_name_or_path` at a fast tokenizer.",
            )

    def preprocess(self, raw, tokenizer):
        raise NotImplementedError

    def tokenise(self, ds, split: str, function, tokenizer, *, fn_kwargs=None, with_indices=False):
        """``ds.map(function, batched=True)`` into model inputs (the raw columns dropped), cached on disk.

        The cached split is keyed by the raw data, tokenizer, task/data settings and this task's code
        (`hf_finetune.cache`), so a second run with the same settings reads it back instead of
        tokenising; `data.cache_tokenised: false` tokenises in memory every time.
        """
        data = self.recipe.data
        kwargs = {
            "batched": True,
            "with_indices": with_indices,
            "fn_kwargs": fn_kwargs or {},
            "remove_columns": ds.column_names,
            "num_proc": data.preprocessing_num_workers,
            "desc": f"Tokenising {split}",
        }
        if not data.cache_tokenised:
            return ds.map(function, keep_in_memory=True, **kwargs)
        key = preprocessing_key(self, ds, split, tokenizer, fn_kwargs)
        path = tokenised_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or any(path.parent.glob(f"{key}_*_of_*{path.suffix}")):
            logger.info("%s split: tokenised examples read from the cache %s", split, path)
        return ds.map(
            function, cache_file_name=str(path), load_from_cache_file=True, new_fingerprint=key, **kwargs
        )

    def data_collator(self, tokenizer, args):
        """Dynamic padding: each batch is padded to its own longest example (or to max_seq_length on request)."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(
            tokenizer, pad_to_multiple_of=pad_multiple(args), **self.padding_kwargs()
        )

    def padding_kwargs(self) -> dict[str, Any]:
        data = self.recipe.data
        if data.padding == "max_length":
            return {"padding": "max_length", "max_length": data.max_seq_length}
        return {"padding": "longest"}

    def compute_metrics(self) -> Callable[[Any], dict[str, float]]:
        raise NotImplementedError

    def loss_function(self) -> Callable[..., Any] | None:
        """The Trainer's ``compute_loss_func`` (``(outputs, labels, num_items_in_batch) -> loss``) for the run
        that :meth:`prepare` set up, e.g. class weights or focal loss; None (the default): the model's own."""
        return None

    def calibration_logits(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(logits, label ids) of the latest `compute_metrics` call that a temperature is fitted on (or
        checked against) after training (`hf_finetune.metrics.calibration`); None (the default): the task's
        scores are not calibrated."""
        return None

    def preprocess_logits_for_metrics(self) -> Callable[[Any, Any], Any] | None:
        """Reduce each evaluation batch's logits before the Trainer gathers them (None: keep all)."""
        return None

    def read_inputs(self, records: list[dict[str, Any]], where: str) -> Any:
        """Parse `predict` input lines into what `predict` consumes; DataError naming the line if one is bad."""
        raise NotImplementedError

    def check_inputs(self, records: list[dict[str, Any]], where: str) -> None:
        """Run before any weights load, so a bad input line costs no model load."""
        self.read_inputs(records, where)

    def predict(
        self, model, tokenizer, records: list[dict[str, Any]], batch_size: int
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def input_fields(self) -> list[str]:
        """Fields that `hf-finetune predict` reads from each input line."""
        return []

    def ranks_labels(self) -> bool:
        """Whether `predict --top-k/--all-scores` apply: the model scores a fixed set of labels."""
        return False


def _is_label(value: Any) -> bool:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == -1):
        return False
    return not (isinstance(value, (list, tuple, dict)) and not value)


def _split_field(data, split: str) -> str:
    """The recipe field that names ``split``, for error messages."""
    if split == data.train_split:
        return "data.train_split"
    return "data.test_split" if split == data.test_split else "data.eval_split"


def metric_key(recipe: Recipe, metric: str) -> str:
    """The all_results.json key of ``metric`` on the recipe's (first) eval split: ``eval_<metric>``, or
    ``eval_<split>_<metric>`` when the recipe evaluates several splits (MNLI's matched and mismatched)."""
    metric = metric.removeprefix("eval_")
    splits = recipe.data.eval_splits
    if len(splits) > 1 and not metric.startswith(tuple(f"{split}_" for split in splits)):
        return f"eval_{splits[0]}_{metric}"
    return f"eval_{metric}"


def first_metric(recipe: Recipe, results: Mapping[str, Any], candidates: Sequence[str]) -> str:
    """The first of ``candidates`` that ``results`` holds (by :func:`metric_key`), else the first."""
    return next((name for name in candidates if metric_key(recipe, name) in results), candidates[0])


def capped_max_length(tokenizer, wanted: int) -> int:
    """``wanted`` (``data.max_seq_length``), or the tokenizer's own limit when that is smaller (warned)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < wanted:
        logger.warning(
            "data.max_seq_length=%d exceeds the tokenizer's limit %d; using %d", wanted, limit, limit
        )
        return limit
    return wanted


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the maximum for stability."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def pad_multiple(args) -> int | None:
    """Pad to a multiple of 8 under mixed precision (tensor-core friendly shapes), else not at all."""
    return 8 if (getattr(args, "fp16", False) or getattr(args, "bf16", False)) else None


#: metric names (their last word) where a lower value is better
LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "error", "perplexity", "ece")


def lower_is_better(metric: str) -> bool:
    """Whether a lower value of ``metric`` (``eval_loss``, ``mse``, ...) is the better one: the one rule for
    early stopping, best-model selection and the direction of a search."""
    return metric.lower().rsplit("_", 1)[-1] in LOWER_IS_BETTER


def score_key(recipe: Recipe, results: Mapping[str, Any], metric: str | None = None) -> str:
    """The results key a run of ``recipe`` is scored by (a bench cell, a search trial): ``metric`` when
    given, else the headline metric of the recipe's task (see :meth:`Task.headline_metric`)."""
    from .registry import get_task

    return metric_key(
        recipe, metric or get_task(recipe.task.name).task_class.headline_metric(recipe, results)
    )
