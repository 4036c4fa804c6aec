"""Column roles for `hf-finetune init`: what each column of a data file looks like, and which task and
columns a starter recipe uses.

A column is text (strings with many distinct values and several words), a label (few distinct values
relative to the rows: class names or ids), a score (non-integral numbers: a regression target), a list
of strings (words, IOB tags, or the labels of a multi-label row), SQuAD-style answers ({text,
answer_start}), an id, or something else. The task follows from the roles: answers -> question
answering; words + IOB tags of equal length -> token classification; else text + label -> text
classification (two text columns: a sentence pair). Where a role has more than one candidate, the
answer is a question (a `DataError` naming the candidates and the flag that settles it), never a guess.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError

TEXT, LABEL, SCORE, LIST, ANSWERS, ID, OTHER = "text", "label", "score", "list", "answers", "id", "other"
TC, NER, QA = "text-classification", "token-classification", "question-answering"
TASKS = (TC, NER, QA)
SAMPLE = 20_000  # rows looked at per column (a seeded sample of larger files)
LABEL_MAX = 100  # more distinct values than this: not a label
_IOB = re.compile(r"^(O|[BI]-\S.*)$")
# the flags that name a column, by task: a flag of one task implies that task
FLAGS = {
    TC: ("text_column", "text_pair_column", "label_column"),
    NER: ("tokens_column", "tags_column"),
    QA: ("question_column", "context_column", "answers_column"),
}


@dataclass
class Column:
    name: str
    kind: str
    note: str

    def __str__(self) -> str:
        return f"{self.name} ({self.note})"


@dataclass
class Roles:
    """The task, the ``task:`` fields that name columns, and why each was chosen."""

    task: str
    why_task: str
    fields: dict[str, Any] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, column: str | None, why: str) -> None:
        self.fields[name] = column
        self.why[name] = why


def flag(name: str) -> str:
    """The `hf-finetune init` option of a ``task:`` field: text_column -> --text-column."""
    return "--" + name.replace("_", "-")


def sample_rows(rows: int, limit: int = SAMPLE) -> list[int]:
    """All row numbers, or a seeded sample of ``limit`` of them in file order."""
    if rows <= limit:
        return list(range(rows))
    return sorted(random.Random(0).sample(range(rows), limit))


def profile(ds) -> dict[str, Column]:
    """Every column of the dataset ``ds`` with its kind and a short note on what it holds."""
    rows = sample_rows(len(ds))
    view = ds.select(rows) if len(rows) < len(ds) else ds
    return {name: _profile(name, ds.features[name], list(view[name])) for name in ds.column_names}


def _profile(name: str, feature: Any, values: list[Any]) -> Column:
    import datasets

    present = [v for v in values if v is not None]
    few = max(2, min(LABEL_MAX, len(values) // 2))  # at most this many distinct values: a label
    if isinstance(feature, datasets.ClassLabel):
        return Column(name, LABEL, f"class label: {len(feature.names)} names")
    if isinstance(feature, dict) and {"text", "answer_start"} <= set(feature):
        return Column(name, ANSWERS, "answers: {text, answer_start}")
    inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
    if inner is not None:
        items = [x for v in present for x in v]
        if getattr(inner, "dtype", None) not in ("string", "large_string"):
            return Column(name, OTHER, f"lists of {getattr(inner, 'dtype', type(inner).__name__)}")
        mean = len(items) / len(present) if present else 0.0
        return Column(name, LIST, f"lists of strings: {len(set(items))} distinct, {mean:.1f} per row")
    dtype = getattr(feature, "dtype", "")
    distinct = len(set(present))
    if dtype == "bool":
        return Column(name, OTHER, "true/false: write them as strings to use them as labels")
    if dtype.startswith("float") and not all(float(v).is_integer() for v in present):
        return Column(name, SCORE, f"numbers, {distinct} distinct: a regression target")
    if dtype.startswith(("int", "uint", "float")):
        if 2 <= distinct <= few:
            return Column(name, LABEL, f"{distinct} distinct integers")
        return Column(name, ID, f"integers, {distinct} distinct")
    if dtype in ("string", "large_string"):
        words = sum(len(v.split()) for v in present) / len(present) if present else 0.0
        if distinct <= 1:
            return Column(name, OTHER, "one value")
        if distinct <= few:
            return Column(name, LABEL, f"{distinct} distinct values")
        if words >= 3:
            return Column(name, TEXT, f"text: {distinct} distinct, {words:.1f} words on average")
        return Column(name, ID, f"{distinct} distinct short strings")
    return Column(name, OTHER, dtype or type(feature).__name__)


def infer_roles(ds, columns: dict[str, Column], given: dict[str, str | None], where: str) -> Roles:
    """The task and its columns. ``given``: the flags (task, text_column, ...) the user set."""
    task = given.get("task")
    implied = {t for t, names in FLAGS.items() if any(given.get(n) for n in names)}
    for name in (n for names in FLAGS.values() for n in names):
        column = given.get(name)
        if column and column != "none" and column not in columns:
            raise DataError(
                f"{flag(name)}: {where} has no column '{column}'; its columns are: {', '.join(columns)}."
            )
    if task is not None:
        if task not in TASKS:
            raise DataError(
                f"--task: `hf-finetune init` writes recipes for {', '.join(TASKS)}; got {task!r}."
            )
        roles = Roles(task, "--task")
    elif len(implied) > 1:
        raise DataError(
            f"the column flags given belong to different tasks ({', '.join(sorted(implied))}); say which "
            "with --task."
        )
    elif implied:
        task = next(iter(implied))
        named = ", ".join(flag(n) for n in FLAGS[task] if given.get(n))
        roles = Roles(task, f"the column flags given ({named}) are {task}'s")
    else:
        roles = _task_from_columns(ds, columns, where)
        task = roles.task
    if task == QA:
        _qa_columns(ds, columns, given, roles, where)
    elif task == NER:
        _ner_columns(ds, columns, given, roles, where)
    else:
        _tc_columns(ds, columns, given, roles, where)
    return roles


def _task_from_columns(ds, columns: dict[str, Column], where: str) -> Roles:
    answers = [c.name for c in columns.values() if c.kind == ANSWERS]
    pairs = _word_tag_pairs(ds, columns)
    found = []
    if answers:
        found.append((QA, f"column {' and '.join(answers)} holds answers ({{text, answer_start}})"))
    if pairs:
        words, tags = pairs[0]
        found.append((NER, f"columns {words} (words) and {tags} (IOB tags) have one tag per word"))
    if len(found) > 1:
        raise DataError(
            f"{where} fits more than one task: {'; '.join(f'{t} ({why})' for t, why in found)}. Say which "
            "with --task."
        )
    if found:
        return Roles(*found[0])
    return Roles(TC, "no answers column and no word/tag lists: text and label columns (another task: --task)")


def _one(candidates: Sequence[str], role: str, flag_hint: str, where: str, none: str) -> str:
    """The one candidate for ``role``, or a DataError that asks (several) or says what is missing (none)."""
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(f"{where}: {none} Say which with {flag_hint}.")
    count = {2: "two", 3: "three"}.get(len(candidates), str(len(candidates)))
    raise DataError(
        f"{where}: {count} columns could be the {role}: {', '.join(candidates)}. Say which with {flag_hint}."
    )


def _listing(columns: dict[str, Column]) -> str:
    return "columns are: " + ", ".join(map(str, columns.values())) + "."


def _tc_columns(ds, columns: dict[str, Column], given: dict[str, Any], roles: Roles, where: str) -> None:
    label = given.get("label_column")
    if label:
        roles.set("label_column", label, "--label-column")
    else:
        multi = {c.name for c in columns.values() if c.kind == LIST and _few_items(ds, c.name)}
        candidates = [c.name for c in columns.values() if c.kind in (LABEL, SCORE) or c.name in multi]
        label = _one(
            candidates,
            "label",
            "--label-column",
            where,
            "no column looks like a label (few distinct values: class names or ids; numbers for regression; "
            f"lists of names for multi-label); {_listing(columns)}",
        )
        roles.set("label_column", label, f"the one label-like column: {columns[label]}")
    texts = [c.name for c in columns.values() if c.kind == TEXT and c.name != label]
    text, pair = given.get("text_column"), given.get("text_pair_column")
    single = pair == "none"  # `--text-pair-column none`: one text, even where two look like text
    pair = None if single else pair
    if pair:
        roles.set("text_pair_column", pair, "--text-pair-column")
    if text:
        roles.set("text_column", text, "--text-column")
    else:
        pool = [t for t in texts if t != pair]
        if len(pool) == 2 and not pair and not single:
            text, pair = pool
            roles.set("text_column", text, f"the first of two text columns (file order): {columns[text]}")
            roles.set(
                "text_pair_column",
                pair,
                f"the second text column: {columns[pair]}. Sentence pairs; swap them with --text-column and "
                "--text-pair-column, or use one text with --text-pair-column none",
            )
        text = text or _one(
            pool,
            "text",
            "--text-column and --text-pair-column (none: one text only)"
            if len(pool) > 2
            else "--text-column",
            where,
            f"no column looks like text (strings with many distinct values and several words); {_listing(columns)}",
        )
        roles.fields.setdefault("text_column", text)
        roles.why.setdefault("text_column", f"the text column: {columns[text]}")
    if single:
        roles.set("text_pair_column", None, "--text-pair-column none: one text only")
    elif not pair:
        others = [t for t in texts if t != text]
        if others:
            other = _one(
                others, "second text of a pair", "--text-pair-column (none: one text only)", where, ""
            )
            roles.set(
                "text_pair_column",
                other,
                f"the other text column: {columns[other]}. Sentence pairs; one text only: --text-pair-column none",
            )


def _few_items(ds, column: str) -> bool:
    """Whether a list-of-strings column holds few distinct items (the labels of multi-label rows)."""
    items = {x for v in ds.select(sample_rows(len(ds)))[column] if v for x in v}
    return 1 <= len(items) <= min(LABEL_MAX, max(2, len(ds) // 2))


def _word_tag_pairs(ds, columns: dict[str, Column]) -> list[tuple[str, str]]:
    """(words, tags) column pairs: lists of strings of equal length per row, the tags all IOB."""
    lists = [c.name for c in columns.values() if c.kind == LIST]
    if len(lists) < 2:
        return []
    view = ds.select(sample_rows(len(ds)))
    values = {name: list(view[name]) for name in lists}
    iob = {name: all(_IOB.match(x) for v in values[name] if v for x in v) for name in lists}
    return [
        (words, tags)
        for tags in lists
        for words in lists
        if words != tags
        and iob[tags]
        and not iob[words]
        and all(len(a or []) == len(b or []) for a, b in zip(values[words], values[tags]))
    ]


def _ner_columns(ds, columns: dict[str, Column], given: dict[str, Any], roles: Roles, where: str) -> None:
    pairs = _word_tag_pairs(ds, columns)
    words, tags = given.get("tokens_column"), given.get("tags_column")
    pairs = [(w, t) for w, t in pairs if (not words or w == words) and (not tags or t == tags)]
    if words and tags:
        pairs = [(words, tags)]
    if not pairs:
        lists = [str(c) for c in columns.values() if c.kind == LIST]
        raise DataError(
            f"{where}: token classification needs a column of words and a column of IOB tags (O, B-TYPE, "
            "I-TYPE) with one tag per word, as lists of strings (JSON Lines, Parquet) or a CoNLL file; "
            f"found {', '.join(lists) or 'no list columns'}. Name them with --tokens-column and --tags-column."
        )
    if len({w for w, _ in pairs}) > 1:
        _one(sorted({w for w, _ in pairs}), "words", "--tokens-column", where, "")
    if len({t for _, t in pairs}) > 1:
        _one(sorted({t for _, t in pairs}), "tags", "--tags-column", where, "")
    words, tags = pairs[0]
    roles.set(
        "tokens_column",
        words,
        "--tokens-column" if given.get("tokens_column") else f"words: {columns[words]}",
    )
    roles.set(
        "tags_column", tags, "--tags-column" if given.get("tags_column") else f"IOB tags: {columns[tags]}"
    )


def _qa_columns(ds, columns: dict[str, Column], given: dict[str, Any], roles: Roles, where: str) -> None:
    answers = given.get("answers_column") or _one(
        [c.name for c in columns.values() if c.kind == ANSWERS],
        "answers",
        "--answers-column",
        where,
        "no column holds SQuAD-style answers ({text: [...], answer_start: [...]}).",
    )
    why = "--answers-column" if given.get("answers_column") else f"SQuAD-style answers: {columns[answers]}"
    roles.set("answers_column", answers, why)
    strings = [n for n in columns if n != answers and getattr(ds.features[n], "dtype", "") == "string"]
    context = given.get("context_column")
    if context:
        roles.set("context_column", context, "--context-column")
    else:
        holding = [n for n in strings if _answers_inside(ds, n, answers)]
        context = _one(
            holding,
            "context",
            "--context-column",
            where,
            "no text column holds the answers at their answer_start offsets.",
        )
        roles.set("context_column", context, "the column the answers are found in, at their answer_start")
    question = given.get("question_column")
    if question:
        roles.set("question_column", question, "--question-column")
    else:
        named = [n for n in strings if n.lower() == "question"]
        pool = named or [n for n in strings if n != context and columns[n].kind == TEXT]
        question = _one(pool, "question", "--question-column", where, "no column looks like the questions.")
        roles.set("question_column", question, f"the questions: {columns[question]}")
    ids = [n for n in columns if n.lower() == "id"]
    why = "question ids, for error messages" if ids else "no id column: error messages name rows by number"
    roles.set("id_column", ids[0] if ids else None, why)


def _answers_inside(ds, column: str, answers: str) -> bool:
    """Whether ``column`` holds the answers' texts at their answer_start offsets (in 9 of 10 answered rows)."""
    view = ds.select(sample_rows(len(ds), 500))
    hits = total = 0
    for text, answer in zip(view[column], view[answers]):
        texts, starts = (answer or {}).get("text") or [], (answer or {}).get("answer_start") or []
        if not texts or text is None:
            continue
        total += 1
        hits += all(
            isinstance(s, int) and text[s : s + len(t)] == t for t, s in zip(texts, starts, strict=False)
        )
    return total > 0 and hits >= 0.9 * total
