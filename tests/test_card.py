"""Model cards and Hub pushes, offline: card metadata round-trips through `huggingface_hub`, `--dry-run` lists
the upload, and a push goes through `huggingface_hub` to a recording HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_finetune import cli
from hf_finetune.bundled import seed_cache
from hf_finetune.card import build_card, hub_base_model
from hf_finetune.config.load import load_recipe
from hf_finetune.pipeline import train
from hf_finetune.publish import upload_files

from .conftest import MINILM, REPO, minilm_path, tiny_recipe, write_recipe, write_sentiment_files
from .helpers.fake_hub import FakeHub

FAKE_TOKEN = "hf_FAKEtokenDoNotLeak0123456789"
BASE_ID = "google-bert/bert-base-uncased"


def _recipe(tiny_model_dir, root: Path, out: Path, **sections) -> dict:
    recipe = tiny_recipe(tiny_model_dir, write_sentiment_files(root), out, **sections)
    recipe["training"].update({"num_train_epochs": 3, "save_strategy": "no"})
    recipe["hub"] = {"license": "apache-2.0", "base_model": BASE_ID, **recipe.get("hub", {})}
    return recipe


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("card-full")
    train(load_recipe(_recipe(tiny_model_dir, root, root / "out")))
    return root / "out"


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("card-lora")
    recipe = _recipe(tiny_model_dir, root, root / "out", peft={"method": "lora", "r": 4})
    recipe["training"]["learning_rate"] = 1e-2
    train(load_recipe(recipe))
    return root / "out"


def test_card_metadata_round_trips_through_huggingface_hub(full_run):
    from huggingface_hub import ModelCard, metadata_load

    card_path = full_run / "README.md"
    meta = metadata_load(card_path)
    assert meta["base_model"] == BASE_ID
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers"
    assert {"hf-finetune", "text-classification"} <= set(meta["tags"])
    assert "datasets" not in meta  # local JSON Lines files: no Hub dataset to name

    results = json.loads((full_run / "all_results.json").read_text())
    card = ModelCard.load(card_path)
    parsed = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert parsed["accuracy"] == pytest.approx(results["eval_accuracy"], abs=1e-6)
    assert all(
        r.task_type == "text-classification" and r.dataset_split == "validation"
        for r in card.data.eval_results
    )

    text = card.text
    for section in (
        "## Strategy",
        "## Trainable parameters",
        "## Training hyperparameters",
        "## Training results",
        "## Usage",
    ):
        assert section in text, section
    assert "full fine-tuning" in text
    assert f"{results['trainable_params']:,} of {results['total_params']:,} parameters" in text
    assert "- learning_rate: 0.003" in text and "- total_train_batch_size: 16" in text
    table = text.split("## Training results")[1].split("##")[0]
    assert (
        len([line for line in table.splitlines() if re.match(r"\| \d+\.\d\d \|", line)]) == 3
    )  # one per epoch
    assert "- transformers " in text  # framework versions


def _run_usage(card_path: Path) -> str:
    code = re.search(r"```python\n(.*?)```", card_path.read_text(), re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(card_path), "exec"), {})
    return out.getvalue()


def test_usage_snippets_run(full_run, lora_run):
    # the full model loads with a plain pipeline; the adapter through PeftModel on its base model
    for run in (full_run, lora_run):
        printed = _run_usage(run / "README.md")
        assert "'label'" in printed and "'score'" in printed, printed
    lora_card = (lora_run / "README.md").read_text()
    assert "PeftModel.from_pretrained" in lora_card and "library_name: peft" in lora_card
    assert "lora (r=4" in lora_card and "peft" in yaml.safe_load(lora_card.split("---")[1])["tags"]


def test_card_base_model_is_a_hub_id_never_a_path(tmp_path, tiny_model_dir, hf_cache):
    # a Hub id stays; a cached snapshot path maps back to its id; a plain local path has none
    assert hub_base_model(MINILM) == MINILM
    snapshot = tmp_path / "hub" / "models--acme--tiny-bert" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert hub_base_model(str(snapshot)) == "acme/tiny-bert"
    assert hub_base_model(str(tiny_model_dir)) is None
    # an hf-finetune output directory used as a base model is traced back to its own base
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": MINILM}}))
    assert hub_base_model(str(run)) == MINILM

    # a run on a Hub base model and Hub dataset: base_model, datasets, and the base model's license
    (run / "recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "task": {"name": "text-classification"},
                "model": {"name_or_path": MINILM},
                "data": {"dataset": "glue", "config": "sst2", "eval_split": "validation"},
                "training": {"learning_rate": 1e-4},
            }
        )
    )
    (run / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.9025, "eval_loss": 0.3}))
    # the license comes from the base model's card in the local Hub cache: this session's temporary one,
    # seeded here from the bundled package (idempotent), whatever ran before and whatever the user has
    seed_cache(MINILM, minilm_path())
    assert hub_cached_card(MINILM).is_relative_to(hf_cache)
    meta = build_card(run, repo_id="me/minilm-sst2").data.to_dict()
    assert meta["base_model"] == MINILM and meta["datasets"] == ["glue"]
    assert meta["license"] == "apache-2.0"  # from all-MiniLM-L6-v2's own card in the local Hub cache
    index = meta["model-index"][0]
    assert index["name"] == "minilm-sst2"
    result = index["results"][0]
    assert result["dataset"]["type"] == "glue" and result["dataset"]["config"] == "sst2"
    assert result["metrics"] == [{"type": "accuracy", "value": 0.9025, "name": "Accuracy"}]

    # another cached base model's card gives its own license; a base model not in the cache gives none
    licensed = tmp_path / "licensed"
    licensed.mkdir()
    (licensed / "README.md").write_text("---\nlicense: mit\n---\n# acme/licensed-bert\n")
    seed_cache("acme/licensed-bert", licensed)
    for base, expected in (("acme/licensed-bert", "mit"), ("acme/not-in-the-cache", None)):
        (run / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": base}}))
        assert build_card(run).data.to_dict().get("license") == expected, base

    # without a Hub id anywhere, base_model is left out rather than written as a path
    (run / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_dir)}}))
    assert "base_model" not in build_card(run).data.to_dict()


def hub_cached_card(repo_id: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "README.md")
    assert isinstance(path, str), f"{repo_id}'s card is not in the Hub cache"
    return Path(path)


def _dry_run(*args: str) -> set[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["push", *args, "--dry-run"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("would upload")
    return {line.split()[0] for line in lines[1:]}


def test_dry_run_lists_exactly_the_files_that_would_be_uploaded(full_run, lora_run, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)  # a dry run needs no token and contacts nothing
    (full_run / "checkpoint-3").mkdir(exist_ok=True)
    (full_run / "checkpoint-3" / "model.safetensors").write_bytes(b"old")
    (full_run / "training_args.bin").write_bytes(b"pickle")
    (full_run / "model.safetensors.partial").write_bytes(b"half")
    listed = _dry_run(str(full_run), "--repo-id", "me/tiny")
    on_disk = {p.name for p in full_run.iterdir() if p.is_file()}
    assert listed == on_disk - {"training_args.bin", "model.safetensors.partial"}
    assert listed == set(upload_files(full_run))
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "tokenizer.json",
        "all_results.json",
    } <= listed

    adapter = _dry_run(str(lora_run), "--repo-id", "me/tiny-lora")
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= adapter
    assert "model.safetensors" not in adapter
    merged = _dry_run(str(lora_run), "--repo-id", "me/tiny-merged", "--merge")
    assert {"model.safetensors", "config.json", "README.md", "recipe.yaml"} <= merged
    assert not {"adapter_model.safetensors", "adapter_config.json"} & merged


def _push_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": FAKE_TOKEN,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp_path / "hf-home"),  # no stored login, no cache writes in the user's home
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture()
def fake_hub():
    hub = FakeHub().start()
    yield hub
    hub.stop()


def _assert_no_token_leak(proc: subprocess.CompletedProcess, *folders: Path) -> None:
    assert FAKE_TOKEN not in proc.stdout and FAKE_TOKEN not in proc.stderr
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_push_uploads_through_huggingface_hub(full_run, fake_hub, tmp_path):
    expected = _dry_run(str(full_run), "--repo-id", "me/tiny")
    cmd = [sys.executable, "-m", "hf_finetune", "push", str(full_run), "--repo-id", "me/tiny", "--private"]
    proc = subprocess.run(
        cmd + ["--revision", "dev"],
        capture_output=True,
        text=True,
        env=_push_env(fake_hub, tmp_path),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pushed" in proc.stdout and "/me/tiny/commit/" in proc.stdout

    create = [r for r in fake_hub.requests if r.path == "/api/repos/create"]
    assert len(create) == 1
    assert create[0].json()["name"] == "tiny" and create[0].json()["organization"] == "me"
    assert create[0].json()["visibility"] == "private"
    assert any("/api/models/me/tiny/branch/dev" in r.path for r in fake_hub.requests)
    assert len(fake_hub.commits) == 1
    commit = fake_hub.commits[0]
    assert commit["repo"] == "me/tiny" and commit["revision"] == "dev"
    assert set(commit["files"]) == expected
    assert commit["files"]["model.safetensors"] == (full_run / "model.safetensors").read_bytes()
    assert commit["files"]["config.json"] == (full_run / "config.json").read_bytes()
    card = commit["files"]["README.md"].decode()
    assert 'pipeline("text-classification", model="me/tiny")' in card  # the card names the target repo
    auth = {r.path: r.headers.get("authorization") for r in fake_hub.requests}
    assert all(value == f"Bearer {FAKE_TOKEN}" for value in auth.values()), auth
    _assert_no_token_leak(proc, full_run)


def test_training_pushes_the_adapter_at_the_end(tiny_model_dir, fake_hub, tmp_path):
    recipe = _recipe(tiny_model_dir, tmp_path, tmp_path / "out", peft={"method": "lora", "r": 4})
    recipe["training"].update({"num_train_epochs": 1})
    recipe["hub"].update({"push": True, "repo_id": "me/tiny-lora"})
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    env = _push_env(fake_hub, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "hf_finetune", "train", path],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (commit,) = fake_hub.commits
    assert commit["repo"] == "me/tiny-lora" and commit["revision"] == "main"
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "recipe.yaml"} <= set(
        commit["files"]
    )
    assert "model.safetensors" not in commit["files"]
    assert (
        commit["files"]["adapter_model.safetensors"]
        == (tmp_path / "out" / "adapter_model.safetensors").read_bytes()
    )
    assert b"library_name: peft" in commit["files"]["README.md"]
    assert set(commit["files"]) == set(upload_files(tmp_path / "out"))
    _assert_no_token_leak(proc, tmp_path / "out")
    assert FAKE_TOKEN not in (tmp_path / "out" / "recipe.yaml").read_text()


def test_push_errors_name_the_fix(full_run, tmp_path, monkeypatch, capsys, tiny_model_dir, no_weights):
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))

    def fails(argv, expected):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err, err

    fails(["push", str(full_run), "--repo-id", "me/tiny"], "HF_HUB_OFFLINE is set")  # tests run offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    fails(["push", str(full_run), "--repo-id", "me/tiny"], "no Hugging Face token")
    fails(["push", str(full_run), "--repo-id", "not a repo"], "--repo-id")
    fails(["push", str(tmp_path), "--repo-id", "me/tiny"], "not an hf-finetune output directory")
    fails(["push", str(full_run), "--repo-id", "me/tiny", "--merge"], "holds a full model")

    # in a recipe: checked when the recipe loads, and the token before any weights load
    recipe = _recipe(tiny_model_dir, tmp_path, tmp_path / "out")
    recipe["hub"]["push"] = True
    fails(["train", write_recipe(tmp_path / "a.yaml", recipe)], "hub.repo_id")
    recipe["hub"]["repo_id"] = "me/tiny"
    fails(["train", write_recipe(tmp_path / "b.yaml", recipe)], "no Hugging Face token")
    recipe["hub"]["merge"] = True
    fails(["train", write_recipe(tmp_path / "c.yaml", recipe)], "hub.merge")
    assert not (tmp_path / "out").exists()
