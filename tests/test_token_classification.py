"""Token classification: subword alignment, tag checks, training a tiny BERT, entity spans."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import FinetuneError
from hf_finetune.inference import evaluate_output, predict_output
from hf_finetune.labels import SINGLE, LabelSchema
from hf_finetune.pipeline import prepare, train, validate
from hf_finetune.tasks.words import align_labels, split_words, windows

from .conftest import minilm_path, tiny_recipe, train_fails, write_jsonl

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
FIRST = ["alice", "bob", "carol", "angela", "pedro", "yuki"]
LAST = ["merkel", "okonkwo", "smith", "nakamura", "jones", "fernandez"]  # several split into subwords
CITIES = ["paris", "london", "berlin", "madrid", "lagos", "kyoto"]
FILLER = ["the", "a", "said", "on", "monday", "visited", "met", "in", "report", "today", "and", "team"]


def ner_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        tags = ["O"] * len(words)
        person = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.6 else [])
        at = rng.randint(0, len(words))
        words[at:at] = person
        tags[at:at] = ["B-PER"] + ["I-PER"] * (len(person) - 1)
        at = rng.choice([j for j in range(len(words) + 1) if j <= at or j >= at + len(person)])
        words.insert(at, rng.choice(CITIES))
        tags.insert(at, "B-LOC")
        rows.append({"id": f"s{i}", "tokens": words, "ner_tags": tags})
    return rows


def ner_recipe(model_dir, files, output_dir, **task) -> dict:
    """The tiny-model recipe of conftest with a token-classification task; no eval split without a file."""
    recipe = tiny_recipe(
        model_dir, files, output_dir, data={"eval_split": "validation" if "validation" in files else None}
    )
    recipe["task"] = {"name": "token-classification", **task}
    return recipe


@pytest.fixture()
def ner_files(tmp_path) -> dict[str, str]:
    return {
        "train": str(write_jsonl(tmp_path / "train.jsonl", ner_rows(60, seed=1))),
        "validation": str(write_jsonl(tmp_path / "validation.jsonl", ner_rows(20, seed=2))),
    }


# ------------------------------------------------------------------------------------------------ alignment
def test_align_labels_first_subword_only_and_label_all_tokens():
    word_ids = [None, 0, 1, 1, 1, 2, None]
    tags = [3, 1, 0]  # B-PER, B-LOC (three subwords), O
    continuation = {0: 0, 1: 2, 2: 2, 3: 4, 4: 4}  # B-X -> I-X
    assert align_labels(word_ids, tags) == [-100, 3, 1, -100, -100, 0, -100]
    assert align_labels(word_ids, tags, continuation) == [-100, 3, 1, 2, 2, 0, -100]


def test_preprocess_aligns_tags_to_subwords(tiny_model_dir, tmp_path):
    rows = [
        {
            "id": "a",
            "tokens": ["Angela", "Merkel", "visited", "Okonkwo"],
            "ner_tags": ["B-PER", "I-PER", "O", "B-PER"],
        }
    ]
    files = {
        "train": str(write_jsonl(tmp_path / "t.jsonl", rows)),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", rows)),
    }
    for label_all in (False, True):
        prepared = prepare(
            load_recipe(ner_recipe(tiny_model_dir, files, tmp_path / "o", label_all_tokens=label_all))
        )
        task, tok = prepared.task, prepared.tokenizer
        out = task.preprocess(prepared.raw, tok)
        ids = task.labels.label2id
        pieces = tok.convert_ids_to_tokens(out["train"][0]["input_ids"])
        assert pieces[2:4] == ["mer", "##kel"] and len(pieces) > 7  # Merkel and Okonkwo are split
        labels = out["train"][0]["labels"]
        expected_train = [-100, ids["B-PER"], ids["I-PER"]]
        continuation_of = {"I-PER": ids["I-PER"], "B-PER": ids["I-PER"]} if label_all else {}
        expected_train.append(continuation_of.get("I-PER", -100))  # ##kel
        expected_train.append(ids["O"])
        expected_train.append(ids["B-PER"])  # first piece of okonkwo
        tail = labels[len(expected_train) : -1]  # the other pieces of okonkwo
        assert labels[: len(expected_train)] == expected_train and labels[-1] == -100
        assert tail and all(t == (ids["I-PER"] if label_all else -100) for t in tail)  # B- becomes I-
        # evaluation is per word: only first subwords carry a tag, whatever label_all_tokens says
        scored = [t for t in out["validation"][0]["labels"] if t != -100]
        assert scored == [ids[t] for t in rows[0]["ner_tags"]]


def test_windows_cover_every_word_with_overlap():
    counts = [1, 3, 1, 2, 1, 1, 4, 1, 1, 2]
    spans = windows(counts, budget=6)
    assert spans[0][0] == 0 and spans[-1][1] == len(counts)
    for a, b in spans:
        assert sum(counts[a:b]) <= 6
    for (a1, b1), (a2, _) in zip(spans, spans[1:]):
        assert a1 < a2 <= b1  # moves forward, no gap
    assert windows(counts, budget=100) == [(0, len(counts))]
    assert windows([9, 1], budget=4) == [(0, 1), (1, 2)]  # an over-long word gets a window of its own
    assert windows([1, 1, 1, 1, 9, 1], budget=4) == [(0, 4), (4, 5), (5, 6)]  # no window repeats another


def test_split_words_offsets():
    text = "Angela  Merkel's U.S. trip, 1996-08-22 (EU)."
    words = split_words(text)
    assert [w for w, _, _ in words] == [
        "Angela",
        "Merkel",
        "'s",
        "U.S.",
        "trip",
        ",",
        "1996-08-22",
        "(",
        "EU",
        ")",
        ".",
    ]
    assert all(text[s:e] == w for w, s, e in words)
    assert [w for w, _, _ in split_words("Paris.Then Berlin,London 3.5 1,000 Merkel\u2019s")] == [
        "Paris",
        ".",
        "Then",
        "Berlin",
        ",",
        "London",
        "3.5",
        "1,000",
        "Merkel",
        "\u2019s",
    ]


# ------------------------------------------------------------------------------------------------ bad input
def _with_row(tmp_path, row: dict, **task):
    rows = ner_rows(10, seed=3) + [row]
    files = {
        "train": str(write_jsonl(tmp_path / "bad.jsonl", rows)),
        "validation": str(write_jsonl(tmp_path / "ok.jsonl", ner_rows(5, seed=5))),
    }
    return files, task


def test_length_mismatch_names_the_example(capsys, no_weights, tiny_model_dir, tmp_path):
    files, _ = _with_row(tmp_path, {"id": "x-17", "tokens": ["EU", "rejects"], "ner_tags": ["B-ORG"]})
    train_fails(
        capsys,
        ner_recipe(tiny_model_dir, files, tmp_path / "o", labels=TAGS + ["B-ORG", "I-ORG"]),
        tmp_path,
        "`task.tags_column`: example id x-17 (row 10) in the train split has 2 tokens but 1 tags",
    )


def test_tag_outside_the_label_list(capsys, no_weights, tiny_model_dir, tmp_path):
    files, _ = _with_row(tmp_path, {"id": "x-3", "tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]})
    train_fails(
        capsys,
        ner_recipe(tiny_model_dir, files, tmp_path / "o", labels=TAGS),
        tmp_path,
        "`task.labels`: tag 'B-ORG' of token 0 ('EU'), example id x-3 (row 10) in the train split, is not in "
        "the label list [O, B-LOC, I-LOC, B-PER, I-PER]",
    )


def test_validation_tag_type_unseen_in_training(capsys, no_weights, tiny_model_dir, tmp_path, ner_files):
    write_jsonl(tmp_path / "validation.jsonl", [{"id": "v1", "tokens": ["EU"], "ner_tags": ["B-ORG"]}])
    train_fails(
        capsys,
        ner_recipe(tiny_model_dir, ner_files, tmp_path / "o"),
        tmp_path,
        "tag 'B-ORG' of token 0 ('EU'), example id v1",
    )


def test_strict_mode_rejects_an_i_tag_that_starts_an_entity(capsys, no_weights, tiny_model_dir, tmp_path):
    row = {"id": "x-9", "tokens": ["in", "Paris"], "ner_tags": ["O", "I-LOC"]}
    files, _ = _with_row(tmp_path, row)
    recipe = ner_recipe(tiny_model_dir, files, tmp_path / "o", strict=True)
    train_fails(
        capsys,
        recipe,
        tmp_path,
        "`task.strict`: token 1 ('Paris'), example id x-9 (row 10) in the train split, is tagged I-LOC after O",
    )
    recipe["task"]["strict"] = False  # IOB1 is accepted when not strict
    assert validate(load_recipe(recipe))["labels"] == TAGS


def test_missing_tags(capsys, no_weights, tiny_model_dir, tmp_path):
    files, _ = _with_row(tmp_path, {"id": "x-8", "tokens": ["EU"], "ner_tags": None})
    train_fails(
        capsys,
        ner_recipe(tiny_model_dir, files, tmp_path / "o"),
        tmp_path,
        "`task.tags_column`: example id x-8 (row 10) in the train split has no tags",
    )


def test_byte_level_bpe_tokenizer_is_reloaded_with_a_prefix_space(
    no_weights, tiny_model_dir, tmp_path, ner_files
):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [" ".join(FILLER + FIRST + CITIES)] * 5,
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
    )
    bpe.save_model(str(tmp_path))
    RobertaTokenizer(
        vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt")
    ).save_pretrained(tmp_path / "bpe")
    recipe = ner_recipe(tiny_model_dir, ner_files, tmp_path / "o")
    recipe["model"]["tokenizer_name_or_path"] = str(tmp_path / "bpe")
    prepared = prepare(load_recipe(recipe))
    assert prepared.tokenizer.add_prefix_space is True


def test_empty_token_list(capsys, no_weights, tiny_model_dir, tmp_path):
    files, _ = _with_row(tmp_path, {"id": "x-5", "tokens": [], "ner_tags": []})
    train_fails(
        capsys,
        ner_recipe(tiny_model_dir, files, tmp_path / "o"),
        tmp_path,
        "`task.tokens_column`: example id x-5 (row 10) in the train split has an empty token list",
    )


def test_text_instead_of_words(capsys, no_weights, tiny_model_dir, tmp_path):
    files = {
        "train": str(
            write_jsonl(tmp_path / "t.jsonl", [{"tokens": "EU rejects", "ner_tags": ["B-ORG", "O"]}])
        )
    }
    train_fails(
        capsys,
        ner_recipe(tiny_model_dir, files, tmp_path / "o"),
        tmp_path,
        "column 'tokens' in the train split holds string values, not lists of words",
    )


def test_integer_tags_need_names(capsys, no_weights, tiny_model_dir, tmp_path):
    files = {"train": str(write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["EU"], "ner_tags": [3]}]))}
    recipe = ner_recipe(tiny_model_dir, files, tmp_path / "o")
    train_fails(
        capsys, recipe, tmp_path, "`task.labels`: column 'ner_tags' holds integer tag ids without names"
    )
    recipe["task"]["labels"] = ["O", "B-ORG", "I-ORG", "B-MISC"]
    assert validate(load_recipe(recipe))["labels"] == ["O", "B-ORG", "I-ORG", "B-MISC"]


def test_recipe_labels_must_be_iob(capsys, no_weights, tiny_model_dir, tmp_path, ner_files):
    recipe = ner_recipe(tiny_model_dir, ner_files, tmp_path / "o", labels=["O", "PER", "E-LOC"])
    train_fails(capsys, recipe, tmp_path, "`task.labels`: 'PER', 'E-LOC' are not IOB tags")


def test_slow_tokenizer_is_a_clear_error(capsys, no_weights, tiny_model_dir, tmp_path, ner_files):
    from transformers import BertTokenizerLegacy

    slow = tmp_path / "slow-tokenizer"
    BertTokenizerLegacy(vocab_file=str(minilm_path() / "vocab.txt")).save_pretrained(slow)
    recipe = ner_recipe(tiny_model_dir, ner_files, tmp_path / "o")
    recipe["model"]["tokenizer_name_or_path"] = str(slow)
    train_fails(
        capsys,
        recipe,
        tmp_path,
        "`model.tokenizer_name_or_path`: token-classification needs a fast tokenizer",
    )


def test_classlabel_tags_take_their_names_from_the_feature(no_weights, tiny_model_dir, tmp_path):
    """Hub conll2003 stores tags as ClassLabel ids; parquet keeps the feature, as the Hub's files do."""
    import datasets

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=names)),
        }
    )
    rows = ner_rows(12, seed=4)
    ds = datasets.Dataset.from_list(
        [{**r, "ner_tags": [names.index(t) for t in r["ner_tags"]]} for r in rows], features=features
    )
    ds.to_parquet(tmp_path / "train.parquet")
    summary = validate(
        load_recipe(ner_recipe(tiny_model_dir, {"train": str(tmp_path / "train.parquet")}, tmp_path / "o"))
    )
    assert summary["labels"] == names


