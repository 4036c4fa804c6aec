"""Users' text files (csv, tsv, json, jsonl, CoNLL): the encoding they are read with, and where one goes wrong.

Files are UTF-8 (a byte-order mark is skipped) unless `data.encoding` names another codec. When a loader has
failed on a file, :func:`first_undecodable` finds its first byte that does not decode and
:func:`first_bad_json_line` the first line of a JSON Lines file that does not parse, so the error names the
line; a file that loads is never scanned.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import RecipeError

CHUNK = 1 << 20
EXCERPT = 40  # characters of the offending line shown either side of the problem


def check_encoding(name: str, field: str) -> str:
    """``name`` if Python has a codec of that name, else a RecipeError for ``field``."""
    try:
        codecs.lookup(name)
    except LookupError:
        raise RecipeError(
            field,
            f"unknown encoding {name!r}; give a Python codec name such as utf-8, latin-1, cp1252 or utf-16.",
        ) from None
    return name


def codec(encoding: str | None) -> str:
    """The codec a file is opened with: UTF-8 skipping a byte-order mark, unless ``encoding`` names another."""
    if encoding is None or codecs.lookup(encoding).name == "utf-8":
        return "utf-8-sig"
    return encoding


def shown(encoding: str | None) -> str:
    return "UTF-8" if encoding is None or codecs.lookup(encoding).name == "utf-8" else encoding


@dataclass
class Undecodable:
    """The first bytes of a file that do not decode: 1-based line, 0-based offset in the file."""

    line: int
    offset: int
    bad: bytes
    reason: str
    excerpt: str


def first_undecodable(path: str | Path, encoding: str | None) -> Undecodable | None:
    """Where ``path`` first fails to decode with ``encoding`` (see :func:`codec`), or None when it all decodes."""
    name = codec(encoding)
    decoder = codecs.getincrementaldecoder(name)()
    read = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK)
            read += len(block)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                # a decoder works on its buffered bytes plus the new block: the object ends at `read`
                offset = read - len(exc.object) + exc.start
                return _locate(path, offset, exc.object[exc.start : exc.end], exc.reason, name)
            if not block:
                return None


def _locate(path: str | Path, offset: int, bad: bytes, reason: str, name: str) -> Undecodable:
    line, start, done = 1, 0, 0  # start: the offset where the bad byte's line begins
    with open(path, "rb") as handle:
        while done < offset:
            block = handle.read(min(CHUNK, offset - done))
            line += block.count(b"\n")
            cut = block.rfind(b"\n")
            if cut >= 0:
                start = done + cut + 1
            done += len(block)
        handle.seek(start)
        text = handle.read(offset - start + 4 * EXCERPT).split(b"\n")[0]
    before = text[: offset - start].decode(name, "replace")
    whole = text.decode(name, "replace").rstrip("\r")
    column = len(before)
    excerpt = whole[max(0, column - EXCERPT) : column + EXCERPT]
    return Undecodable(line, offset, bad, reason, excerpt)


def encoding_message(
    field: str, path: str | Path, problem: Undecodable, encoding: str | None, option: str
) -> str:
    """The error for a file that does not decode; ``option`` is how the user sets the encoding
    (``data.encoding`` in a recipe, ``--encoding`` on `hf-finetune init`)."""
    hexes = " ".join(f"0x{b:02x}" for b in problem.bad[:4])
    as_latin = problem.bad[:1].decode("latin-1")
    hint = f", '{as_latin}' in latin-1" if as_latin.isprintable() and problem.bad[:1] >= b"\xa0" else ""
    where = (
        f"`{field}`: {path} is not {shown(encoding)} text: line {problem.line} (byte {problem.offset} of the file) "
        f"has {hexes}{hint}, which does not decode ({problem.reason}), in {problem.excerpt!r}."
    )
    if option.startswith("--"):
        if encoding is None:
            fix = (
                f"Save the file as UTF-8, or give the encoding it was saved in with {option} (e.g. "
                f"{option} latin-1; cp1252 for Excel on Windows); the recipe keeps it as `data.encoding`."
            )
        else:
            fix = f"Give the encoding it was saved in with {option}, or save the file as UTF-8 and drop {option}."
    elif encoding is None:
        fix = (
            f"Save the file as UTF-8, or set `{option}` to the encoding it was saved in (e.g. "
            f"`{option}: latin-1`; `cp1252` for Excel on Windows)."
        )
    else:
        fix = (
            f"Set `{option}` (now {encoding}) to the encoding the file was saved in, or save the file as UTF-8 "
            f"and remove `{option}`."
        )
    return f"{where} {fix}"


@dataclass
class BadJson:
    """The first line of a JSON (Lines) file that is not one JSON object, and what to do about it."""

    kind: str  # "JSON Lines", or "JSON" for a file that is one document
    line: int
    problem: str  # a predicate: "is not valid JSON (...)"
    excerpt: str
    fix: str


def first_bad_json_line(path: str | Path, encoding: str | None) -> BadJson | None:
    """The first line of ``path`` that is not a JSON object (a file that is one JSON list: where it stops
    parsing), or None when every line is one."""
    per_line = 'Each line must hold one JSON object, such as {"text": "...", "label": "..."}; fix or delete line {n}.'
    with open(path, encoding=codec(encoding), errors="replace", newline="\n") as handle:
        head = handle.read(CHUNK).lstrip()
        handle.seek(0)
        if head.startswith("["):  # one JSON document: a list of objects
            text = handle.read()
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                line = text.split("\n")[exc.lineno - 1]
                problem = f"is not valid JSON ({exc.msg} at column {exc.colno})"
                fix = f"Fix line {exc.lineno}: the file must be one JSON list of objects, or JSON Lines."
                return BadJson("JSON", exc.lineno, problem, _cut(line, exc.colno - 1), fix)
            return None
        first = True
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                if first and _one_document(path, encoding):
                    problem = "starts one JSON object that spans the whole file"
                    fix = "Write one JSON object per line (JSON Lines), or a JSON list of objects."
                    return BadJson("JSON Lines", number, problem, _cut(line, 0), fix)
                problem = f"is not valid JSON ({exc.msg} at column {exc.colno})"
                return BadJson(
                    "JSON Lines",
                    number,
                    problem,
                    _cut(line, exc.colno - 1),
                    per_line.replace("{n}", str(number)),
                )
            first = False
            if not isinstance(value, dict):
                kind = {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
                    type(value), "a number"
                )
                problem = f"holds {kind}, not a JSON object"
                return BadJson(
                    "JSON Lines", number, problem, _cut(line, 0), per_line.replace("{n}", str(number))
                )
    return None


def _one_document(path: str | Path, encoding: str | None) -> bool:
    try:
        json.loads(Path(path).read_text(encoding=codec(encoding), errors="replace"))
    except (json.JSONDecodeError, MemoryError):
        return False
    return True


def _cut(line: str, column: int) -> str:
    line = line.rstrip("\r\n")
    return line[max(0, column - EXCERPT) : column + EXCERPT]
