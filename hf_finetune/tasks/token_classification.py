"""Token classification (NER): one IOB tag per word, entities scored the seqeval way.

Sentences come as word lists (``tokens``) with one tag per word (``ner_tags``): ClassLabel ids
(Hub), IOB strings (JSON Lines, CoNLL files), or integer ids named by ``task.labels``. The
tokenizer splits words into subwords; a word's tag goes on its first subword and the other
subwords are left out of the loss (-100), unless ``label_all_tokens`` trains on them too (a
``B-X`` word then gives ``I-X`` to its continuations). Evaluation is always one tag per word.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..config.schema import TaskConfig, field_help
from ..errors import DataError, RecipeError
from ..labels import SINGLE, LabelSchema, classlabel_names
from ..losses import ImbalanceLoss, build_loss, check_loss_fields
from ..metrics.sequence_labeling import OUTSIDE, entities, split_tag
from .base import Task, capped_max_length, pad_multiple, softmax
from .registry import register_task
from .words import IGNORE, align_labels, locate_words, split_words, windows

logger = logging.getLogger(__name__)

_UNALIGNED_LABELS = (
    "peft prepends the virtual tokens to the logits but not to the per-token labels, so the loss does not "
    "line up. Use lora or ia3 or prefix_tuning"
)


@dataclass
class TokenClassificationConfig(TaskConfig):
    tokens_column: str = field_help(
        "Column with the words of each sentence (a list of non-empty strings); empty sentences or tokens are "
        "an error naming the example.",
        "tokens",
    )
    tags_column: str = field_help(
        "Column with one tag per word: IOB names (`B-PER`, `I-PER`, `O`) or `ClassLabel` ids. Integer tags "
        "are read through the data's own `ClassLabel` names, so a saved model evaluates data that orders its "
        "tags differently.",
        "ner_tags",
    )
    labels: list[str] | None = field_help(
        "Tag names in id order (needed for integer tags without `ClassLabel` names); default: the dataset's "
        "`ClassLabel` names, else `O` then `B-`/`I-` of each type found in the training split.",
        None,
    )
    label_all_tokens: bool = field_help(
        "Train on every subword of a word (continuations of a `B-X` word get `I-X`); default: a word's first "
        "subword carries its tag and the others are left out of the loss. Evaluation is per word either way.",
        False,
    )
    strict: bool = field_help(
        "Require IOB2 (every `I-X` continues a `B-X`/`I-X`; an error names the first example and token that "
        "does not) and score entities the strict way (metric `seqeval/strict`). Off: IOB1 and loose IOB2 are "
        "read the conlleval way.",
        False,
    )
    class_weights: Literal["auto"] | list[float] | None = field_help(
        "Make rare tags count more in the loss (each tagged subword's loss times its tag's weight). `auto`: "
        "inverse tag frequency over the training split's words (one tag per word, whatever "
        "`label_all_tokens` says), normalised so that the frequency-weighted mean weight is 1 (sum over tags of "
        "frequency x weight = 1), so `O` gets less than 1 and rare entity tags more; or a list of positive "
        "numbers, one per tag in label order. Default: unweighted. Logged, shown by `validate`, written to "
        "`all_results.json`.",
        None,
    )
    loss: Literal["cross_entropy", "focal"] = field_help(
        "`cross_entropy`, or `focal`: -(1 - p_t)^gamma log p_t per subword, which discounts the tokens the "
        "model already tags right (most `O` words) so training dwells on the hard ones; times the tag weight "
        "when `class_weights` is set too. Computed in fp32; subwords labelled -100 are left out.",
        "cross_entropy",
    )
    focal_gamma: float = field_help(
        "The focal loss exponent gamma (`loss: focal`): 0 is plain cross-entropy, larger values discount easy "
        "tokens more. At least 0.",
        2.0,
    )

    def __post_init__(self) -> None:
        check_loss_fields(self.class_weights, self.loss, self.focal_gamma)
        if self.labels is None:
            return
        if not self.labels:
            raise RecipeError("task.labels", "is an empty list; list the tag names or remove the field.")
        dupes = sorted({x for x in self.labels if self.labels.count(x) > 1})
        if dupes:
            raise RecipeError("task.labels", f"has duplicate names: {', '.join(dupes)}.")
        bad = [tag for tag in self.labels if not _is_iob(tag)]
        if bad:
            raise RecipeError(
                "task.labels",
                f"{', '.join(map(repr, bad))} {'is not an IOB tag' if len(bad) == 1 else 'are not IOB tags'}; "
                "tags are O, B-TYPE or I-TYPE (e.g. B-PER, I-PER).",
            )


def _is_iob(tag: Any) -> bool:
    try:
        split_tag(tag)
    except (ValueError, AttributeError):
        return False
    return True


@register_task(
    "token-classification",
    TokenClassificationConfig,
    "One IOB tag per word (NER): CoNLL-2003 and the like; entity-level seqeval metrics, entity spans.",
)
class TokenClassificationTask(Task):
    cfg: TokenClassificationConfig

    auto_class = "AutoModelForTokenClassification"
    card_title = "Token Classification"
    usage_example = 'model("Hugging Face is based in New York City")'
    pipeline_kwargs = ', aggregation_strategy="simple"'
    peft_task_type = "TOKEN_CLS"
    refused_peft_methods = {
        "prompt_tuning": _UNALIGNED_LABELS,
        "p_tuning": _UNALIGNED_LABELS,
    }
    headline_candidates = ("f1", "exact_match", "accuracy")
    long_text_note = (
        "it cuts longer sentences in training and evaluation (a warning counts them) and `predict` reads "
        "them in windows"
    )

    def __init__(self, recipe):
        super().__init__(recipe)
        self.labels: LabelSchema | None = None
        self.imbalance: ImbalanceLoss | None = None  # class weights / focal loss, settled by prepare()

    # ---------------------------------------------------------------- data checks
    def prepare(self, raw) -> None:
        cfg, data = self.cfg, self.recipe.data
        labelled = [s for s in raw if self.is_labelled(s, raw[s])]
        for split in raw:
            columns = {"task.tokens_column": cfg.tokens_column}
            if split in labelled:
                columns["task.tags_column"] = cfg.tags_column
            self.require_columns(raw, split, columns)
            self._check_words(raw[split], split)
        restored = self.labels is not None  # from a saved model: the data must agree with it
        if not restored:
            self.labels = LabelSchema(SINGLE, self._label_names(raw[data.train_split]))
        for split in labelled:
            self._check_tags(raw[split], split)
        logger.info("tags: %s", ", ".join(self.labels.names))
        if not restored:  # a run being set up: the loss it trains with
            self.imbalance = self._imbalance_loss(raw[data.train_split])

    def _imbalance_loss(self, train) -> ImbalanceLoss | None:
        """`task.class_weights` / `task.loss`, with the training split's tags counted per word (checked by now)."""
        cfg = self.cfg
        if cfg.class_weights is None and cfg.loss == "cross_entropy":
            return None
        feature_names = classlabel_names(train.features[cfg.tags_column])
        counts = [0] * len(self.labels.names)
        for tags in train[cfg.tags_column]:
            for tag in tags:
                counts[self.labels.label2id[self._tag_name(tag, feature_names)]] += 1
        return build_loss(
            cfg,
            self.labels.names,
            counts,
            rows=sum(counts),
            label_smoothing=self.recipe.training.label_smoothing_factor,
            item="tag",
        )

    def loss_function(self) -> ImbalanceLoss | None:
        return self.imbalance

    def label_column(self) -> str:
        return self.cfg.tags_column

    def describe(self) -> dict[str, Any]:
        out = {"labels": self.labels.names, "metrics": self.metric_names()}
        out["loss"] = self.imbalance.description if self.imbalance is not None else "cross-entropy"
        if self.imbalance is not None and self.imbalance.weights is not None:
            out["class_weights"] = self.imbalance.weights_by_name()
        return out

    def _ids(self, ds) -> list[Any]:
        return list(ds["id"]) if "id" in ds.column_names else list(range(len(ds)))

    def _check_words(self, ds, split: str) -> None:
        column = self.cfg.tokens_column
        inner = getattr(ds.features[column], "feature", None)
        if getattr(inner, "dtype", None) not in ("string", "large_string"):
            kind = getattr(ds.features[column], "dtype", None) or type(ds.features[column]).__name__
            raise DataError(
                f"`task.tokens_column`: column '{column}' in the {split} split holds {kind} values, "
                "not lists of words. Token classification needs each sentence split into words."
            )
        for row, (example, words) in enumerate(zip(self._ids(ds), ds[column])):
            if not words:
                raise DataError(
                    f"`task.tokens_column`: example id {example} (row {row}) in the {split} split has "
                    "an empty token list. Drop empty sentences from the data."
                )
            if any(w is None or not w.strip() for w in words):
                position = next(i for i, w in enumerate(words) if w is None or not w.strip())
                raise DataError(
                    f"`task.tokens_column`: example id {example} (row {row}) in the {split} split has an "
                    f"empty token at position {position}. Remove it (and its tag)."
                )

    def _label_names(self, train) -> list[str]:
        cfg = self.cfg
        column = cfg.tags_column
        feature_names = classlabel_names(train.features[column])
        if cfg.labels is not None:
            if feature_names is not None and feature_names != cfg.labels:
                raise RecipeError(
                    "task.labels",
                    f"{cfg.labels} differ from the dataset's ClassLabel names {feature_names}; "
                    "remove `task.labels` or list the names in the dataset's order.",
                )
            return list(cfg.labels)
        if feature_names is not None:
            bad = [t for t in feature_names if not _is_iob(t)]
            if bad:
                raise DataError(
                    f"`task.tags_column`: the dataset's tag names {', '.join(map(repr, bad))} are not IOB "
                    "(O, B-TYPE, I-TYPE); only IOB tagging is supported."
                )
            return feature_names
        kinds: set[str] = set()
        for row, (example, tags) in enumerate(zip(self._ids(train), train[column])):
            for position, tag in enumerate(tags or []):  # null tags: _check_tags reports them
                if not isinstance(tag, str):
                    raise DataError(
                        f"`task.labels`: column '{column}' holds integer tag ids without names; list "
                        "the tag names in id order in `task.labels` (e.g. [O, B-PER, I-PER])."
                    )
                if not _is_iob(tag):
                    raise DataError(
                        f"`task.tags_column`: tag {tag!r} (example id {example}, row {row}, token "
                        f"{position}) in the training split is not IOB; use O, B-TYPE or I-TYPE."
                    )
                if tag != OUTSIDE:
                    kinds.add(split_tag(tag)[1])
        return [OUTSIDE] + [f"{prefix}-{kind}" for kind in sorted(kinds) for prefix in ("B", "I")]

    def _check_tags(self, ds, split: str) -> None:
        cfg, schema = self.cfg, self.labels
        ids = self._ids(ds)
        feature_names = classlabel_names(ds.features[cfg.tags_column])
        loose = 0
        for row, (example, words, tags) in enumerate(zip(ids, ds[cfg.tokens_column], ds[cfg.tags_column])):
            where = f"example id {example} (row {row}) in the {split} split"
            if tags is None:
                raise DataError(
                    f"`task.tags_column`: {where} has no tags (column '{cfg.tags_column}' is null); give "
                    "one tag per token or drop the example."
                )
            if len(words) != len(tags):
                raise DataError(
                    f"`task.tags_column`: {where} has {len(words)} tokens but {len(tags)} tags; each "
                    "token needs exactly one tag."
                )
            previous = OUTSIDE
            for position, tag in enumerate(tags):
                name = self._tag_name(tag, feature_names)
                if name is None:
                    if isinstance(tag, int) and feature_names and 0 <= tag < len(feature_names):
                        tag = feature_names[tag]  # name the ClassLabel the label list lacks
                    raise DataError(
                        f"`task.labels`: tag {tag!r} of token {position} ({words[position]!r}), {where}, is "
                        f"not in the label list [{', '.join(schema.names)}]. Add it to `task.labels` or "
                        "fix the data."
                    )
                prefix, kind = split_tag(name)
                if prefix == "I" and (previous == OUTSIDE or split_tag(previous)[1] != kind):
                    if cfg.strict:
                        raise DataError(
                            f"`task.strict`: token {position} ({words[position]!r}), {where}, is tagged "
                            f"{name} after {previous}: not IOB2, where an entity starts with B-. Fix the "
                            "data, or set `task.strict: false` to read it as IOB1."
                        )
                    loose += 1
                previous = name
        if loose:
            logger.info(
                "%s split: %d entities start with I- (IOB1 style); they are read the conlleval way",
                split,
                loose,
            )

    def _tag_name(self, tag: Any, feature_names: list[str] | None) -> str | None:
        """The tag's name when it is in the label list, else None. Integer tags are ids of the data's
        ClassLabel (whose order may differ from a saved model's), else ids into the label list."""
        if isinstance(tag, bool) or not isinstance(tag, (str, int)):
            return None
        if isinstance(tag, int):
            names = feature_names or self.labels.names
            if not 0 <= tag < len(names):
                return None
            tag = names[tag]
        return tag if tag in self.labels.label2id else None

    # ---------------------------------------------------------------- model side
    def model_config_kwargs(self) -> dict[str, Any]:
        assert self.labels is not None, "prepare() first"
        return {
            "num_labels": self.labels.num_labels,
            "id2label": self.labels.id2label,
            "label2id": self.labels.label2id,
        }

    def restore(self, model_config) -> None:
        names = [model_config.id2label[i] for i in range(model_config.num_labels)]
        self.labels = LabelSchema(SINGLE, names)

    def tokenizer_kwargs(self, tokenizer) -> dict[str, Any]:
        # Byte-level BPE (RoBERTa, GPT-2, ...) encodes pre-split words only with a prefix space.
        if getattr(tokenizer, "add_prefix_space", None) is False:
            return {"add_prefix_space": True}
        return {}

    def check_tokenizer(self, tokenizer) -> None:
        self.require_fast_tokenizer(tokenizer, "it maps subwords back to words")
        field, name = self.tokenizer_field()
        try:
            tokenizer([["Word", "split"]], is_split_into_words=True)
        except Exception as exc:  # e.g. byte-level BPE without add_prefix_space
            raise RecipeError(
                field, f"the tokenizer of {name!r} cannot encode pre-split words: {exc}"
            ) from None

    def continuation_ids(self) -> dict[int, int]:
        """Tag id of a word's continuation subwords under ``label_all_tokens``: B-X -> I-X."""
        label2id = self.labels.label2id
        out = {}
        for i, name in enumerate(self.labels.names):
            prefix, kind = split_tag(name)
            out[i] = label2id.get(f"I-{kind}", i) if prefix == "B" else i
        return out

    def preprocess(self, raw, tokenizer):
        cfg, data = self.cfg, self.recipe.data
        max_length = capped_max_length(tokenizer, data.max_seq_length)
        continuation = self.continuation_ids()
        label2id = self.labels.label2id
        if cfg.label_all_tokens:
            lonely = [n for n in self.labels.names if n.startswith("B-") and f"I-{n[2:]}" not in label2id]
            if lonely:
                logger.warning(
                    "label_all_tokens: no I- tag for %s; continuation subwords keep the B- tag",
                    ", ".join(lonely),
                )

        def encode(batch, with_tags: bool, all_subwords: bool, id_map: list[int] | None):
            sentences = batch[cfg.tokens_column]
            enc = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
            word_ids = [enc.word_ids(i) for i in range(len(sentences))]
            if with_tags:
                enc["labels"] = [
                    align_labels(
                        words,
                        [label2id[t] if isinstance(t, str) else id_map[t] if id_map else t for t in tags],
                        continuation if all_subwords else None,
                    )
                    for words, tags in zip(word_ids, batch[cfg.tags_column])
                ]
            enc["_cut"] = [
                len(ids) >= max_length
                and max((w for w in words if w is not None), default=-1) + 1 < len(sentence)
                for ids, words, sentence in zip(enc["input_ids"], word_ids, sentences)
            ]
            return enc

        out = {}
        for split, ds in raw.items():
            with_tags = self.is_labelled(split, ds) and cfg.tags_column in ds.column_names
            all_subwords = cfg.label_all_tokens and split == data.train_split
            names = classlabel_names(ds.features[cfg.tags_column]) if with_tags else None
            id_map = [label2id[n] for n in names] if names else None  # the data's ClassLabel ids -> model ids
            encoded = self.tokenise(
                ds,
                split,
                encode,
                tokenizer,
                fn_kwargs={"with_tags": with_tags, "all_subwords": all_subwords, "id_map": id_map},
            )
            cut = sum(encoded["_cut"])
            if cut:
                logger.warning(
                    "%s split: %d of %d sentences are longer than data.max_seq_length=%d subwords; their "
                    "last words are cut off (and not scored). Raise data.max_seq_length to keep them.",
                    split,
                    cut,
                    len(ds),
                    max_length,
                )
            out[split] = encoded.remove_columns("_cut")
        return out

    def data_collator(self, tokenizer, args):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(
            tokenizer,
            pad_to_multiple_of=pad_multiple(args),
            label_pad_token_id=IGNORE,
            **self.padding_kwargs(),
        )

    def metric_names(self) -> list[str]:
        return ["seqeval/strict" if self.cfg.strict else "seqeval"]

    def preprocess_logits_for_metrics(self):
        # Keep one id per subword instead of the full logits: evaluation memory stays O(tokens).
        def to_ids(logits, labels):
            if isinstance(logits, tuple):
                logits = logits[0]
            return logits.argmax(dim=-1)

        return to_ids

    def compute_metrics(self):
        from ..metrics import load_metric

        metric = load_metric(self.metric_names()[0])
        names = np.array(self.labels.names, dtype=object)

        def compute(eval_pred) -> dict[str, float]:
            preds = (
                eval_pred.predictions[0]
                if isinstance(eval_pred.predictions, tuple)
                else eval_pred.predictions
            )
            if preds.ndim == 3:  # full logits (no preprocess_logits_for_metrics)
                preds = preds.argmax(axis=-1)
            predicted, reference = [], []
            for pred_row, ref_row in zip(preds, eval_pred.label_ids):
                keep = ref_row != IGNORE
                predicted.append(list(names[pred_row[keep]]))
                reference.append(list(names[ref_row[keep]]))
            return metric.compute(predictions=predicted, references=reference)

        return compute

    # ---------------------------------------------------------------- prediction
    def input_fields(self) -> list[str]:
        return ["text", self.cfg.tokens_column]

    def read_inputs(self, records, where: str) -> list[tuple[str, list[str], list[tuple[int, int]]]]:
        """(text, words, character span of each word) per record."""
        out = []
        column = self.cfg.tokens_column
        for number, record in enumerate(records, 1):
            line = f"{where} line {number}"
            text = record.get("text")
            if text is not None and not isinstance(text, str):
                raise DataError(f"{line}: field 'text' must be a string, got {type(text).__name__}.")
            key = column if column in record else "tokens" if "tokens" in record else None
            if key is not None:
                words = record[key]
                if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
                    raise DataError(f"{line}: field '{key}' must be a list of non-empty strings (the words).")
                if text is None:
                    text = " ".join(words)
                out.append((text, words, locate_words(words, text, line)))
            elif text is not None:
                found = split_words(text)
                out.append((text, [w for w, _, _ in found], [(s, e) for _, s, e in found]))
            else:
                raise DataError(
                    f"{line}: needs 'text' (raw text) or '{column}' (a list of words) to tag; got "
                    f"fields {', '.join(record) or 'none'}."
                )
        return out

    def predict(self, model, tokenizer, records, batch_size, where: str = "input"):
        inputs = self.read_inputs(records, where)
        tag_probs = self._word_probabilities(model, tokenizer, [words for _, words, _ in inputs], batch_size)
        names = self.labels.names
        outputs = []
        for record, (text, words, spans), probs in zip(records, inputs, tag_probs):
            best = probs.argmax(axis=-1) if len(words) else np.zeros(0, dtype=int)
            tags = [names[i] for i in best]
            scores = probs.max(axis=-1) if len(words) else np.zeros(0)
            found = []
            for kind, first, end in entities(tags, strict=self.cfg.strict):
                start_char, end_char = spans[first][0], spans[end - 1][1]
                found.append(
                    {
                        "text": text[start_char:end_char],
                        "label": kind,
                        "start": start_char,
                        "end": end_char,
                        "score": round(float(scores[first:end].mean()), 6),
                    }
                )
            row = {**record, "entities": found}
            if "text" not in record:
                row["text"] = text
            if self.cfg.tokens_column in record or "tokens" in record:
                row["tags"] = tags
            outputs.append(row)
        return outputs

    def _word_probabilities(self, model, tokenizer, sentences: list[list[str]], batch_size: int):
        """Tag probabilities per word (first subword), long sentences read in overlapping windows."""
        import torch

        max_length = capped_max_length(tokenizer, self.recipe.data.max_seq_length)
        budget = max(1, max_length - tokenizer.num_special_tokens_to_add(pair=False))
        num_labels = len(self.labels.names)
        # The untruncated subword count of every word decides the windows.
        pieces, sizes = [], []  # (sentence, first word, end word), its subword count
        for s, words in enumerate(sentences):
            if not words:
                continue
            enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
            counts = [0] * len(words)
            for w in enc.word_ids():
                if w is not None:
                    counts[w] += 1
            for a, b in windows(counts, budget):
                pieces.append((s, a, b))
                sizes.append(sum(counts[a:b]))  # subwords: batches of similar length pad little

        probs = [np.zeros((len(words), num_labels), dtype=np.float32) for words in sentences]
        for p in probs:
            p[:, self.labels.label2id.get(OUTSIDE, 0)] = 1.0  # words without subwords are O
        centrality = [np.full(len(words), -1) for words in sentences]
        order = sorted(range(len(pieces)), key=sizes.__getitem__)
        device = next(model.parameters()).device
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = [pieces[i] for i in order[start : start + batch_size]]
                enc = tokenizer(
                    [sentences[s][a:b] for s, a, b in batch],
                    is_split_into_words=True,
                    truncation=True,
                    max_length=max_length,
                    padding=True,
                    return_tensors="pt",
                )
                logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu().numpy()
                for row, (s, a, b) in enumerate(batch):
                    previous = None
                    for position, w in enumerate(enc.word_ids(row)):
                        if w is not None and w != previous:
                            word, central = a + w, min(w, b - a - 1 - w)
                            if central > centrality[s][word]:
                                centrality[s][word] = central
                                probs[s][word] = softmax(logits[row, position])
                        previous = w
        return probs
