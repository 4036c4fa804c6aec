"""Extractive question answering (SQuAD v1/v2): the answer is a span of the context.

A (question, context) pair longer than ``data.max_seq_length`` tokens becomes several features:
windows over the context that overlap by ``doc_stride`` tokens, each with the whole question.
Training marks the answer's first and last token in the window that holds it (the [CLS] token
where the window does not). Evaluation keeps each feature's character offsets outside the model
inputs and, per example, searches the ``n_best_size`` best start and end tokens of every window
for the best valid span (end >= start, at most ``max_answer_length`` tokens, inside the context),
then maps it back to characters of the context.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config.schema import TaskConfig, field_help
from ..data import SplitBy
from ..errors import DataError, RecipeError
from .base import Task, capped_max_length, softmax
from .registry import register_task

logger = logging.getLogger(__name__)

SHOWN = 10  # offending ids listed in an error
_SHIFTED_POSITIONS = (
    "the virtual tokens shift every position, while the answer start/end labels and the offset mapping do "
    "not move with them. Use lora or ia3"
)


@dataclass
class QuestionAnsweringConfig(TaskConfig):
    question_column: str = field_help("Column with the question.", "question")
    context_column: str = field_help("Column with the context the answer is taken from.", "context")
    answers_column: str = field_help(
        "Column with the answers: `{text: [...], answer_start: [...]}` (character offsets), the Hub's "
        "`squad`/`squad_v2` schema. Training targets the first answer; evaluation scores against all of them.",
        "answers",
    )
    id_column: str | None = field_help(
        "Column with the question id, listed in error messages (up to 10 ids); rows are numbered without it.",
        "id",
    )
    doc_stride: int = field_help(
        "Tokens shared by consecutive windows when question + context exceed `data.max_seq_length`. Checked "
        "before weights load against the room the longest question leaves in a window.",
        128,
    )
    max_answer_length: int = field_help(
        "Longest answer, in tokens, that post-processing considers (end after start, inside the context).", 30
    )
    n_best_size: int = field_help(
        "Start and end candidates searched per window; the best valid span over all of an example's windows "
        "is its answer.",
        20,
    )
    version_2_with_negative: bool = field_help(
        "SQuAD v2: an empty answer list is an unanswerable question; metric `squad_v2` (`exact`, `f1`, "
        "`HasAns_*`, `NoAns_*`) instead of `squad` (`exact_match`, `f1`). Off: empty answers are an error.",
        False,
    )
    null_score_diff_threshold: float = field_help(
        "v2: answer nothing (an empty answer, start = end = 0) when the no-answer (`[CLS]`) score beats the "
        "best span's score by more than this.",
        0.0,
    )

    def __post_init__(self) -> None:
        for name in ("doc_stride", "max_answer_length", "n_best_size"):
            if getattr(self, name) < 1:
                raise RecipeError(f"task.{name}", f"must be at least 1, got {getattr(self, name)}.")


def _listing(ids: list[Any], total: int) -> str:
    shown = ", ".join(str(i) for i in ids[:SHOWN])
    return shown + (f" and {total - SHOWN} more" if total > SHOWN else "")


def best_spans(
    features: list[dict[str, Any]],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    num_examples: int,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    with_negative: bool = False,
    null_threshold: float = 0.0,
) -> list[dict[str, Any]]:
    """The best answer span of every example over all of its features (windows).

    ``features[i]`` has ``example`` (index of its example) and ``offsets`` (per token a
    (start, end) character span of the context, or None for tokens outside the context). Returns
    per example ``start``, ``end`` (characters; both 0 for no answer) and ``score`` (the span's
    probability among the candidates, no-answer included for v2).
    """
    candidates: list[list[tuple[float, int, int]]] = [[] for _ in range(num_examples)]
    null_scores = [np.inf] * num_examples
    for i, feature in enumerate(features):
        offsets = feature["offsets"]
        starts, ends = start_logits[i][: len(offsets)], end_logits[i][: len(offsets)]
        example = feature["example"]
        null_scores[example] = min(null_scores[example], float(starts[0] + ends[0]))  # [CLS]
        top_starts = np.argsort(starts)[::-1][:n_best_size]
        top_ends = np.argsort(ends)[::-1][:n_best_size]
        for s in top_starts:
            if offsets[s] is None:
                continue
            for e in top_ends:
                if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                candidates[example].append((float(starts[s] + ends[e]), offsets[s][0], offsets[e][1]))
    results = []
    for example in range(num_examples):
        found = sorted(candidates[example], reverse=True)[:n_best_size]
        scores = [c[0] for c in found]
        if with_negative and np.isfinite(null_scores[example]):
            scores.append(null_scores[example])
        probabilities = softmax(np.array(scores)) if scores else np.array([])
        if not found or (with_negative and null_scores[example] - found[0][0] > null_threshold):
            score = float(probabilities[-1]) if with_negative and len(probabilities) else 0.0
            results.append({"start": 0, "end": 0, "score": score, "answered": False})
        else:
            results.append(
                {"start": found[0][1], "end": found[0][2], "score": float(probabilities[0]), "answered": True}
            )
    return results


@register_task(
    "question-answering",
    QuestionAnsweringConfig,
    "Extractive QA (SQuAD v1/v2): answer spans in long contexts via overlapping windows; EM and F1.",
)
class QuestionAnsweringTask(Task):
    cfg: QuestionAnsweringConfig

    auto_class = "AutoModelForQuestionAnswering"
    card_title = "Question Answering"
    usage_example = 'model(question="Where is it based?", context="Hugging Face is based in New York City.")'
    peft_task_type = "QUESTION_ANS"
    refused_peft_methods = {
        "prompt_tuning": _SHIFTED_POSITIONS,
        "p_tuning": _SHIFTED_POSITIONS,
    }
    headline_candidates = ("f1", "exact_match", "accuracy")
    long_text_note = "it reads long contexts in overlapping windows of its own (`task.doc_stride`)"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.raw = None
        self.eval_features: dict[str, Any] = {}

    def label_column(self) -> str:
        return self.cfg.answers_column

    def describe(self) -> dict[str, Any]:
        return {"metrics": self.metric_names()}

    def metric_names(self) -> list[str]:
        return ["squad_v2" if self.cfg.version_2_with_negative else "squad"]

    def split_by(self, train) -> SplitBy | None:
        """Questions on one context stay on one side of a `data.validation_size` split: a context seen in
        training would make the validation score too kind."""
        column = self.cfg.context_column
        if column not in train.column_names:
            return None  # prepare() names the missing column
        return SplitBy("grouped", column, list(train[column]))

    # ---------------------------------------------------------------- data checks
    def prepare(self, raw) -> None:
        cfg, data = self.cfg, self.recipe.data
        if cfg.doc_stride >= data.max_seq_length:
            raise RecipeError(
                "task.doc_stride",
                f"is {cfg.doc_stride}, but windows hold only data.max_seq_length={data.max_seq_length} "
                "tokens; use a smaller stride (e.g. a third of max_seq_length).",
            )
        if len(data.eval_splits) > 1:
            raise RecipeError("data.eval_split", "question answering evaluates one split; name one.")
        labelled = [s for s in raw if self.is_labelled(s, raw[s])]
        for split in raw:
            columns = {"task.question_column": cfg.question_column, "task.context_column": cfg.context_column}
            if split in labelled:
                columns["task.answers_column"] = cfg.answers_column
            self.require_columns(raw, split, columns)
            for field, column in columns.items():
                if field != "task.answers_column":
                    self.require_text(raw, split, field, column)
            self._check_texts(raw[split], split)
        for split in labelled:
            raw[split] = self._check_answers(raw[split], split)
        self.raw = raw

    def _ids(self, ds) -> list[Any]:
        column = self.cfg.id_column
        return list(ds[column]) if column and column in ds.column_names else list(range(len(ds)))

    def _check_texts(self, ds, split: str) -> None:
        cfg = self.cfg
        ids = self._ids(ds)
        for field, column in (
            ("task.question_column", cfg.question_column),
            ("task.context_column", cfg.context_column),
        ):
            empty = [ids[i] for i, text in enumerate(ds[column]) if not text.strip()]
            if empty:
                raise DataError(
                    f"`{field}`: {len(empty)} examples in the {split} split have an empty {column} "
                    f"(ids {_listing(empty, len(empty))}). Drop or fill them."
                )

    def _check_answers(self, ds, split: str):
        cfg, data = self.cfg, self.recipe.data
        ids = self._ids(ds)
        contexts = list(ds[cfg.context_column])
        malformed, empty, misplaced, fixable = [], [], [], {}
        for row, answers in enumerate(ds[cfg.answers_column]):
            texts = (answers or {}).get("text")
            starts = (answers or {}).get("answer_start")
            if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
                malformed.append(ids[row])
                continue
            if not texts or any(not t for t in texts):
                if not cfg.version_2_with_negative or any(not t for t in texts):
                    empty.append(ids[row])
                continue
            context = contexts[row]
            for k, (text, start) in enumerate(zip(texts, starts)):
                if context[start : start + len(text)] == text:
                    continue
                found = _nearest(context, text, start)
                if found is None or not data.fix_answer_starts:
                    misplaced.append(ids[row])
                    break
                fixable.setdefault(row, {})[k] = found
        if malformed:
            raise DataError(
                f"`task.answers_column`: {len(malformed)} examples in the {split} split do not hold "
                f"{{text: [...], answer_start: [...]}} lists of equal length (ids "
                f"{_listing(malformed, len(malformed))})."
            )
        if empty:
            what = "an empty answer text" if cfg.version_2_with_negative else "no answer (or an empty one)"
            hint = (
                "Fix the answers."
                if cfg.version_2_with_negative
                else "Give every question an answer, or set `task.version_2_with_negative: true` for SQuAD v2 data."
            )
            raise DataError(
                f"`task.answers_column`: {len(empty)} examples in the {split} split have {what} "
                f"(ids {_listing(empty, len(empty))}). {hint}"
            )
        if misplaced:
            raise DataError(
                f"`task.answers_column`: in {len(misplaced)} examples of the {split} split an answer_start "
                f"does not point at the answer text in the context (ids {_listing(misplaced, len(misplaced))}). "
                "Fix the offsets, or set `data.fix_answer_starts: true` to re-find answers that occur in the context."
            )
        if not fixable:
            return ds
        logger.warning("%s split: re-found %d answer starts in their contexts", split, len(fixable))

        def fix(example, row):
            if row not in fixable:
                return example
            answers = dict(example[cfg.answers_column])
            answers["answer_start"] = [fixable[row].get(k, s) for k, s in enumerate(answers["answer_start"])]
            return {cfg.answers_column: answers}

        return ds.map(fix, with_indices=True, desc=f"Fixing answer starts in {split}")

    # ---------------------------------------------------------------- model side
    def check_tokenizer(self, tokenizer) -> None:
        cfg, data = self.cfg, self.recipe.data
        self.require_fast_tokenizer(tokenizer, "character offsets of tokens")
        if self.raw is None:
            return
        max_length = capped_max_length(tokenizer, data.max_seq_length)
        room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
        longest, where = 0, None
        for split, ds in self.raw.items():
            lengths = [
                len(ids)
                for ids in tokenizer(list(ds[cfg.question_column]), add_special_tokens=False)["input_ids"]
            ]
            if lengths and max(lengths) > longest:
                longest, where = max(lengths), split
        if room - longest <= cfg.doc_stride:
            raise RecipeError(
                "task.doc_stride",
                f"is {cfg.doc_stride}, but the longest question ({longest} tokens, {where} split) leaves "
                f"{room - longest} context tokens per window of {max_length}; the stride must be smaller "
                "than that. Lower `task.doc_stride` or raise `data.max_seq_length`.",
            )

    def _encode(self, tokenizer, questions, contexts):
        data = self.recipe.data
        return tokenizer(
            [q.lstrip() for q in questions],
            contexts,
            truncation="only_second",
            max_length=capped_max_length(tokenizer, data.max_seq_length),
            stride=self.cfg.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )

    def preprocess(self, raw, tokenizer):
        cfg, data = self.cfg, self.recipe.data

        def features(batch, indices, with_positions: bool, keep_offsets: bool):
            enc = self._encode(tokenizer, batch[cfg.question_column], batch[cfg.context_column])
            owners = enc.pop("overflow_to_sample_mapping")
            offsets = enc.pop("offset_mapping")
            if with_positions:  # evaluation features carry them too, so the Trainer reports eval_loss
                enc["start_positions"], enc["end_positions"] = [], []
                for i, spans in enumerate(offsets):
                    start, end = _answer_tokens(
                        batch[cfg.answers_column][owners[i]], spans, enc.sequence_ids(i)
                    )
                    enc["start_positions"].append(start)
                    enc["end_positions"].append(end)
            if keep_offsets:  # outside the model inputs: which example, and the context's characters
                enc["example"] = [indices[o] for o in owners]
                enc["offsets"] = [
                    [span if s == 1 else None for span, s in zip(spans, enc.sequence_ids(i))]
                    for i, spans in enumerate(offsets)
                ]
            return enc

        out = {}
        for split, ds in raw.items():
            train = split == data.train_split
            encoded = self.tokenise(
                ds,
                split,
                features,
                tokenizer,
                with_indices=True,
                fn_kwargs={
                    "with_positions": self.is_labelled(split, ds) and cfg.answers_column in ds.column_names,
                    "keep_offsets": not train,
                },
            )
            if not train:
                self.eval_features[split] = encoded
                encoded = encoded.remove_columns(["example", "offsets"])
            out[split] = encoded
            logger.info("%s split: %d examples -> %d features", split, len(ds), len(encoded))
        return out

    def answers_for(self, split: str, start_logits, end_logits) -> list[dict[str, Any]]:
        cfg = self.cfg
        features = self.eval_features[split]
        examples = self.raw[split]
        spans = best_spans(
            [{"example": e, "offsets": o} for e, o in zip(features["example"], features["offsets"])],
            start_logits,
            end_logits,
            len(examples),
            cfg.n_best_size,
            cfg.max_answer_length,
            cfg.version_2_with_negative,
            cfg.null_score_diff_threshold,
        )
        contexts = examples[cfg.context_column]
        return [{**s, "answer": contexts[i][s["start"] : s["end"]]} for i, s in enumerate(spans)]

    def compute_metrics(self):
        from ..metrics import load_metric

        metric = load_metric(self.metric_names()[0])

        def compute(eval_pred) -> dict[str, float]:
            start_logits, end_logits = eval_pred.predictions[:2]
            split = self.scored_split or self.recipe.data.eval_splits[0]
            answers = self.answers_for(split, start_logits, end_logits)
            references = [list(a["text"]) for a in self.raw[split][self.cfg.answers_column]]
            return metric.compute(predictions=[a["answer"] for a in answers], references=references)

        return compute

    # ---------------------------------------------------------------- prediction
    def input_fields(self) -> list[str]:
        return [self.cfg.question_column, self.cfg.context_column]

    def read_inputs(self, records, where: str) -> tuple[list[str], list[str]]:
        cfg = self.cfg
        questions, contexts = [], []
        for number, record in enumerate(records, 1):
            values = []
            for column, generic in ((cfg.question_column, "question"), (cfg.context_column, "context")):
                value = record.get(column, record.get(generic))
                if not isinstance(value, str) or not value.strip():
                    raise DataError(
                        f"{where} line {number}: needs a non-empty text field '{column}'; each line is "
                        '{"question": ..., "context": ...}.'
                    )
                values.append(value)
            questions.append(values[0])
            contexts.append(values[1])
        return questions, contexts

    def predict(self, model, tokenizer, records, batch_size, where: str = "input"):
        import torch

        cfg = self.cfg
        questions, contexts = self.read_inputs(records, where)
        enc = self._encode(tokenizer, questions, contexts)
        owners = enc["overflow_to_sample_mapping"]
        features = [
            {
                "example": owners[i],
                "offsets": [span if s == 1 else None for span, s in zip(spans, enc.sequence_ids(i))],
            }
            for i, spans in enumerate(enc["offset_mapping"])
        ]
        names = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        width = max(len(ids) for ids in enc["input_ids"])
        starts = np.full((len(features), width), -1e4, dtype=np.float32)
        ends = np.full((len(features), width), -1e4, dtype=np.float32)
        device = next(model.parameters()).device
        model.eval()
        order = sorted(range(len(features)), key=lambda i: len(enc["input_ids"][i]))  # less padding
        with torch.inference_mode():
            for first in range(0, len(features), batch_size):
                rows = order[first : first + batch_size]
                batch = tokenizer.pad({k: [enc[k][i] for i in rows] for k in names}, return_tensors="pt")
                output = model(**{k: v.to(device) for k, v in batch.items()})
                length = batch["input_ids"].shape[1]
                starts[rows, :length] = output.start_logits.float().cpu().numpy()
                ends[rows, :length] = output.end_logits.float().cpu().numpy()
        spans = best_spans(
            features,
            starts,
            ends,
            len(records),
            cfg.n_best_size,
            cfg.max_answer_length,
            cfg.version_2_with_negative,
            cfg.null_score_diff_threshold,
        )
        return [
            {
                **record,
                "answer": contexts[i][s["start"] : s["end"]],
                "score": round(s["score"], 6),
                "start": s["start"],
                "end": s["end"],
            }
            for i, (record, s) in enumerate(zip(records, spans))
        ]


def _answer_tokens(answers, spans, sequence) -> tuple[int, int]:
    """First and last token of the (first) answer in one window; (0, 0), the [CLS] token, when the
    window does not hold the whole answer or there is none."""
    if not answers or not answers["text"]:
        return 0, 0
    first_char = answers["answer_start"][0]
    last_char = first_char + len(answers["text"][0])
    context = [k for k, s in enumerate(sequence) if s == 1]
    lo, hi = context[0], context[-1]
    if not (spans[lo][0] <= first_char and spans[hi][1] >= last_char):
        return 0, 0
    start = next(k for k in range(lo, hi + 1) if spans[k][1] > first_char)
    end = next(k for k in range(hi, lo - 1, -1) if spans[k][0] < last_char)
    return start, end


def _nearest(context: str, text: str, start: int) -> int | None:
    """The occurrence of ``text`` in ``context`` closest to ``start``, or None."""
    best, position = None, context.find(text)
    while position >= 0:
        if best is None or abs(position - start) < abs(best - start):
            best = position
        position = context.find(text, position + 1)
    return best