def test_script_dataset_falls_back_to_the_parquet_export(monkeypatch):
    import datasets

    from hf_finetune.config import DataConfig
    from hf_finetune.data import PARQUET_EXPORT, load_splits

    calls = []

    def fake_load(path, name=None, split=None, revision=None, **kwargs):
        calls.append(revision)
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found conll2003.py")
        return datasets.Dataset.from_dict({"tokens": [["EU"]], "ner_tags": [["B-ORG"]]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    raw, source = load_splits(DataConfig(dataset="conll2003", mirror=None), ["train"])
    assert source.kind == "hub" and calls == [None, PARQUET_EXPORT] and len(raw["train"]) == 1


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def trained_ner(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    files = {
        "train": str(write_jsonl(root / "train.jsonl", ner_rows(480, seed=1))),
        "validation": str(write_jsonl(root / "validation.jsonl", ner_rows(120, seed=2))),
    }
    metrics = train(load_recipe(ner_recipe(tiny_model_dir, files, root / "out")))
    return root / "out", metrics, files


def test_tiny_bert_learns_entities(trained_ner):
    out, metrics, _ = trained_ner
    assert metrics["eval_f1"] >= 0.9, metrics
    assert metrics["eval_PER_f1"] >= 0.85 and metrics["eval_LOC_f1"] >= 0.85, metrics
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert sum(losses[-2:]) / 2 < 0.3 * sum(losses[:2]) / 2, losses
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["label2id"]) == sorted(TAGS)
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_f1", "eval_precision", "eval_recall", "eval_accuracy", "eval_PER_f1", "eval_LOC_f1"} <= set(
        results
    )


def test_eval_reproduces_the_training_figures(trained_ner):
    out, metrics, _ = trained_ner
    again = evaluate_output(out)
    assert again["eval_f1"] == pytest.approx(metrics["eval_f1"], abs=1e-9)
    assert (out / "eval_validation_results.json").is_file()


def test_predict_writes_entity_spans(trained_ner, tmp_path):
    out, _, _ = trained_ner
    lines = [
        {"text": "Today  Angela Merkel visited Paris."},
        {"tokens": ["bob", "smith", "met", "the", "team", "in", "kyoto"]},
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    assert cli.main(["predict", str(out), "--input", str(path), "--output", str(tmp_path / "out.jsonl")]) == 0
    first, second = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    text = lines[0]["text"]
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in first["entities"]] == [
        ("Angela Merkel", "PER", 7, 20),
        ("Paris", "LOC", 29, 34),
    ]
    assert all(text[e["start"] : e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in first["entities"])
    assert second["text"] == "bob smith met the team in kyoto"  # offsets refer to the words joined by spaces
    assert second["tags"] == ["B-PER", "I-PER", "O", "O", "O", "O", "B-LOC"]
    assert [(e["text"], e["start"], e["end"]) for e in second["entities"]] == [
        ("bob smith", 0, 9),
        ("kyoto", 26, 31),
    ]


def test_eval_maps_classlabel_ids_by_name(trained_ner, tmp_path):
    """Data whose ClassLabel orders the tags differently from the saved model is read by name."""
    import datasets

    out, metrics, files = trained_ner
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]  # the model's order is O, B-LOC, I-LOC, B-PER, I-PER
    rows = [json.loads(line) for line in open(files["validation"])]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=names)),
        }
    )
    data = [{**r, "ner_tags": [names.index(t) for t in r["ner_tags"]]} for r in rows]
    datasets.Dataset.from_list(data, features=features).to_parquet(tmp_path / "validation.parquet")
    again = evaluate_output(
        out,
        overrides=[f"data.files={{train: {files['train']}, validation: {tmp_path / 'validation.parquet'}}}"],
    )
    assert again["eval_f1"] == pytest.approx(metrics["eval_f1"], abs=1e-9)
    assert again["eval_PER_number"] == metrics["eval_PER_number"]


