"""Long documents in text classification (`data.long_text: windows`): overlapping windows and their logits.

A document longer than `data.max_seq_length` tokens is read as windows of that many tokens, consecutive windows
sharing `data.window_stride` of them (the fast tokenizer's overflow). Each window is a row of the evaluated
dataset with its document's label; after the forward passes, `Windows.documents` turns the window rows back
into one row per document, their logits aggregated (`aggregate`). Under the default `truncate`,
`warn_truncated` counts the examples the model reads only the start of.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import RecipeError

logger = logging.getLogger(__name__)

#: the dataset column that names each window's document while a split is tokenised (dropped afterwards)
DOCUMENT = "_document"
#: the dataset column that says whether an example was cut, under `truncate` (dropped afterwards)
CUT = "_cut"


def stride(data, tokenizer, max_length: int) -> int:
    """The tokens consecutive windows share (`data.window_stride`, default a quarter of the window); a
    RecipeError naming the field when a window of ``max_length`` tokens has no room for it."""
    shared = data.window_stride if data.window_stride is not None else max_length // 4
    room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if shared >= room:
        raise RecipeError(
            "data.window_stride",
            f"is {shared}, but a window of {max_length} tokens holds {room} tokens of text (the rest are "
            f"the tokenizer's special tokens); the tokens windows share must be fewer. Lower "
            f"`data.window_stride` (e.g. {max(room // 4, 0)}) or raise `data.max_seq_length`.",
        )
    return shared


def describe(data) -> str:
    """`validate`'s line for `data.long_text: windows`."""
    shared = data.window_stride if data.window_stride is not None else data.max_seq_length // 4
    trains_on = "every window" if data.windows_in_training else f"the first {data.max_seq_length} tokens"
    return (
        f"windows of {data.max_seq_length} tokens sharing {shared}, {data.window_aggregate} of their logits "
        f"per document; training on {trains_on}"
    )


def encode(tokenizer, texts: list[str], max_length: int, shared: int):
    """Every window of ``texts``; the encoding's ``overflow_to_sample_mapping`` says whose each is."""
    return tokenizer(
        texts, truncation=True, max_length=max_length, stride=shared, return_overflowing_tokens=True
    )


def aggregate(logits: np.ndarray, owners, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Document logits from window logits, and the row of each document's first window.

    ``owners[i]`` is the document of row ``i`` of ``logits``; a document's windows are consecutive rows, in
    document order. ``how``: `mean`, each class's logit averaged over the document's windows, or `max`, each
    class's largest logit over them (each class on its own: the maxima may come from different windows).
    """
    owners = np.asarray(owners)
    if len(owners) == 0:
        return logits, np.zeros(0, dtype=np.int64)
    firsts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    if how == "max":
        return np.maximum.reduceat(logits, firsts, axis=0), firsts
    counts = np.diff(np.r_[firsts, len(owners)]).reshape(-1, *([1] * (logits.ndim - 1)))
    return (np.add.reduceat(logits, firsts, axis=0) / counts).astype(logits.dtype, copy=False), firsts


def windowed_logits(
    forward: Callable[[dict], np.ndarray],
    tokenizer,
    texts: list[str],
    max_length: int,
    shared: int,
    batch_size: int,
    how: str,
) -> np.ndarray:
    """One row of logits per text, from its windows (``batch_size`` windows per ``forward`` call)."""
    enc = encode(tokenizer, texts, max_length, shared)
    owners = enc["overflow_to_sample_mapping"]
    names = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    parts = [
        forward(tokenizer.pad({k: enc[k][first : first + batch_size] for k in names}, return_tensors="pt"))
        for first in range(0, len(owners), batch_size)
    ]
    return aggregate(np.concatenate(parts), owners, how)[0]


def cut_flags(enc, tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> list[bool]:
    """Per example of a truncating ``tokenizer`` call: whether tokens were cut off (fast tokenizers keep
    them; others are measured again without truncation)."""
    if enc.encodings is not None:
        return [bool(e.overflowing) for e in enc.encodings]
    full = tokenizer(texts, pairs, truncation=False, verbose=False)["input_ids"]
    return [len(ids) > max_length for ids in full]


def warn_truncated(split: str, cut: int, total: int, max_length: int, long_text: str, pairs: bool) -> None:
    """The examples of ``split`` longer than ``max_length`` tokens, which the model reads only the start of:
    a warning that names the fix under `truncate`; an info line for the training split under `windows` (without
    `windows_in_training`)."""
    if not cut:
        return
    if long_text == "windows":
        logger.info(
            "%s split: %d of %d documents are longer than data.max_seq_length=%d tokens; training reads "
            "their first %d tokens (`data.windows_in_training: true` trains on all their windows)",
            split,
            cut,
            total,
            max_length,
            max_length,
        )
        return
    fix = (
        "raise data.max_seq_length to keep them"
        if pairs
        else "set `data.long_text: windows` to read them whole in overlapping windows, or raise data.max_seq_length"
    )
    logger.warning(
        "%s split: %d of %d examples are longer than data.max_seq_length=%d tokens and are cut: the model "
        "reads only their first %d tokens. To keep the rest, %s.",
        split,
        cut,
        total,
        max_length,
        max_length,
        fix,
    )


class Windows:
    """Which document each window row of each evaluated split belongs to, to turn an evaluation's window rows
    back into document rows."""

    def __init__(self, how: str):
        self.how = how
        #: split -> (the document of each window row, the window rows' label ids or None)
        self.splits: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    def __bool__(self) -> bool:
        return bool(self.splits)

    def add(self, split: str, owners: Sequence[int], labels: Sequence | None, documents: int) -> None:
        owners = np.asarray(owners, dtype=np.int64)
        self.splits[split] = (owners, None if labels is None else np.asarray(labels))
        logger.info(
            "%s split: %d documents -> %d windows (%d documents longer than one window)",
            split,
            documents,
            len(owners),
            int((np.bincount(owners, minlength=documents) > 1).sum()),
        )

    def documents(
        self, logits: np.ndarray, refs: np.ndarray | None, split: str | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """An evaluation's window rows as document rows: each document's windows' logits aggregated, its
        label once. The split is ``split`` when named (the test split), else the evaluated split with as many
        windows (and, should several have as many, the same labels), so the Trainer's evaluations of several
        splits during training each find their own."""
        owners = self._owners(len(logits), refs, split)
        merged, firsts = aggregate(logits, owners, self.how)
        return merged, (refs[firsts] if refs is not None else None)

    def _owners(self, rows: int, refs: np.ndarray | None, split: str | None) -> np.ndarray:
        named = self.splits.get(split) if split else None
        if named is not None and len(named[0]) == rows:
            return named[0]
        found = [(owners, labels) for owners, labels in self.splits.values() if len(owners) == rows]
        if len(found) > 1 and refs is not None:
            found = [f for f in found if f[1] is not None and np.array_equal(f[1], refs)] or found
        if not found or any(not np.array_equal(found[0][0], owners) for owners, _ in found[1:]):
            sizes = ", ".join(f"{name}: {len(owners)}" for name, (owners, _) in self.splits.items())
            raise RuntimeError(
                f"data.long_text: windows: cannot tell which split's windows these {rows} predictions are "
                f"(windows per split: {sizes})"
            )
        return found[0][0]
