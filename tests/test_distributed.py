"""Multi-process training on the CPU (gloo): launchers, equivalence with one process, derived DDP settings.

Equivalence: N processes at per-device batch B see, step for step, the same examples as one process at
batch N*B (Accelerate shards the seeded sampler's batches across ranks and DDP averages the gradients),
so with dropout off the final weights agree up to float summation order: compared at ATOL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_finetune import distributed
from hf_finetune.config.load import derived_training_init
from hf_finetune.errors import FinetuneError, RecipeError

from .conftest import REPO, tiny_recipe, write_recipe
from .helpers import free_port

#: largest absolute difference allowed between the 2-process and 1-process final weights (fp32, 20 steps)
ATOL = 1e-5
NO_DROPOUT = {"config_overrides": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    if proc.returncode != 0:  # the first error of any rank, not only the launcher's summary at the end
        lines = proc.stderr.splitlines()
        first = next((i for i, line in enumerate(lines) if "Traceback" in line or "error:" in line), 0)
        pytest.fail(
            f"{' '.join(cmd[2:6])} exited {proc.returncode}:\n" + "\n".join(lines[first : first + 60])
        )
    return proc


def torchrun(recipe_path: str, nproc: int, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--master_port", str(free_port()), "-m", "hf_finetune", "train", recipe_path, *overrides]
    return _run(cmd)


def single(recipe_path: str, *overrides: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "hf_finetune", "train", recipe_path, *overrides])


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = (
        "adapter_model.safetensors"
        if (output_dir / "adapter_model.safetensors").is_file()
        else "model.safetensors"
    )
    return load_file(output_dir / name)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def equivalence_recipe(tiny_model_dir, sentiment_files, out: Path, **sections) -> dict:
    recipe = tiny_recipe(tiny_model_dir, sentiment_files, out, **sections)
    recipe["model"].update(NO_DROPOUT)
    recipe["training"].update(
        {
            "num_train_epochs": 1,
            "max_steps": 20,
            "eval_strategy": "no",
            "logging_steps": 5,
            "max_grad_norm": 1.0,
        }
    )
    return recipe


CASES = {
    "full": {},
    "freeze_layers": {"strategy": {"freeze_embeddings": True, "freeze_layers": 1}},
    "lora": {
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"learning_rate": 1e-2},
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_process_with_the_doubled_batch(
    case, tiny_model_dir, sentiment_files, tmp_path
):
    sections = {k: dict(v) for k, v in CASES[case].items()}
    recipe = equivalence_recipe(tiny_model_dir, sentiment_files, tmp_path / "unused", **sections)
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun(path, 2, f"training.output_dir={two}", "training.per_device_train_batch_size=8")
    single(path, f"training.output_dir={one}", "training.per_device_train_batch_size=16")

    results_two = json.loads((two / "all_results.json").read_text())
    results_one = json.loads((one / "all_results.json").read_text())
    assert results_two["world_size"] == 2 and results_one["world_size"] == 1
    # no trainable parameter is idle in these strategies, so DDP's unused-parameter search stays off
    assert results_two["ddp_find_unused_parameters"] is False

    w2, w1 = weights(two), weights(one)
    diff = max_difference(w2, w1)
    print(f"{case}: max |2 processes - 1 process| = {diff:.2e}")  # shown with pytest -s
    assert diff < ATOL, f"{case}: 2 processes vs 1 differ by {diff:.2e}"

    from safetensors.torch import load_file

    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    if case == "lora":
        trained = [k for k in w2 if "lora_B" in k]
        assert trained and all(w2[k].abs().max() > 0 for k in trained)  # B starts at zero
    else:
        moved = [k for k in w2 if k.startswith("bert.") and not torch.equal(w2[k], start[k[len("bert.") :]])]
        if case == "freeze_layers":  # frozen parts are bit-identical to the checkpoint in both runs
            assert not any(k.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for k in moved), moved
            assert any(k.startswith("bert.encoder.layer.1.") for k in moved)
        else:
            assert any(k.startswith("bert.embeddings.") for k in moved)
    # only the main process writes the outputs, once
    assert (two / "README.md").is_file() and (two / "recipe.yaml").is_file()
    assert not list(two.glob("*.partial"))


def test_accelerate_launch_with_the_shipped_cpu_config(tiny_model_dir, sentiment_files, tmp_path):
    """`accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m hf_finetune train` runs 2 processes
    on the CPU (use_cpu derived: the recipe does not set it) and matches one process at the doubled batch."""
    recipe = equivalence_recipe(tiny_model_dir, sentiment_files, tmp_path / "unused")
    del recipe["training"]["use_cpu"]
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    two, one = tmp_path / "two", tmp_path / "one"
    config = REPO / "recipes" / "accelerate" / "cpu-2proc.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    cmd += ["--main_process_port", str(free_port()), "-m", "hf_finetune", "train", path]
    _run(cmd + [f"training.output_dir={two}", "training.per_device_train_batch_size=8"])
    single(path, f"training.output_dir={one}", "training.per_device_train_batch_size=16")
    assert json.loads((two / "all_results.json").read_text())["world_size"] == 2
    assert max_difference(weights(two), weights(one)) < ATOL


def test_gradual_unfreezing_under_two_processes(tiny_model_dir, sentiment_files, tmp_path):
    recipe = equivalence_recipe(
        tiny_model_dir,
        sentiment_files,
        tmp_path / "two",
        strategy={"gradual_unfreezing": {"every": 5, "unit": "steps"}},
    )
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    proc = torchrun(path, 2, "training.per_device_train_batch_size=8")
    results = json.loads((tmp_path / "two" / "all_results.json").read_text())
    assert results["world_size"] == 2
    assert results["ddp_find_unused_parameters"] is False
    assert "Traceback" not in proc.stderr


def _node(recipe_path: str, rank: int, port: int, log: Path, *overrides: str) -> subprocess.Popen:
    """Node ``rank`` of a two-node launch simulated on this machine: a torchrun of one process, the static
    rendezvous on 127.0.0.1 (recipes/accelerate/multi-node.yaml gives the same launch on real nodes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    cmd += ["--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port)]
    cmd += ["-m", "hf_finetune", "train", recipe_path, *overrides]
    with log.open("w") as handle:  # the node's output, read while it runs
        return subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )


def _two_nodes(recipe_path: str, tmp_path: Path, name: str, *overrides: str) -> list[subprocess.Popen]:
    port = free_port()
    return [_node(recipe_path, r, port, tmp_path / f"{name}-node{r}.log", *overrides) for r in (0, 1)]


def _finish(nodes: list[subprocess.Popen], timeout: int = 300) -> list[int]:
    return [node.wait(timeout=timeout) for node in nodes]


def test_two_nodes_train_the_weights_of_one_process_and_resume_after_sigterm_to_node_1(
    tiny_model_dir, sentiment_files, tmp_path
):
    from hf_finetune.outputs import NOTE_FILE

    recipe = equivalence_recipe(tiny_model_dir, sentiment_files, tmp_path / "unused")
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    two, one = tmp_path / "two", tmp_path / "one"
    nodes = _two_nodes(
        path, tmp_path, "equal", f"training.output_dir={two}", "training.per_device_train_batch_size=8"
    )
    codes = _finish(nodes)
    assert codes == [0, 0], (tmp_path / "equal-node1.log").read_text()[-3000:]
    single(path, f"training.output_dir={one}", "training.per_device_train_batch_size=16")
    assert json.loads((two / "all_results.json").read_text())["world_size"] == 2
    assert max_difference(weights(two), weights(one)) < ATOL
    # one writer: node 0's main process wrote the outputs once, node 1 wrote nothing there
    assert (two / "README.md").is_file() and not list(two.glob("*.partial"))

    # SIGTERM to node 1 mid-run: both nodes stop at the same step, node 0 saves the checkpoint; the two
    # nodes launched again with --resume continue from it and finish
    long = tmp_path / "long"
    overrides = [f"training.output_dir={long}", "training.per_device_train_batch_size=8"]
    overrides += ["training.max_steps=400", "training.logging_steps=1", "training.save_strategy=no"]
    nodes = _two_nodes(path, tmp_path, "stopped", *overrides)
    node0_log = tmp_path / "stopped-node0.log"
    deadline = time.monotonic() + 300
    while "'loss'" not in node0_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    nodes[1].send_signal(signal.SIGTERM)
    codes = [node.wait(timeout=300) for node in nodes]
    assert codes[0] != 0 and codes[1] != 0
    (checkpoint,) = long.glob("checkpoint-*")
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 0 < stopped_at < 400 and (long / NOTE_FILE).is_file()
    assert "SIGTERM: saving a checkpoint" in (tmp_path / "stopped-node1.log").read_text()

    nodes = _two_nodes(path, tmp_path, "resumed", *overrides, "--resume")
    assert _finish(nodes) == [0, 0], (tmp_path / "resumed-node0.log").read_text()[-3000:]
    assert f"resuming from {checkpoint}" in (tmp_path / "resumed-node0.log").read_text()
    state = json.loads((long / "trainer_state.json").read_text())
    assert state["global_step"] == 400 and not (long / NOTE_FILE).exists()


# ------------------------------------------------------------------------------------------------
# The decisions, in process
# ------------------------------------------------------------------------------------------------
def _tiny_classifier(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = dict(tokenizer(["a good film", "a dull plot"], return_tensors="pt", padding=True))
    batch["labels"] = torch.tensor([1, 0])
    return model, batch


def test_probe_finds_a_dead_branch_and_leaves_no_trace(tiny_model_dir):
    model, batch = _tiny_classifier(tiny_model_dir)
    assert distributed.unused_parameters(model, batch) == []
    model.bert.unused_branch = torch.nn.Linear(4, 4)  # trainable, never called by forward
    for p in model.bert.embeddings.parameters():  # frozen: not DDP's business, not reported
        p.requires_grad_(False)
    state = torch.get_rng_state()
    model.train()
    found = distributed.unused_parameters(model, batch)
    assert found == ["bert.unused_branch.weight", "bert.unused_branch.bias"]
    assert torch.equal(torch.get_rng_state(), state)  # no dropout mask or other draw consumed
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def _ddp_args(**fields):
    from transformers.training_args import ParallelMode

    values = {
        "world_size": 2,
        "parallel_mode": ParallelMode.DISTRIBUTED,
        "ddp_find_unused_parameters": None,
        "fsdp": None,
        "fsdp_config": None,
        "deepspeed": None,
        "activation_checkpointing": False,
        "activation_checkpointing_kwargs": None,
    }
    values.update(fields)
    return SimpleNamespace(**values)


def test_find_unused_parameters_is_derived_from_the_probe(tiny_model_dir, monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    model, batch = _tiny_classifier(tiny_model_dir)
    args = _ddp_args()
    assert distributed.configure(model, args, lambda: batch)["find_unused_parameters"] is False
    assert args.ddp_find_unused_parameters is False

    model.bert.unused_branch = torch.nn.Linear(4, 4)
    args = _ddp_args()
    decided = distributed.configure(model, args, lambda: batch)
    assert args.ddp_find_unused_parameters is True and decided["unused_parameters"] == 2

    with pytest.raises(RecipeError) as err:  # the recipe forces it off: DDP would stall, so refuse
        distributed.configure(model, _ddp_args(ddp_find_unused_parameters=False), lambda: batch)
    assert err.value.field == "training.ddp_find_unused_parameters" and "unused_branch" in str(err.value)

    with pytest.raises(RecipeError) as err:  # unused parameters + reentrant checkpointing
        distributed.configure(
            model,
            _ddp_args(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": True}),
            lambda: batch,
        )
    assert err.value.field == "training.activation_checkpointing_kwargs"
    # non-reentrant checkpointing (the transformers default) is fine with the search on
    distributed.configure(model, _ddp_args(activation_checkpointing=True), lambda: batch)


def test_fsdp1_with_frozen_parameters_needs_use_orig_params(tiny_model_dir, monkeypatch):
    model, batch = _tiny_classifier(tiny_model_dir)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    never = lambda: pytest.fail("FSDP needs no DDP probe")  # noqa: E731
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch` with an FSDP config sets it
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.delenv("FSDP_USE_ORIG_PARAMS", raising=False)
    with pytest.raises(RecipeError) as err:
        distributed.configure(model, _ddp_args(), never)
    assert "fsdp_use_orig_params" in err.value.field and "use_orig_params" in str(err.value)
    monkeypatch.setenv("FSDP_USE_ORIG_PARAMS", "true")
    assert distributed.configure(model, _ddp_args(), never)["fsdp_version"] == 1
    monkeypatch.setenv("FSDP_VERSION", "2")  # FSDP2 shards per parameter: frozen ones are fine
    monkeypatch.delenv("FSDP_USE_ORIG_PARAMS")
    assert distributed.configure(model, _ddp_args(), never)["fsdp_version"] == 2
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(RecipeError) as err:  # the same through the recipe's own FSDP settings
        distributed.configure(
            model, _ddp_args(fsdp=["full_shard"], fsdp_config={"version": 1, "use_orig_params": False}), never
        )
    assert err.value.field == "training.fsdp_config.use_orig_params"


def test_launch_checks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FinetuneError, match="each process would train alone"):
        distributed.check_launch(SimpleNamespace(world_size=1, deepspeed=None))
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # not installed
    with pytest.raises(FinetuneError, match="pip install deepspeed"):
        distributed.check_launch(SimpleNamespace(world_size=1, deepspeed=None))


def test_multi_process_launch_without_gpu_trains_on_cpu(monkeypatch):
    monkeypatch.setattr("hf_finetune.hardware.accelerator_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert derived_training_init({"output_dir": "x"})["use_cpu"] is True  # derived; the recipe keeps none
    assert derived_training_init({"output_dir": "x", "use_cpu": False})["use_cpu"] is False  # as set
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert "use_cpu" not in derived_training_init({"output_dir": "x"})


def test_gradient_accumulation_matches_the_doubled_batch(tiny_model_dir, sentiment_files, tmp_path):
    """One process: batch 8 x 2 accumulation steps = batch 16. transformers 5 would skip the division by the
    accumulation steps for a model whose forward takes **kwargs; the encoder heads' loss is a plain mean, so
    FinetuneTrainer turns that off (the same rule keeps DDP from multiplying the loss by the world size)."""
    from hf_finetune.config.load import load_recipe
    from hf_finetune.pipeline import train

    recipe = equivalence_recipe(tiny_model_dir, sentiment_files, tmp_path / "unused")
    accumulated, plain = tmp_path / "accumulated", tmp_path / "plain"
    train(
        load_recipe(
            recipe,
            [
                f"training.output_dir={accumulated}",
                "training.per_device_train_batch_size=8",
                "training.gradient_accumulation_steps=2",
            ],
        )
    )
    train(load_recipe(recipe, [f"training.output_dir={plain}", "training.per_device_train_batch_size=16"]))
    assert max_difference(weights(accumulated), weights(plain)) < ATOL


def test_loss_counts_items_only_for_heads_that_use_the_loss_function(tiny_model_dir):
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForQuestionAnswering,
        AutoModelForTokenClassification,
    )

    from hf_finetune.trainer import loss_counts_items

    model, _ = _tiny_classifier(tiny_model_dir)
    assert not loss_counts_items(model)
    assert not loss_counts_items(
        AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=3)
    )
    assert not loss_counts_items(AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir))
    # BertLMHeadModel divides its loss by num_items_in_batch (self.loss_function)
    assert loss_counts_items(AutoModelForCausalLM.from_pretrained(tiny_model_dir, is_decoder=True))
