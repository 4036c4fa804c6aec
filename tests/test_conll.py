"""CoNLL column files: sentences, -DOCSTART-, extra columns, tabs, and clear errors."""

from __future__ import annotations

import pytest

from hf_finetune.config import DataConfig
from hf_finetune.conll import read_conll
from hf_finetune.data import load_splits
from hf_finetune.errors import DataError

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O
BRUSSELS NNP B-NP B-LOC
"""


def test_reader_splits_sentences_and_skips_docstart(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL)
    rows = read_conll([str(path)], "data.files.train")
    assert rows["tokens"] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert rows["ner_tags"] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert rows["id"] == ["train.conll:3", "train.conll:7", "train.conll:10"]  # file:line of the first token


def test_reader_tabs_keep_tokens_with_spaces_and_files_concatenate(tmp_path):
    first = tmp_path / "a.txt"
    first.write_text("New York\tB-LOC\nis\tO\n\n\n")
    second = tmp_path / "b.txt"
    second.write_text("Paris I-LOC\r\n")  # CRLF and IOB1 are fine for the reader
    rows = read_conll([str(first), str(second)], "data.files.train")
    assert rows["tokens"] == [["New York", "is"], ["Paris"]]
    assert rows["ner_tags"] == [["B-LOC", "O"], ["I-LOC"]]


def test_reader_names_the_file_and_line_of_a_tagless_token(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(
        DataError, match=r"`data.files.train`: .*train.conll line 2: expected a token and a tag"
    ):
        read_conll([str(path)], "data.files.train")


def test_reader_rejects_non_utf8(tmp_path):
    path = tmp_path / "train.conll"
    path.write_bytes("Müller B-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_conll([str(path)], "data.files.train")


def test_conll_files_load_as_splits(tmp_path):
    (tmp_path / "train.conll").write_text(CONLL)
    (tmp_path / "dev.txt").write_text("Paris B-LOC\n")
    cfg = DataConfig(files={"train": str(tmp_path / "train.conll"), "validation": str(tmp_path / "dev.txt")})
    raw, source = load_splits(cfg, ["train", "validation"])
    assert source.kind == "files"
    assert raw["train"].column_names == ["id", "tokens", "ner_tags"]
    assert len(raw["train"]) == 3 and raw["validation"][0]["tokens"] == ["Paris"]


def test_reader_skips_a_byte_order_mark(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("\ufeff-DOCSTART- -X- O\n\nEU B-ORG\n", encoding="utf-8")
    rows = read_conll([str(path)], "data.files.train")
    assert rows["tokens"] == [["EU"]] and rows["id"] == ["train.conll:3"]
