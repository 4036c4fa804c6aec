"""Strategies: layer discovery on six encoder families, the plan (freezing, LLRD, decay groups), and their
effect on real training runs of a tiny BERT: frozen tensors stay bit-identical, trainable ones move, the
optimizer's group learning rates follow the geometric rule, and gradual unfreezing opens the right layer
at the right epoch or step."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AlbertConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
    TrainerCallback,
    XLMRobertaConfig,
)

from hf_finetune import cli
from hf_finetune.config import GradualUnfreezingConfig, StrategyConfig
from hf_finetune.config.load import load_recipe
from hf_finetune.errors import RecipeError
from hf_finetune.pipeline import train
from hf_finetune.strategies import discover_layout, make_plan
from hf_finetune.strategies.layers import EMBEDDINGS, HEAD, POOLER

from .conftest import tiny_recipe, train_fails, write_recipe
from .helpers import free_port

SIZES = dict(vocab_size=99, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
CONFIGS = {
    "bert": lambda: BertConfig(**SIZES),
    "roberta": lambda: RobertaConfig(**SIZES),
    "distilbert": lambda: DistilBertConfig(vocab_size=99, dim=16, n_layers=3, n_heads=2, hidden_dim=32),
    "deberta-v2": lambda: DebertaV2Config(
        **SIZES, relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm", conv_kernel_size=3
    ),
    "electra": lambda: ElectraConfig(embedding_size=8, **SIZES),
    "xlm-roberta": lambda: XLMRobertaConfig(**SIZES),
}
HEADS = {
    "sequence": (AutoModelForSequenceClassification, ("classifier",)),
    "token": (AutoModelForTokenClassification, ("classifier",)),
    "qa": (AutoModelForQuestionAnswering, ("qa_outputs",)),
}


def build(config, auto_class=AutoModelForSequenceClassification):
    torch.manual_seed(0)
    return auto_class.from_config(config)


# --------------------------------------------------------------------------------------------------
# Layer discovery
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_layout_finds_embeddings_layers_and_head(arch, head):
    auto_class, head_modules = HEADS[head]
    model = build(CONFIGS[arch](), auto_class)
    layout = discover_layout(model)
    assert layout.num_layers == 3 and layout.layer_sharing is None
    names = [n for n, _ in model.named_parameters()]
    assert set(layout.parts) == set(names)  # every parameter has exactly one part
    base = model.base_model_prefix
    for i in range(3):
        members = layout.params_of(f"layer.{i}")
        assert members and all(f".layer.{i}." in n for n in members), members
        # the whole block, nothing less: every parameter of that layer module is in the part
        layer_module = [
            m for n, m in model.named_modules() if n.endswith(f"layer.{i}") and n.startswith(base)
        ][0]
        assert len(members) == len(list(layer_module.parameters()))
    embeddings = layout.params_of(EMBEDDINGS)
    assert any("word_embeddings" in n for n in embeddings)
    assert all(n.startswith(base + ".") for n in embeddings)
    heads = layout.params_of(HEAD)
    assert heads and all(not n.startswith(base + ".") for n in heads)
    assert any(n.split(".")[0] in head_modules for n in heads)
    assert layout.order()[0] == EMBEDDINGS and layout.order()[-1] == HEAD
    if arch == "bert" and head == "sequence":
        assert layout.params_of(POOLER) == ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
    if arch == "deberta-v2":  # relative-position embeddings are shared by every layer: with the embeddings
        assert {"deberta.encoder.rel_embeddings.weight", "deberta.encoder.LayerNorm.weight"} <= set(
            embeddings
        )
    if arch == "electra":
        assert "electra.embeddings_project.weight" in embeddings


def test_layout_works_on_the_meta_device():
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(CONFIGS["bert"]())
    plan = make_plan(model, StrategyConfig(freeze_layers=2), 1e-3, 0.0)
    assert plan.total_params == sum(p.numel() for p in build(CONFIGS["bert"]()).parameters())


@pytest.mark.parametrize(
    "strategy,field",
    [
        (StrategyConfig(freeze_layers=1), "strategy.freeze_layers"),
        (StrategyConfig(layerwise_lr_decay=0.9), "strategy.layerwise_lr_decay"),
        (StrategyConfig(gradual_unfreezing=GradualUnfreezingConfig()), "strategy.gradual_unfreezing"),
    ],
)
def test_albert_shared_layers_refuse_layer_indexed_strategies(strategy, field):
    model = build(AlbertConfig(embedding_size=8, **SIZES))
    with pytest.raises(RecipeError) as err:
        make_plan(model, strategy, 1e-3, 0.0)
    assert err.value.field == field
    assert "shared" in str(err.value) and "freeze_modules" in str(err.value)


def test_albert_accepts_embedding_freezing():
    model = build(AlbertConfig(embedding_size=8, **SIZES))
    plan = make_plan(model, StrategyConfig(freeze_embeddings=True), 1e-3, 0.0)
    frozen = {n for g in plan.groups if not g.trainable for n in g.param_names}
    assert "albert.embeddings.word_embeddings.weight" in frozen
    assert not any("albert_layer_groups" in n for n in frozen)


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------
def groups_by_name(plan):
    return {g.name: g for g in plan.groups}


def test_freeze_layers_negative_counts_from_the_top():
    model = build(CONFIGS["bert"]())
    bottom = make_plan(model, StrategyConfig(freeze_layers=2), 1e-3, 0.0)
    all_but_top = make_plan(model, StrategyConfig(freeze_layers=-1), 1e-3, 0.0)
    assert bottom.to_dict()["groups"] == all_but_top.to_dict()["groups"]
    frozen = [g.name for g in bottom.groups if not g.trainable]
    assert frozen == ["layer.0 (frozen)", "layer.1 (frozen)"]


def test_linear_probing_trains_the_head_only():
    model = build(CONFIGS["bert"]())
    plan = make_plan(model, StrategyConfig(freeze_all_but_head=True), 1e-3, 0.0)
    trainable = {n for g in plan.groups if g.trainable for n in g.param_names}
    assert trainable == {"classifier.weight", "classifier.bias"}
    assert plan.trainable_params == 16 * 2 + 2


def test_llrd_rates_follow_the_geometric_rule():
    model = build(CONFIGS["bert"]())
    lr, d = 1e-3, 0.5
    plan = make_plan(model, StrategyConfig(layerwise_lr_decay=d, head_lr_multiplier=4.0), lr, 0.01)
    by_part = {}
    for g in plan.groups:
        by_part.setdefault(g.part, set()).add(g.lr)
    assert by_part == {
        "head": {lr * 4.0},
        "pooler": {lr},
        "layer.2": {lr * d},
        "layer.1": {lr * d**2},
        "layer.0": {lr * d**3},
        "embeddings": {lr * d**4},
    }
    # the Trainer's no-decay rule: biases and LayerNorm weights
    for g in plan.groups:
        for n in g.param_names:
            no_decay = n.endswith(".bias") or "LayerNorm" in n
            assert g.weight_decay == (0.0 if no_decay else 0.01), n


def test_freeze_modules_regex_and_errors():
    model = build(CONFIGS["bert"]())
    plan = make_plan(model, StrategyConfig(freeze_modules=[r"attention\.self\.(query|key)\."]), 1e-3, 0.0)
    frozen = {n for g in plan.groups if not g.trainable for n in g.param_names}
    assert len(frozen) == 3 * 4 and all(".query." in n or ".key." in n for n in frozen)
    with pytest.raises(RecipeError) as err:
        make_plan(model, StrategyConfig(freeze_modules=["no_such_module"]), 1e-3, 0.0)
    assert err.value.field == "strategy.freeze_modules[0]" and "bert.embeddings" in str(err.value)


@pytest.mark.parametrize(
    "strategy,field,text",
    [
        (StrategyConfig(freeze_layers=4), "strategy.freeze_layers", "has 3 layers"),
        (StrategyConfig(freeze_layers=-4), "strategy.freeze_layers", "from -3 to 3"),
        (
            StrategyConfig(freeze_all_but_head=True, freeze_modules=["classifier"]),
            "strategy",
            "nothing would train",
        ),
        (
            StrategyConfig(
                freeze_embeddings=True, freeze_layers=3, gradual_unfreezing=GradualUnfreezingConfig()
            ),
            "strategy.gradual_unfreezing",
            "nothing to unfreeze",
        ),
    ],
)
def test_plan_errors_name_the_field(strategy, field, text):
    model = build(CONFIGS["bert"](), AutoModelForTokenClassification)
    with pytest.raises(RecipeError) as err:
        make_plan(model, strategy, 1e-3, 0.0)
    assert err.value.field == field and text in str(err.value), str(err.value)


def test_gradual_schedule_skips_frozen_units():
    model = build(CONFIGS["bert"]())
    strategy = StrategyConfig(
        freeze_layers=1, gradual_unfreezing=GradualUnfreezingConfig(every=2, unit="steps")
    )
    plan = make_plan(model, strategy, 1e-3, 0.0)
    at = {g.part: g.unfreeze_at for g in plan.groups if g.trainable}
    # head from the start; top layer with the pooler after 2 steps; layer.1 after 4; layer.0 frozen; embeddings 6
    assert at == {"head": None, "pooler": 2, "layer.2": 2, "layer.1": 4, "embeddings": 6}
    schedule = plan.to_dict()["gradual_unfreezing"]["schedule"]
    assert [s["at"] for s in schedule] == [2, 4, 6]


# --------------------------------------------------------------------------------------------------
# Effects on training (tiny BERT: 2 layers)
# --------------------------------------------------------------------------------------------------
def pretrained_state(model_dir):
    return {
        k: v.clone()
        for k, v in AutoModelForSequenceClassification.from_pretrained(model_dir).state_dict().items()
    }


def trained_state(out):
    return AutoModelForSequenceClassification.from_pretrained(out).state_dict()


def run(tiny_model_dir, sentiment_files, out, strategy=None, callbacks=(), **training):
    recipe = load_recipe(
        tiny_recipe(tiny_model_dir, sentiment_files, out, strategy=strategy or {}, training=training)
    )
    if callbacks:
        from hf_finetune import pipeline

        original = pipeline.FinetuneTrainer

        class WithCallbacks(original):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, callbacks=list(callbacks), **kwargs)

        pipeline.FinetuneTrainer = WithCallbacks
        try:
            return train(recipe)
        finally:
            pipeline.FinetuneTrainer = original
    return train(recipe)


def assert_frozen_and_trained(before, after, frozen_prefixes, trained_prefixes):
    for name, value in after.items():
        if name not in before:
            continue
        if name.startswith(frozen_prefixes):
            assert torch.equal(value, before[name]), f"{name} changed but is frozen"
    for prefix in trained_prefixes:
        moved = [
            n for n in after if n.startswith(prefix) and n in before and not torch.equal(after[n], before[n])
        ]
        assert moved, f"nothing under {prefix} changed"


def test_freezing_keeps_frozen_weights_bit_identical(tiny_model_dir, sentiment_files, tmp_path):
    before = pretrained_state(tiny_model_dir)
    strategy = {"freeze_layers": 1, "freeze_modules": ["position_embeddings"]}
    metrics = run(tiny_model_dir, sentiment_files, tmp_path / "out", strategy)
    after = trained_state(tmp_path / "out")
    frozen = ("bert.encoder.layer.0.", "bert.embeddings.position_embeddings.")
    assert_frozen_and_trained(
        before, after, frozen, ("bert.embeddings.word_embeddings.", "bert.encoder.layer.1.", "bert.pooler.")
    )
    assert metrics["eval_accuracy"] >= 0.9, metrics  # chance is 0.5
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    total = sum(
        p.numel() for p in AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").parameters()
    )
    assert results["total_params"] == total
    assert results["trainable_params"] == total - sum(
        v.numel() for k, v in before.items() if k.startswith(frozen)
    )
    assert results["strategy"] == "freeze bottom 1 of 2 layers; freeze modules 'position_embeddings'"


def test_linear_probing_changes_the_head_only(tiny_model_dir, sentiment_files, tmp_path):
    before = pretrained_state(tiny_model_dir)
    run(tiny_model_dir, sentiment_files, tmp_path / "out", {"freeze_all_but_head": True}, num_train_epochs=1)
    after = trained_state(tmp_path / "out")
    assert_frozen_and_trained(before, after, ("bert.",), ())
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])


def test_optimizer_groups_are_the_plan(tiny_model_dir, sentiment_files, tmp_path):
    """The Trainer's optimizer holds exactly the trainable parameters, at the geometric learning rates."""
    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            seen["groups"] = [
                (
                    g["name"],
                    g["initial_lr"] if "initial_lr" in g else g["lr"],
                    g["weight_decay"],
                    list(g["params"]),
                )
                for g in optimizer.param_groups
            ]
            seen["params"] = dict(model.named_parameters())

    lr, d = 2e-3, 0.5
    run(
        tiny_model_dir,
        sentiment_files,
        tmp_path / "out",
        {"freeze_embeddings": True, "layerwise_lr_decay": d, "head_lr_multiplier": 2.0},
        callbacks=[Capture()],
        learning_rate=lr,
        weight_decay=0.01,
        num_train_epochs=1,
    )
    expected_lr = {"head": lr * 2.0, "pooler": lr, "layer.1": lr * d, "layer.0": lr * d**2}
    ids = {id(p): n for n, p in seen["params"].items()}
    in_optimizer = []
    for name, group_lr, decay, params in seen["groups"]:
        part = name.split(" ")[0]
        assert group_lr == expected_lr[part], (name, group_lr)
        assert decay == (0.0 if "no decay" in name else 0.01)
        in_optimizer += [ids[id(p)] for p in params]
    trainable = [n for n, p in seen["params"].items() if p.requires_grad]
    assert sorted(in_optimizer) == sorted(trainable)
    assert not any(n.startswith("bert.embeddings.") for n in in_optimizer)


