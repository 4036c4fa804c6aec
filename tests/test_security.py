"""Safe loading and no leaked secrets: pickle weights only on request (remote code: the bad-input matrix,
row needs-remote-code), and a token in the environment never reaches a log, recipe.yaml, the model card or any output file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file

from hf_finetune import cli
from hf_finetune.config.load import load_recipe
from hf_finetune.pipeline import train

from .conftest import REPO, tiny_recipe, write_recipe

FAKE_TOKEN = "hf_FAKEtoken0123456789abcdefghijklmnopq"


def pickle_only_copy(model_dir, target):
    """The tiny model with its weights as pytorch_model.bin (a pickle) and no safetensors."""
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(model_dir / "model.safetensors"), target / "pytorch_model.bin")
    return target


def test_pickle_weights_need_allow_pickle(tiny_model_dir, sentiment_files, tmp_path, capsys):
    model = pickle_only_copy(tiny_model_dir, tmp_path / "pickled")
    recipe = tiny_recipe(
        model, sentiment_files, tmp_path / "out", training={"max_steps": 2, "eval_strategy": "no"}
    )
    code = cli.main(["train", write_recipe(tmp_path / "r.yaml", recipe)])
    assert code == 2 and "`model.allow_pickle`" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    recipe["model"]["allow_pickle"] = True
    train(load_recipe(recipe))
    # the pickled encoder weights were the ones trained from: an embedding row no batch touched is unchanged
    saved = load_file(tmp_path / "out" / "model.safetensors")
    original = load_file(tiny_model_dir / "model.safetensors")
    unused = original["embeddings.word_embeddings.weight"][-1]
    assert torch.equal(saved["bert.embeddings.word_embeddings.weight"][-1], unused)


def test_hub_checkpoints_load_with_safetensors_only(
    tiny_model_dir, sentiment_files, tmp_path, capsys, hf_cache
):
    """A Hub id whose cached snapshot holds only pytorch_model.bin is refused unless allow_pickle; the same
    weights as model.safetensors load. Real snapshots in this session's temporary Hub cache, no mocks."""
    from hf_finetune.bundled import seed_cache

    pickled = seed_cache("acme/tiny-bert-pickled", pickle_only_copy(tiny_model_dir, tmp_path / "p"))
    assert (pickled / "pytorch_model.bin").is_file() and not list(pickled.glob("*.safetensors"))
    safe = seed_cache("acme/tiny-bert-safe", tiny_model_dir)
    assert pickled.is_relative_to(hf_cache) and safe.is_relative_to(hf_cache)
    training = {"max_steps": 2, "eval_strategy": "no"}

    def recipe(name, out, **model):
        recipe = tiny_recipe(name, sentiment_files, tmp_path / out, training=training)
        recipe["model"].update(model)
        return recipe

    code = cli.main(["train", write_recipe(tmp_path / "r.yaml", recipe("acme/tiny-bert-pickled", "refused"))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "`model.allow_pickle`: acme/tiny-bert-pickled has no safetensors weights" in err, err
    assert "set `model.allow_pickle: true` only if you trust the checkpoint" in err
    assert not (tmp_path / "refused").exists()

    original = load_file(tiny_model_dir / "model.safetensors")["embeddings.word_embeddings.weight"][-1]
    for name, out, model in (
        ("acme/tiny-bert-pickled", "pickled", {"allow_pickle": True}),
        ("acme/tiny-bert-safe", "safe", {}),
    ):
        train(load_recipe(recipe(name, out, **model)))
        saved = load_file(tmp_path / out / "model.safetensors")
        # the snapshot's weights were the ones trained from: an embedding row no batch touched is unchanged
        assert torch.equal(saved["bert.embeddings.word_embeddings.weight"][-1], original), name


def test_no_token_in_logs_recipe_card_or_outputs(tiny_model_dir, sentiment_files, tmp_path):
    """A fake HF_TOKEN in the environment: train (with a checkpoint), dry-run push, then grep everything."""
    out = tmp_path / "out"
    recipe = tiny_recipe(
        tiny_model_dir,
        sentiment_files,
        out,
        training={
            "max_steps": 4,
            "save_strategy": "steps",
            "save_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 2,
        },
        hub={"repo_id": "me/tiny"},
    )
    path = write_recipe(tmp_path / "r.yaml", recipe)
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "PYTHONPATH": str(REPO)}
    logs = []
    for argv in (["-v", "train", path], ["push", str(out), "--repo-id", "me/tiny", "--dry-run"]):
        proc = subprocess.run(
            [sys.executable, "-m", "hf_finetune", *argv], capture_output=True, text=True, env=env, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs.append(proc.stdout + proc.stderr)
    assert (out / "README.md").is_file() and (out / "checkpoint-2" / "recipe.yaml").is_file()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 20
    leaks = [str(p) for p in files if FAKE_TOKEN.encode() in p.read_bytes()]
    assert not leaks and not any(FAKE_TOKEN in log for log in logs)
    assert FAKE_TOKEN[3:15] not in "".join(logs)  # not even in part
    assert json.loads((out / "all_results.json").read_text())  # a real output was scanned
