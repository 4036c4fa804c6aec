"""Reader for CoNLL-style column files (``.conll``, ``.txt``).

One token per line with its tag in the last column (other columns, such as CoNLL-2003's POS and
chunk tags, are ignored); a blank line ends a sentence; ``-DOCSTART-`` lines are document
separators and are skipped. Columns are split on tabs when a line has any, else on whitespace.
Files are UTF-8 (a byte-order mark skipped) unless `data.encoding` names another codec.
Rows come out with the Hub's field names: ``id`` (``<file name>:<line of the first token>``, so
error messages point into the file), ``tokens``, ``ner_tags``.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .textfile import codec, encoding_message, first_undecodable

TOKENS = "tokens"
TAGS = "ner_tags"
DOCSTART = "-DOCSTART-"


def read_conll(
    paths: list[str], field: str, encoding: str | None = None, encoding_option: str = "data.encoding"
) -> dict[str, list]:
    """Columns ``id``, ``tokens``, ``ner_tags`` from one or more CoNLL files, in file order; a file that does
    not decode with ``encoding`` is an error naming its line and ``encoding_option`` as the fix."""
    ids: list[str] = []
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    for path in paths:
        for first_line, words, labels in _sentences(Path(path), field, encoding, encoding_option):
            ids.append(f"{Path(path).name}:{first_line}")
            tokens.append(words)
            tags.append(labels)
    return {"id": ids, TOKENS: tokens, TAGS: tags}


def _sentences(path: Path, field: str, encoding: str | None, encoding_option: str):
    words: list[str] = []
    labels: list[str] = []
    first_line = 0
    try:
        handle = path.open(encoding=codec(encoding))  # a byte-order mark is not part of the first token
    except OSError as exc:
        raise DataError(f"`{field}`: cannot open {path}: {exc.strerror}.") from None
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    if words:
                        yield first_line, words, labels
                        words, labels = [], []
                    continue
                columns = line.split("\t") if "\t" in line else line.split()
                columns = [c.strip() for c in columns]
                if columns[0] == DOCSTART:
                    if words:  # a document break also ends a sentence
                        yield first_line, words, labels
                        words, labels = [], []
                    continue
                if len(columns) < 2 or not columns[0] or not columns[-1]:
                    raise DataError(
                        f"`{field}`: {path} line {number}: expected a token and a tag separated by "
                        f"whitespace (tag in the last column), got {line!r}."
                    )
                if not words:
                    first_line = number
                words.append(columns[0])
                labels.append(columns[-1])
        except UnicodeDecodeError as exc:
            problem = first_undecodable(path, encoding)
            if problem is None:  # cannot happen: the same codec failed on the same bytes
                raise DataError(f"`{field}`: {path} does not decode ({exc.reason}).") from None
            raise DataError(encoding_message(field, path, problem, encoding, encoding_option)) from None
    if words:
        yield first_line, words, labels