class Snapshots(TrainerCallback):
    """Copies of the weights at each epoch end (or every step)."""

    def __init__(self, every_step=False):
        self.every_step = every_step
        self.states = []

    def _take(self, model):
        self.states.append({n: p.detach().clone() for n, p in model.named_parameters()})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._take(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if not self.every_step:
            self._take(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_step:
            self._take(model)


def changed(a, b, prefix):
    return any(not torch.equal(a[n], b[n]) for n in a if n.startswith(prefix))


def test_gradual_unfreezing_by_epoch(tiny_model_dir, sentiment_files, tmp_path):
    snaps = Snapshots()
    metrics = run(
        tiny_model_dir,
        sentiment_files,
        tmp_path / "out",
        {"gradual_unfreezing": {"every": 1, "unit": "epoch"}},
        callbacks=[snaps],
        num_train_epochs=6,
    )
    s = snaps.states  # start, then after each of the 6 epochs
    assert len(s) == 7
    units = [
        "classifier.",
        "bert.pooler.",
        "bert.encoder.layer.1.",
        "bert.encoder.layer.0.",
        "bert.embeddings.",
    ]
    opens_in_epoch = {
        "classifier.": 0,
        "bert.pooler.": 1,
        "bert.encoder.layer.1.": 1,
        "bert.encoder.layer.0.": 2,
    }
    opens_in_epoch["bert.embeddings."] = 3
    for epoch in range(6):
        for unit in units:
            assert changed(s[epoch], s[epoch + 1], unit) == (epoch >= opens_in_epoch[unit]), (epoch, unit)
    assert metrics["eval_accuracy"] >= 0.9, metrics  # chance is 0.5


def test_gradual_unfreezing_by_steps_with_llrd(tiny_model_dir, sentiment_files, tmp_path):
    snaps = Snapshots(every_step=True)
    run(
        tiny_model_dir,
        sentiment_files,
        tmp_path / "out",
        {
            "gradual_unfreezing": {"every": 3, "unit": "steps"},
            "layerwise_lr_decay": 0.8,
            "freeze_embeddings": True,
        },
        callbacks=[snaps],
        num_train_epochs=1,
        max_steps=10,
        max_grad_norm=1.0,
    )
    s = snaps.states  # start, then after each of the 10 steps
    assert len(s) == 11
    opens_at_step = {
        "classifier.": 0,
        "bert.pooler.": 3,
        "bert.encoder.layer.1.": 3,
        "bert.encoder.layer.0.": 6,
    }
    for step in range(10):
        for unit, first in opens_at_step.items():
            assert changed(s[step], s[step + 1], unit) == (step >= first), (step, unit)
        assert not changed(s[step], s[step + 1], "bert.embeddings.")


@pytest.fixture(scope="module")
def frozen_embeddings_without_checkpointing(tiny_model_dir, tmp_path_factory):
    from .conftest import write_sentiment_files

    root = tmp_path_factory.mktemp("no-checkpointing")
    files = write_sentiment_files(root)
    run(tiny_model_dir, files, root / "out", {"freeze_embeddings": True}, num_train_epochs=10)
    return trained_state(root / "out")


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing_with_frozen_embeddings_still_learns(
    tiny_model_dir, sentiment_files, tmp_path, reentrant, frozen_embeddings_without_checkpointing
):
    """The known failure: checkpointed layers whose input does not require grad get no gradients.

    With checkpointing (reentrant or not) the trainable layers must learn exactly what they learn without it.
    """
    before = pretrained_state(tiny_model_dir)
    metrics = run(
        tiny_model_dir,
        sentiment_files,
        tmp_path / "out",
        {"freeze_embeddings": True},
        activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": reentrant},
        num_train_epochs=10,
    )
    after = trained_state(tmp_path / "out")
    assert_frozen_and_trained(
        before, after, ("bert.embeddings.",), ("bert.encoder.layer.0.", "bert.encoder.layer.1.")
    )
    for name, value in frozen_embeddings_without_checkpointing.items():
        torch.testing.assert_close(after[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert metrics["eval_accuracy"] >= 0.75, metrics  # chance is 0.5 (random embeddings, frozen)


# --------------------------------------------------------------------------------------------------
# Recipe errors come before weights; `plan` prints the groups
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "strategy,expected",
    [
        (
            {"freeze_layers": 3},
            "`strategy.freeze_layers`: is 3 but BertForSequenceClassification has 2 layers",
        ),
        ({"freeze_all_but_head": True, "freeze_modules": ["^classifier"]}, "nothing would train"),
        ({"layerwise_lr_decay": 0}, "`strategy.layerwise_lr_decay`: must be in (0, 1]"),
        ({"layerwise_lr_decay": 1.2}, "`strategy.layerwise_lr_decay`: must be in (0, 1]"),
        ({"gradual_unfreezing": {"every": 0}}, "`strategy.gradual_unfreezing.every`: must be at least 1"),
        (
            {"freeze_modules": ["encoder\\.lyr"]},
            "`strategy.freeze_modules[0]`: 'encoder\\\\.lyr' matches no parameter",
        ),
    ],
)
def test_strategy_errors_before_weights(
    tiny_model_dir, sentiment_files, tmp_path, capsys, no_weights, strategy, expected
):
    recipe = tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "out", strategy=strategy)
    train_fails(capsys, recipe, tmp_path, expected)
    assert not (tmp_path / "out").exists()


def test_albert_checkpoint_error_names_the_field(
    tmp_path, sentiment_files, capsys, no_weights, tiny_model_dir
):
    from transformers import AlbertModel

    albert = tmp_path / "albert"
    AlbertModel(AlbertConfig(embedding_size=8, **{**SIZES, "vocab_size": 30522})).save_pretrained(albert)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tiny_model_dir / name).is_file():
            (albert / name).write_bytes((tiny_model_dir / name).read_bytes())
    recipe = tiny_recipe(albert, sentiment_files, tmp_path / "out", strategy={"freeze_layers": 1})
    train_fails(
        capsys, recipe, tmp_path, "`strategy.freeze_layers`: AlbertForSequenceClassification runs 3 layers"
    )


def test_plan_cli_json_and_table(tiny_model_dir, sentiment_files, tmp_path, capsys, no_weights):
    recipe = tiny_recipe(
        tiny_model_dir,
        sentiment_files,
        tmp_path / "out",
        strategy={"freeze_embeddings": True, "layerwise_lr_decay": 0.5, "gradual_unfreezing": True},
    )
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert cli.main(["plan", path, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"groups", "trainable_params", "total_params"} <= set(plan)
    for group in plan["groups"]:
        assert {"name", "lr", "weight_decay", "params", "trainable"} <= set(group)
    assert sum(g["params"] for g in plan["groups"]) == plan["total_params"]
    assert sum(g["params"] for g in plan["groups"] if g["trainable"]) == plan["trainable_params"]
    assert plan["gradual_unfreezing"]["schedule"][0] == {
        "at": 1,
        "groups": ["layer.1", "layer.1 (no decay)", "pooler", "pooler (no decay)"],
    }
    lrs = {g["name"]: g["lr"] for g in plan["groups"]}
    assert lrs["layer.0"] == 3e-3 * 0.25 and lrs["embeddings (frozen)"] is None

    assert cli.main(["plan", path]) == 0
    text = capsys.readouterr().out
    assert "embeddings (frozen)" in text and "from epoch" in text
    assert f"trainable {plan['trainable_params']:,} of {plan['total_params']:,} parameters" in text


def test_meta_plan_equals_the_plan_on_loaded_weights(tiny_model_dir, sentiment_files, tmp_path):
    from hf_finetune.pipeline import load_model, prepare, strategy_plan

    recipe = load_recipe(
        tiny_recipe(tiny_model_dir, sentiment_files, tmp_path / "out", strategy={"freeze_layers": -1})
    )
    prepared = prepare(recipe)
    assert prepared.plan.to_dict() == strategy_plan(recipe, load_model(prepared)).to_dict()


def test_gradual_unfreezing_keeps_ddp_replicas_identical(tiny_model_dir, sentiment_files, tmp_path):
    """Two processes (torchrun, gloo on CPU): layers unfrozen mid-run are all-reduced like the rest, so both
    replicas end bit-identical, without relying on DDP's find_unused_parameters."""
    import os
    import subprocess
    import sys

    from .conftest import REPO

    recipe = tiny_recipe(
        tiny_model_dir,
        sentiment_files,
        tmp_path / "out",
        strategy={"gradual_unfreezing": {"every": 3, "unit": "steps"}, "layerwise_lr_decay": 0.8},
        training={
            "max_steps": 8,
            "eval_strategy": "no",
            "per_device_train_batch_size": 8,
            "ddp_find_unused_parameters": False,
            "max_grad_norm": 1.0,
        },
    )
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += [str(REPO / "tests" / "helpers" / "ddp_fingerprints.py"), str(path), str(tmp_path / "prints")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / "prints" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert "DISTRIBUTED" in ranks[0]["parallel_mode"]
    assert ranks[0]["hashes"] == ranks[1]["hashes"]
    changed = set(ranks[0]["changed"])
    # 8 steps, a unit every 3: head from step 0, top layer + pooler from 3, layer 0 from 6, embeddings never
    for prefix in ("classifier.", "bert.pooler.", "bert.encoder.layer.1.", "bert.encoder.layer.0."):
        assert any(n.startswith(prefix) for n in changed), prefix
    assert not any(n.startswith("bert.embeddings.") for n in changed)
