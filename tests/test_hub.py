"""Offline is a normal mode: an unreachable Hub switches to the cache at once; bundled models seed it."""

from __future__ import annotations

import pytest

from hf_finetune import hub
from hf_finetune.bundled import seed_cache

from .conftest import MINILM, minilm_path


def test_unreachable_hub_switches_to_offline(monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setattr(hub, "_PROBED", None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub.ensure_hub_mode() is True
    assert constants.HF_HUB_OFFLINE is True
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_explicit_online_setting_is_respected(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "_PROBED", None)
    assert hub.ensure_hub_mode() is False
    assert hub._PROBED is None  # no probe was made


def test_seeded_cache_resolves_the_hub_id_offline(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    snapshot = seed_cache(MINILM, minilm_path(), cache_dir=str(tmp_path))
    assert (snapshot / "model.safetensors").is_file()
    assert seed_cache(MINILM, minilm_path(), cache_dir=str(tmp_path)) == snapshot  # idempotent
    config = AutoConfig.from_pretrained(MINILM, cache_dir=str(tmp_path))
    assert config.model_type == "bert" and config.num_hidden_layers == 6
    assert AutoTokenizer.from_pretrained(MINILM, cache_dir=str(tmp_path)).is_fast


def test_missing_model_is_a_clear_error():
    from hf_finetune.config.load import load_recipe
    from hf_finetune.errors import RecipeError
    from hf_finetune.loading import load_model_config

    recipe = load_recipe(
        {
            "task": "text-classification",
            "data": {"dataset": "x"},
            "model": {"name_or_path": "nobody/no-such-model-xyz"},
        }
    )
    with pytest.raises(
        RecipeError, match=r"`model.name_or_path`: could not load a model config from 'nobody/no-such"
    ):
        load_model_config(recipe, {})
