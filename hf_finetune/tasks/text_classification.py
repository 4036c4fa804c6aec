"""Text classification: single sentences or sentence pairs; multi-class, multi-label or regression.

Covers all GLUE tasks. Pairs go through the tokenizer's own pair encoding (``tokenizer(a, b)``),
so segment ids and separators are the model's, never a string concatenation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..config.schema import TaskConfig, field_help
from ..data import SplitBy
from ..errors import DataError, RecipeError
from ..labels import MULTI, PROBLEM_TYPES, REGRESSION, SINGLE, LabelSchema, build_schema, infer_problem_type
from ..losses import ImbalanceLoss, build_loss, check_loss_fields
from ..metrics import glue_task
from . import windows
from .base import Task, capped_max_length, first_metric, softmax
from .registry import register_task
from .windows import Windows

logger = logging.getLogger(__name__)

#: the headline metric per GLUE task (as the GLUE leaderboard ranks them); the others: accuracy
GLUE_HEADLINE = {
    "cola": "matthews_correlation",
    "stsb": "pearson",
    "mrpc": "f1",
    "qqp": "f1",
}


@dataclass
class TextClassificationConfig(TaskConfig):
    text_column: str = field_help(
        "Column with the (first) text. `predict` reads this field from each JSON line, or `text`.", "text"
    )
    text_pair_column: str | None = field_help(
        "Column with the second text of a pair (MRPC, RTE, MNLI, ...). Pairs go through the tokenizer's own "
        "pair encoding (segment ids, separators), never string concatenation; `predict` reads this field or "
        "`text_pair`.",
        None,
    )
    label_column: str = field_help(
        "Column with the label: a class id (an index into `labels`; a whole float such as `1.0`, as pandas "
        "writes it, counts as 1), a class name, a list of names (multi-label) or a number (regression). Values "
        "outside the label list, rows without a label and a training split of one class only are errors.",
        "label",
    )
    labels: list[str] | None = field_help(
        "Label names in id order; default: the dataset's `ClassLabel` names, else the sorted string values "
        "(integer labels without names: `0`, `1`, ...). Saved into `config.json` as "
        "`id2label`/`label2id`, so the saved model predicts names. Must match `ClassLabel` names when present.",
        None,
    )
    num_labels: int | None = field_help(
        "Number of labels, checked against the label list or the data (an error names where the other count "
        "comes from); 1 means regression.",
        None,
    )
    problem_type: Literal[
        "auto", "single_label_classification", "multi_label_classification", "regression"
    ] = field_help(
        "`auto`: list labels -> `multi_label_classification`, non-integral numbers or `num_labels: 1` -> "
        "`regression`, else `single_label_classification`. Written into the saved config.",
        "auto",
    )
    metric: str | list[str] = field_help(
        "`auto`: GLUE datasets get the task's official metric (`glue/<task>`); otherwise accuracy and F1 "
        "(binary F1 for two classes, macro F1 otherwise), multi-label micro/macro F1 and subset accuracy, "
        "regression Pearson, Spearman and MSE. Or a name or list from "
        "`hf_finetune.metrics.available_metrics()`.",
        "auto",
    )
    multi_label_threshold: float = field_help(
        "Multi-label: a label is predicted (in evaluation and `predict`) when its sigmoid exceeds this; "
        "in (0, 1).",
        0.5,
    )
    class_weights: Literal["auto"] | list[float] | None = field_help(
        "Make rare classes count more in the loss (single-label: each example's loss times its class's "
        "weight). `auto`: inverse class frequency over the training split, normalised so that the "
        "frequency-weighted mean weight is 1 (sum over classes of frequency x weight = 1; a balanced split gets "
        "all 1s); or a list of positive numbers, one per label in label order. Multi-label: the `pos_weight` "
        "of each label's binary cross-entropy, `auto` = negatives / positives of that label. Not for "
        "regression. Default: unweighted. Logged, shown by `validate`, written to `all_results.json`.",
        None,
    )
    loss: Literal["cross_entropy", "focal"] = field_help(
        "`cross_entropy` (binary for multi-label), or `focal`: -(1 - p_t)^gamma log p_t, which discounts the "
        "examples the model already gets right so training dwells on the hard (often minority) ones; times "
        "the class weight when `class_weights` is set too. Computed in fp32. Not for regression.",
        "cross_entropy",
    )
    focal_gamma: float = field_help(
        "The focal loss exponent gamma (`loss: focal`): 0 is plain cross-entropy, larger values discount easy "
        "examples more. At least 0.",
        2.0,
    )
    calibration: Literal["temperature", "none"] = field_help(
        "Single-label classification: `temperature` fits one temperature T at the end of training on the "
        "(first) evaluation split's logits (minimising the NLL of softmax(logits / T)) and stores it with the "
        "model (`calibration.json`, `reliability_diagram.png`); `predict` then divides the logits by T, which "
        "leaves the labels as they are and makes the scores better probabilities (`predict --uncalibrated`: "
        "the raw ones). The expected calibration error before and after is in the metrics (`eval_ece`, "
        "`eval_ece_calibrated`, in-sample; `test_ece*` on a test split, held out). `none`: no temperature. "
        "Multi-label and regression runs skip it.",
        "temperature",
    )

    def __post_init__(self) -> None:
        from ..metrics import available_metrics

        if self.labels is not None:
            if not self.labels:
                raise RecipeError(
                    "task.labels", "is an empty list; list the label names or remove the field."
                )
            dupes = sorted({x for x in self.labels if self.labels.count(x) > 1})
            if dupes:
                raise RecipeError("task.labels", f"has duplicate names: {', '.join(dupes)}.")
        if self.num_labels is not None and self.num_labels < 1:
            raise RecipeError("task.num_labels", f"must be at least 1, got {self.num_labels}.")
        if self.num_labels == 1 and self.problem_type in (
            "single_label_classification",
            "multi_label_classification",
        ):
            raise RecipeError(
                "task.num_labels",
                f"is 1, which means regression, but task.problem_type is "
                f"{self.problem_type}; use at least 2 labels or problem_type: regression.",
            )
        names = [self.metric] if isinstance(self.metric, str) else list(self.metric)
        choices = [m for m in available_metrics() if not m.startswith(("seqeval", "squad"))]  # other tasks
        for name in names:
            if name != "auto" and name not in choices:
                from ..errors import close_matches

                raise RecipeError(
                    "task.metric",
                    f"unknown metric {name!r}{close_matches(name, choices)}; "
                    f"available: auto, {', '.join(choices)}.",
                )
        if not 0.0 < self.multi_label_threshold < 1.0:
            raise RecipeError(
                "task.multi_label_threshold", f"must be in (0, 1), got {self.multi_label_threshold}."
            )
        check_loss_fields(
            self.class_weights,
            self.loss,
            self.focal_gamma,
            regression=self.problem_type == REGRESSION or self.num_labels == 1,
        )


@register_task(
    "text-classification",
    TextClassificationConfig,
    "Single sentences or pairs -> class (multi-class, multi-label) or score (regression); all GLUE tasks.",
)
class TextClassificationTask(Task):
    cfg: TextClassificationConfig

    auto_class = "AutoModelForSequenceClassification"
    card_title = "Text Classification"
    usage_example = 'model("a gripping, beautifully acted film")'
    peft_task_type = "SEQ_CLS"
    headline_candidates = ("accuracy", "pearson", "matthews_correlation", "f1")
    reads_windows = True

    @classmethod
    def headline_metric(cls, recipe, results) -> str:
        """GLUE's own metric per task (Matthews correlation for CoLA, Pearson for STS-B, F1 for MRPC and
        QQP, else accuracy); other datasets: accuracy, else Pearson (regression), Matthews or F1."""
        glue = glue_task(recipe.data.dataset, recipe.data.config)
        if glue is not None:
            return GLUE_HEADLINE.get(glue, "accuracy")
        return first_metric(recipe, results, cls.headline_candidates)

    def __init__(self, recipe):
        super().__init__(recipe)
        self.labels: LabelSchema | None = None
        self.imbalance: ImbalanceLoss | None = None  # class weights / focal loss, settled by prepare()
        #: `data.samples_per_class`: what prepare() drew (per class, examples, seed), else None
        self.drawn: dict[str, int] | None = None
        #: `data.long_text: windows`: the document of each window row of each evaluated split (preprocess())
        self.windows = Windows(recipe.data.window_aggregate)
        if recipe.data.long_text == "windows" and self.cfg.text_pair_column:
            raise RecipeError(
                "data.long_text",
                f"`windows` reads single texts in windows, but this recipe classifies pairs "
                f"(task.text_pair_column: {self.cfg.text_pair_column}), which are read whole or cut. Drop "
                "`data.long_text` (or set it to `truncate`), or raise `data.max_seq_length`.",
            )
        #: (logits, label ids) of the latest `compute_metrics` call, one row per example
        self.last_eval: tuple[np.ndarray, np.ndarray] | None = None

    # ---------------------------------------------------------------- data checks
    def text_fields(self) -> dict[str, str | None]:
        return {"task.text_column": self.cfg.text_column, "task.text_pair_column": self.cfg.text_pair_column}

    def prepare(self, raw) -> None:
        cfg, data = self.cfg, self.recipe.data
        labelled = [s for s in raw if self.is_labelled(s, raw[s])]
        for split in raw:
            columns = dict(self.text_fields())
            if split in labelled:
                columns["task.label_column"] = cfg.label_column
            self.require_columns(raw, split, columns)
            for field, column in self.text_fields().items():
                if column is not None:
                    self.require_text(raw, split, field, column)

        train_values = None
        if self.labels is None:  # else restored from a saved model: the data must agree with it
            train = raw[data.train_split]
            train_values = list(train[cfg.label_column])
            feature = train.features[cfg.label_column]
            self.labels = build_schema(
                problem_type=self._problem_type(feature, train_values),
                values=train_values,
                feature=feature,
                recipe_labels=cfg.labels,
                recipe_num_labels=cfg.num_labels,
                column=cfg.label_column,
            )
        for split in sorted(labelled, key=lambda s: s != data.train_split):  # the training split first
            values = train_values if split == data.train_split and train_values is not None else None
            values = values if values is not None else list(raw[split][cfg.label_column])
            ids = list(raw[split]["idx"]) if "idx" in raw[split].column_names else None
            self.labels.check_values(values, split, cfg.label_column, ids)
            if values is train_values:  # training data (not a saved model's labels): two classes at least
                cut = data.max_train_samples is not None and len(values) == data.max_train_samples
                note = ", the first `data.max_train_samples`" if cut else ""
                self.labels.require_classes(values, split, cfg.label_column, note)
        if self.recipe.few_shot.enabled and self.labels.problem_type != SINGLE:
            raise RecipeError(
                "few_shot.method",
                f"`{self.recipe.few_shot.method}` learns single-label classes; column '{cfg.label_column}' makes "
                f"this task {self.labels.problem_type}. Drop `few_shot` and fine-tune, or give one class per "
                "example.",
            )
        if train_values is not None and data.samples_per_class is not None:
            train_values = self._draw_samples(raw, train_values)
        logger.info("labels: %s (%s)", ", ".join(self.labels.names), self.labels.problem_type)
        if train_values is not None:  # a run being set up (not a saved model): the loss it trains with
            self.imbalance = self._imbalance_loss(train_values)

    def _draw_samples(self, raw, values: list[Any]) -> list[Any]:
        """`data.samples_per_class`: replace the training split by N rows of each class, drawn without
        replacement with `data.sample_seed` (else `training.seed`); returns the drawn rows' labels."""
        data, schema, column = self.recipe.data, self.labels, self.cfg.label_column
        n, split = data.samples_per_class, data.train_split
        if schema.problem_type != SINGLE:
            raise RecipeError(
                "data.samples_per_class",
                f"draws N examples of each class, one class per example; column '{column}' makes this task "
                f"{schema.problem_type}. Use `data.max_train_samples` for a smaller training set.",
            )
        rows: dict[int, list[int]] = {i: [] for i in range(len(schema.names))}
        for row, value in enumerate(values):
            rows[schema.encode(value)].append(row)
        short = [(schema.names[i], len(found)) for i, found in rows.items() if len(found) < n]
        if short:
            listed = ", ".join(f"{name!r} has {count}" for name, count in short)
            fewest = min(count for _, count in short)
            raise DataError(
                f"`data.samples_per_class`: {n} training examples of each class are asked for, but in the {split} "
                f"split (column '{column}') class {listed}. Lower `data.samples_per_class`"
                + (f" to {fewest} at most" if fewest > 0 else "")
                + ", or add examples of that class."
            )
        seed = data.sample_seed if data.sample_seed is not None else self.recipe.training.seed
        rng = np.random.default_rng(seed)
        chosen = sorted(int(r) for found in rows.values() for r in rng.choice(found, size=n, replace=False))
        raw[split] = raw[split].select(chosen)
        self.drawn = {"samples_per_class": n, "examples": len(chosen), "seed": seed}
        logger.info("few-shot draw: %d examples of each of %d classes (seed %d)", n, len(rows), seed)
        return [values[r] for r in chosen]

    def _imbalance_loss(self, values: list[Any]) -> ImbalanceLoss | None:
        """`task.class_weights` / `task.loss` from the training labels ``values`` (checked by now)."""
        cfg, schema = self.cfg, self.labels
        if cfg.class_weights is None and cfg.loss == "cross_entropy":
            return None  # the model's own loss
        if schema.problem_type == REGRESSION:
            field = "task.class_weights" if cfg.class_weights is not None else "task.loss"
            raise RecipeError(
                field,
                f"column '{cfg.label_column}' holds non-integral numbers, so this task is regression, which "
                f"has no classes to weight or focus on; remove `{field}`, or set `task.problem_type` if the "
                "numbers are classes.",
            )
        counts = [0] * len(schema.names)
        for value in values:
            encoded = schema.encode(value)
            if schema.problem_type == MULTI:
                counts = [c + int(x) for c, x in zip(counts, encoded)]
            else:
                counts[encoded] += 1
        return build_loss(
            cfg,
            schema.names,
            counts,
            rows=len(values),
            multi_label=schema.problem_type == MULTI,
            label_smoothing=self.recipe.training.label_smoothing_factor,
        )

    def loss_function(self) -> ImbalanceLoss | None:
        return self.imbalance

    def label_column(self) -> str:
        return self.cfg.label_column

    def split_by(self, train) -> SplitBy | None:
        """Single-label data keeps every label's share on both sides of a `data.validation_size` split."""
        column = self.cfg.label_column
        if column not in train.column_names:
            return None  # prepare() names the missing column
        values = list(train[column])
        if self._problem_type(train.features[column], values) != SINGLE or None in values:
            return None
        return SplitBy("stratified", column, values)

    def describe(self) -> dict[str, Any]:
        out = {
            "labels": self.labels.names,
            "problem_type": self.labels.problem_type,
            "metrics": self.metric_names(),
        }
        data = self.recipe.data
        if self.drawn is not None:
            drawn = self.drawn
            out["samples_per_class"] = (
                f"{drawn['samples_per_class']} per class drawn from the {data.train_split} split "
                f"({drawn['examples']} examples, seed {drawn['seed']})"
            )
        if data.long_text == "windows":
            out["long_text"] = windows.describe(data)
        if self.imbalance is not None:
            out["loss"] = self.imbalance.description
            if self.imbalance.weights is not None:
                out["class_weights"] = self.imbalance.weights_by_name()
        else:
            out["loss"] = {REGRESSION: "mean squared error", MULTI: "binary cross-entropy"}.get(
                self.labels.problem_type, "cross-entropy"
            )
        return out

    def _problem_type(self, feature, values) -> str:
        if self.cfg.problem_type != "auto":
            return self.cfg.problem_type
        if self.cfg.num_labels == 1:
            return REGRESSION
        dtype = getattr(feature, "dtype", "")
        present = [v for v in values[:1000] if v is not None and v == v]  # None, NaN: a missing label
        if dtype.startswith("float") and not all(float(v).is_integer() for v in present):
            return REGRESSION
        return infer_problem_type(values)

    # ---------------------------------------------------------------- model side
    def model_config_kwargs(self) -> dict[str, Any]:
        assert self.labels is not None, "prepare() first"
        return {
            "num_labels": self.labels.num_labels,
            "id2label": self.labels.id2label,
            "label2id": self.labels.label2id,
            "problem_type": self.labels.problem_type,
        }

    def restore(self, model_config) -> None:
        problem_type = getattr(model_config, "problem_type", None) or SINGLE
        if problem_type not in PROBLEM_TYPES:
            problem_type = SINGLE
        names = [model_config.id2label[i] for i in range(model_config.num_labels)]
        self.labels = LabelSchema(problem_type, names)

    def check_tokenizer(self, tokenizer) -> None:
        if self.recipe.data.long_text == "windows":
            self.window_stride(tokenizer)

    def window_stride(self, tokenizer) -> int:
        """The tokens consecutive windows share under `data.long_text: windows`; a RecipeError when
        ``tokenizer`` cannot cut windows with it."""
        self.require_fast_tokenizer(tokenizer, "`data.long_text: windows` cuts documents into windows")
        return windows.stride(
            self.recipe.data, tokenizer, capped_max_length(tokenizer, self.recipe.data.max_seq_length)
        )

    def preprocess(self, raw, tokenizer):
        cfg, data = self.cfg, self.recipe.data
        max_length = capped_max_length(tokenizer, data.max_seq_length)
        schema = self.labels
        long_windows = data.long_text == "windows"
        stride = self.window_stride(tokenizer) if long_windows else 0

        def encode(batch, indices, with_labels: bool, windowed: bool):
            texts = batch[cfg.text_column]
            if windowed:  # every window of a document is a row: the DOCUMENT column says whose
                enc = windows.encode(tokenizer, texts, max_length, stride)
                owners = enc.pop("overflow_to_sample_mapping")
                enc[windows.DOCUMENT] = [indices[o] for o in owners]
            else:
                pairs = batch[cfg.text_pair_column] if cfg.text_pair_column else None
                enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
                owners = range(len(texts))
                enc[windows.CUT] = windows.cut_flags(enc, tokenizer, texts, pairs, max_length)
            if with_labels:
                labels = [schema.encode(v) for v in batch[cfg.label_column]]
                enc["labels"] = [labels[o] for o in owners]
            return enc

        self.windows = Windows(data.window_aggregate)
        out = {}
        for split, ds in raw.items():
            with_labels = self.is_labelled(split, ds) and cfg.label_column in ds.column_names
            evaluated = split != data.train_split or split in data.eval_splits
            windowed = long_windows and (evaluated or data.windows_in_training)
            encoded = self.tokenise(
                ds,
                split,
                encode,
                tokenizer,
                with_indices=True,
                fn_kwargs={"with_labels": with_labels, "windowed": windowed},
            )
            if windowed:
                if evaluated:
                    labels = encoded["labels"] if with_labels else None
                    self.windows.add(split, encoded[windows.DOCUMENT], labels, len(ds))
                encoded = encoded.remove_columns(windows.DOCUMENT)
            else:
                cut = sum(encoded[windows.CUT])
                windows.warn_truncated(
                    split, cut, len(ds), max_length, data.long_text, bool(cfg.text_pair_column)
                )
                encoded = encoded.remove_columns(windows.CUT)
            out[split] = encoded
        return out

    def metric_names(self) -> list[str]:
        metric = self.cfg.metric
        if metric != "auto":
            return [metric] if isinstance(metric, str) else list(metric)
        glue = glue_task(self.recipe.data.dataset, self.recipe.data.config)
        if glue is not None:
            return [f"glue/{glue}"]
        problem = self.labels.problem_type
        if problem == REGRESSION:
            return ["regression"]
        if problem == MULTI:
            return ["multilabel"]
        return ["classification/binary" if len(self.labels.names) == 2 else "classification"]

    def compute_metrics(self):
        from ..metrics import load_metric
        from ..metrics.report import ClassReport

        metrics = [load_metric(name) for name in self.metric_names()]
        schema, threshold = self.labels, self.cfg.multi_label_threshold
        task = self

        def compute(eval_pred) -> dict[str, float]:
            logits = (
                eval_pred.predictions[0]
                if isinstance(eval_pred.predictions, tuple)
                else eval_pred.predictions
            )
            refs = eval_pred.label_ids
            logits, refs = task.documents(logits, refs)  # `data.long_text: windows`: one row per document
            task.last_eval = (logits, refs)  # what the latest evaluation saw (temperature scaling reads it)
            if schema.problem_type == REGRESSION:
                preds = np.squeeze(logits, axis=-1)
            elif schema.problem_type == MULTI:
                preds = (_sigmoid(logits) > threshold).astype(np.int8)
                refs = refs.astype(np.int8)
            else:
                preds = logits.argmax(axis=-1)
            result: dict[str, float] = {}
            for metric in metrics:
                result.update(metric.compute(predictions=preds, references=refs))
            if schema.problem_type == MULTI:
                task.class_report = ClassReport.from_multi_hot(preds, refs, schema.names)
            elif schema.problem_type != REGRESSION:
                task.class_report = ClassReport.from_ids(preds, refs, schema.names)
            if task.class_report is not None:  # per-label keys after the headline ones
                result.update({k: v for k, v in task.class_report.metrics().items() if k not in result})
            return result

        return compute

    def calibration_logits(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(logits, label ids) of the latest evaluation to fit or check a temperature on; None when the
        recipe says `task.calibration: none` or the run is not single-label classification (logged)."""
        if self.cfg.calibration == "none" or self.last_eval is None:
            return None
        if self.labels.problem_type != SINGLE:
            logger.info(
                "task.calibration: temperature scaling is for single-label classification; this run is %s, "
                "so its scores are left uncalibrated (no calibration.json)",
                self.labels.problem_type.replace("_", " "),
            )
            return None
        return self.last_eval

    def documents(self, logits: np.ndarray, refs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """An evaluation's window rows as document rows under `data.long_text: windows` (`Windows.documents`;
        the test split is named by `scored_split`); unchanged otherwise."""
        if not self.windows:
            return logits, refs
        return self.windows.documents(logits, refs, self.scored_split)

    # ---------------------------------------------------------------- prediction
    def input_fields(self) -> list[str]:
        return [c for c in (self.cfg.text_column, self.cfg.text_pair_column) if c]

    def _field(self, record: dict[str, Any], column: str | None, generic: str, where: str) -> Any:
        if column is None:
            return None
        for key in (column, generic):
            if key in record:
                value = record[key]
                if not isinstance(value, str):
                    raise DataError(f"{where}: field '{key}' must be text, got {type(value).__name__}.")
                return value
        raise DataError(
            f"{where}: missing field '{column}' (or '{generic}'); each line needs the text to classify."
        )

    def read_inputs(self, records, where: str):
        cfg = self.cfg
        texts = [
            self._field(r, cfg.text_column, "text", f"{where} line {i + 1}") for i, r in enumerate(records)
        ]
        pairs = [
            self._field(r, cfg.text_pair_column, "text_pair", f"{where} line {i + 1}")
            for i, r in enumerate(records)
        ]
        return texts, pairs

    def ranks_labels(self) -> bool:
        return self.labels.problem_type != REGRESSION

    def predict(
        self,
        model,
        tokenizer,
        records,
        batch_size,
        where: str = "input",
        top_k: int | None = None,
        all_scores: bool = False,
    ):
        """Each record plus `label` and `score`; with ``top_k`` also the K most likely labels and their
        probabilities (`top_k`, most likely first), with ``all_scores`` every label's (`scores`)."""
        import torch

        cfg = self.cfg
        texts, pairs = self.read_inputs(records, where)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + len(pairs[i] or ""))
        outputs: list[dict[str, Any] | None] = [None] * len(texts)
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                logits = self.logits(
                    model,
                    tokenizer,
                    [texts[i] for i in idx],
                    [pairs[i] for i in idx] if cfg.text_pair_column else None,
                    batch_size,
                )
                for row, i in enumerate(idx):
                    outputs[i] = {**records[i], **self._decode(logits[row], top_k, all_scores)}
        return outputs

    def logits(
        self, model, tokenizer, texts: list[str], pairs: list[str] | None, batch_size: int
    ) -> np.ndarray:
        """The model's logits, one row per text: of its first `data.max_seq_length` tokens, or under
        `data.long_text: windows` of its windows aggregated (`data.window_aggregate`), ``batch_size`` windows
        per forward pass."""
        data = self.recipe.data
        max_length = capped_max_length(tokenizer, data.max_seq_length)
        device = next(model.parameters()).device

        def forward(enc) -> np.ndarray:
            return model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu().numpy()

        if data.long_text != "windows":
            kwargs = {"truncation": True, "max_length": max_length, "padding": True, "return_tensors": "pt"}
            return forward(tokenizer(texts, pairs, **kwargs))
        return windows.windowed_logits(
            forward,
            tokenizer,
            texts,
            max_length,
            self.window_stride(tokenizer),
            batch_size,
            data.window_aggregate,
        )

    def _decode(
        self, logits: np.ndarray, top_k: int | None = None, all_scores: bool = False
    ) -> dict[str, Any]:
        schema = self.labels
        if self.temperature is not None and schema.problem_type == SINGLE:
            logits = logits / self.temperature  # calibrated scores; the argmax, so the label, is unchanged
        if schema.problem_type == REGRESSION:
            value = float(logits[0])
            return {"label": value, "score": value}
        if schema.problem_type == MULTI:  # each label's own probability (they need not sum to 1)
            probs = _sigmoid(logits)
            chosen = [j for j in range(len(probs)) if probs[j] > self.cfg.multi_label_threshold]
            out = {
                "label": [schema.names[j] for j in chosen],
                "score": [round(float(probs[j]), 6) for j in chosen],
            }
        else:
            probs = softmax(logits)
            best = int(probs.argmax())
            out = {"label": schema.names[best], "score": round(float(probs[best]), 6)}
        if top_k is not None:  # a stable sort: ties keep the label order
            ranked = sorted(range(len(probs)), key=lambda j: -probs[j])[:top_k]
            out["top_k"] = [{"label": schema.names[j], "score": round(float(probs[j]), 6)} for j in ranked]
        if all_scores:
            out["scores"] = {name: round(float(p), 6) for name, p in zip(schema.names, probs, strict=True)}
        return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
