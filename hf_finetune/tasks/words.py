"""Words and subwords for per-word tasks: a word's tag on its subwords, raw text split into words the
CoNLL way, and long sentences cut into overlapping windows that fit the model."""

from __future__ import annotations

import re

from ..errors import DataError

IGNORE = -100  # label id that the loss and the metric skip


def align_labels(
    word_ids: list[int | None], tag_ids: list[int], continuation: dict[int, int] | None = None
) -> list[int]:
    """Per-subword labels from per-word tags: the first subword of a word gets the word's tag,
    special tokens -100, continuation subwords -100 (or ``continuation[tag]`` when given)."""
    labels: list[int] = []
    previous = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(tag_ids[word])
        else:
            labels.append(IGNORE if continuation is None else continuation[tag_ids[word]])
        previous = word
    return labels


# Words of raw text, split the way CoNLL-style corpora are: abbreviations (U.S.), numbers and
# dates (3.5, 1,000, 1996-08-22) and hyphenated words (Franco-German) stay whole; clitics ('s)
# and every other symbol stand alone, so "Paris.Then" is three words.
_WORD = re.compile(
    r"(?:[^\W\d_]\.){2,}"  # U.S., e.g.
    r"|\d+(?:[-.,:/]\d+)+"  # numbers with separators, dates, times
    r"|\w+(?:-\w+)*"  # words, hyphenated words
    r"|['\u2019](?:s|S|re|ve|ll|d|m|t)\b"  # clitics, straight or curly apostrophe
    r"|[^\w\s]"  # any other symbol
)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Raw text -> (word, start, end) with character offsets into ``text``."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def locate_words(words: list[str], text: str, where: str) -> list[tuple[int, int]]:
    """Character spans of ``words`` found in order in ``text``."""
    spans = []
    position = 0
    for i, word in enumerate(words):
        start = text.find(word, position)
        if start < 0:
            raise DataError(
                f"{where}: token {i} {word!r} does not occur in 'text' after character {position}; "
                "the tokens must appear in the text in order (or give only one of the two)."
            )
        position = start + len(word)
        spans.append((start, position))
    return spans


def windows(counts: list[int], budget: int) -> list[tuple[int, int]]:
    """Split words with ``counts`` subwords each into overlapping windows of at most ``budget``
    subwords; consecutive windows share about a quarter of the budget as context."""
    n = len(counts)
    if sum(counts) <= budget:
        return [(0, n)]
    overlap = budget // 4
    spans = []
    start = 0
    while True:
        end, total = start, 0
        while end < n and total + counts[end] <= budget:
            total += counts[end]
            end += 1
        end = max(end, start + 1)  # a single word longer than the budget is truncated
        spans.append((start, end))
        if end >= n:
            return spans
        back, shared = end, 0
        while back > start + 1 and shared + counts[back - 1] <= overlap:
            shared += counts[back - 1]
            back -= 1
        # overlap only when the next window still reaches past this one
        start = back if shared + counts[end] <= budget else end