def test_predict_input_needs_text_or_tokens(trained_ner, tmp_path, capsys):
    out, _, _ = trained_ner
    path = write_jsonl(tmp_path / "in.jsonl", [{"sentence": "hello"}])
    code = cli.main(["predict", str(out), "--input", str(path), "--output", str(tmp_path / "o.jsonl")])
    assert (
        code == 2
        and "line 1: needs 'text' (raw text) or 'tokens' (a list of words)" in capsys.readouterr().err
    )
    with pytest.raises(FinetuneError, match="token 1 'Paris' does not occur in 'text'"):
        predict_output(
            out,
            write_jsonl(tmp_path / "b.jsonl", [{"text": "Berlin", "tokens": ["Berlin", "Paris"]}]),
            tmp_path / "x",
        )


# ------------------------------------------------------------------------------------------------ exact offsets
class LookupModel(torch.nn.Module):
    """Tags each subword by a fixed table (no context), and records the longest input it saw."""

    def __init__(self, table: dict[int, int], vocab_size: int, num_labels: int, outside: int):
        super().__init__()
        weights = torch.full((vocab_size, num_labels), -10.0)
        weights[:, outside] = 10.0
        for token, label in table.items():
            weights[token] = -10.0
            weights[token, label] = 10.0
        self.table = torch.nn.Parameter(weights, requires_grad=False)
        self.longest = 0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        self.longest = max(self.longest, input_ids.shape[1])
        return SimpleNamespace(logits=self.table[input_ids])


