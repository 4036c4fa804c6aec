"""Token lengths for `hf-finetune init`: how long a data file's examples are under a model's tokenizer (the
tokenizer alone: no weights load), and the ``data.max_seq_length`` they call for.

Classification and NER take the smallest of 64/128/256/384/512 (up to the tokenizer's limit) that cuts at
most 1% of the examples; pairs are measured as a pair, NER words as the subwords they become. Question
answering reads a long context in overlapping windows (``doc_stride``) and cuts nothing, so it takes 384
with a stride of 128, as SQuAD recipes do, unless the question + context pairs are short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .columns import NER, QA, TC, sample_rows
from .errors import first_line

BUCKETS = (64, 128, 256, 384, 512)
MAX_CUT = 0.01  # the share of examples a max_seq_length may cut
QA_LENGTH, QA_STRIDE = 384, 128


@dataclass
class Choice:
    max_seq_length: int
    why: list[str]
    doc_stride: int | None = None  # question answering only
    stride_why: str = ""


def choose_length(ds, task: str, fields: dict[str, Any], model: str) -> Choice:
    """``data.max_seq_length`` (and QA's ``doc_stride``) for the examples of ``ds``, with the reasons."""
    lengths, unit, cap = _lengths(ds, task, fields, model)
    candidates = [b for b in BUCKETS if b <= cap] or [cap]
    cut = {b: sum(n > b for n in lengths) / len(lengths) for b in candidates}
    fits = [b for b in candidates if cut[b] <= MAX_CUT]
    ordered = sorted(lengths)
    stats = (
        f"{unit} ({_measured(len(lengths), len(ds))}): p50 {_pct(ordered, 0.5)}, p95 {_pct(ordered, 0.95)}, "
        f"max {ordered[-1]}"
    )
    if task == QA:
        short = [b for b in fits if b < QA_LENGTH]
        length = short[0] if short else min(QA_LENGTH, cap)
        stride = length // 3 if short or cap < QA_LENGTH else QA_STRIDE
        longer = sum(n > length for n in lengths) / len(lengths)
        why = [
            stats,
            (
                f"contexts are short: {length} holds all but {_share(longer, 1)} of the pairs whole"
                if short
                else f"{_share(longer, 1)} of the pairs are longer than {length}"
            )
            + f"; a longer context is read in windows of {length} tokens overlapping by doc_stride {stride}, "
            "so no answer is cut off",
        ]
        return Choice(length, why, stride, f"tokens shared by consecutive windows (a third of {length})")
    length = fits[0] if fits else candidates[-1]
    choice = (
        f"the smallest of {'/'.join(map(str, candidates))} that cuts at most {MAX_CUT:.0%} of the examples"
        if fits
        else f"the tokenizer's limit; even so it cuts {cut[length]:.1%} of the examples"
    )
    over = sum(n > length for n in lengths)
    share = (
        f"{over} ({_share(over, len(lengths))}) are longer and would be cut" if over else "none would be cut"
    )
    why = [stats, f"{length}: {choice}; {share}"]
    return Choice(length, why)


def _measured(measured: int, rows: int) -> str:
    return f"all {rows} rows" if measured == rows else f"a sample of {measured} of the {rows} rows"


def _share(part: float, whole: float) -> str:
    """A share as a percentage, with enough digits that a small one does not read as 0.0%."""
    share = part / whole
    return f"{share:.2%}" if 0 < share < 0.001 else f"{share:.1%}"


def _pct(ordered: Sequence[int], q: float) -> int:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _lengths(ds, task: str, fields: dict[str, Any], model: str) -> tuple[list[int], str, int]:
    """Tokens per example measured with the model's tokenizer (a whitespace estimate when it cannot load),
    what was measured, and the longest input the tokenizer takes."""
    view = ds.select(sample_rows(len(ds)))
    if task == TC:
        first = [t or "" for t in view[fields["text_column"]]]
        pair = fields.get("text_pair_column")
        second = [t or "" for t in view[pair]] if pair else None
        unit = "tokens per example" + (" (both texts of the pair)" if pair else "")
    elif task == NER:
        first, second = [list(w or []) for w in view[fields["tokens_column"]]], None
        unit = "subword tokens per sentence"
    else:
        first = [t or "" for t in view[fields["question_column"]]]
        second = [t or "" for t in view[fields["context_column"]]]
        unit = "tokens per question + context"
    tokenizer, problem = _tokenizer(model)
    if tokenizer is None:

        def words(x):
            return len(x) if isinstance(x, list) else len(x.split())

        lengths = [
            math.ceil(1.3 * (words(a) + (words(second[i]) if second else 0))) + (3 if second else 2)
            for i, a in enumerate(first)
        ]
        return lengths, f"estimated {unit} (words x 1.3: the tokenizer did not load: {problem})", 512
    lengths = []
    for start in range(0, len(first), 1000):
        a = first[start : start + 1000]
        b = second[start : start + 1000] if second else None
        enc = tokenizer(a, b, is_split_into_words=task == NER, truncation=False, verbose=False)
        lengths += [len(ids) for ids in enc["input_ids"]]
    limit = tokenizer.model_max_length if 0 < tokenizer.model_max_length < 100_000 else 512
    return lengths, f"{model} {unit}", limit


def _tokenizer(name: str) -> tuple[Any, str]:
    """The model's tokenizer alone (no weights), or None and why not."""
    from .hub import ensure_hub_mode

    ensure_hub_mode()
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name), ""
    except Exception as exc:  # offline without a cache, a typo, a model without a tokenizer
        return None, first_line(exc, 200)