@pytest.mark.parametrize("max_seq_length", [64, 8])
def test_predict_offsets_with_a_lookup_model(tiny_model_dir, ner_files, tmp_path, max_seq_length):
    from transformers import AutoTokenizer

    from hf_finetune.pipeline import make_task

    recipe = load_recipe(
        ner_recipe(tiny_model_dir, ner_files, tmp_path / "o"), [f"data.max_seq_length={max_seq_length}"]
    )
    task = make_task(recipe)
    task.labels = LabelSchema(SINGLE, TAGS)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = tok.get_vocab()
    table = {vocab["angela"]: 3, vocab["mer"]: 4, vocab["new"]: 1, vocab["york"]: 2, vocab["lagos"]: 1}
    model = LookupModel(table, len(vocab), len(TAGS), outside=0)
    filler = "the report said that " * 4
    text = f"{filler}Angela  Merkel met officials in New York, {filler}then Lagos."
    [result] = task.predict(model, tok, [{"text": text}], batch_size=2)
    spans = [(e["text"], e["label"], e["start"], e["end"]) for e in result["entities"]]
    start = len(filler)
    assert spans == [
        ("Angela  Merkel", "PER", start, start + 14),
        ("New York", "LOC", text.index("New York"), text.index("New York") + 8),
        ("Lagos", "LOC", text.index("Lagos"), text.index("Lagos") + 5),
    ]
    assert all(e["score"] > 0.99 for e in result["entities"])
    assert model.longest <= max_seq_length  # long text was read in windows, never truncated
