"""Faults: SIGKILL at a random step or in the middle of a checkpoint save, SIGTERM/SIGINT, then resume.

Each run is a real `hf-finetune train` process on the tiny BERT. A fault is injected from inside the
process (tests/helpers/faulty_train.py) at a chosen step, so the tests are deterministic. An interrupted
and resumed run must end with exactly the weights and eval metrics of an uninterrupted one (CPU: bit-equal,
tolerance 0), for full fine-tuning, a strategy (gradual unfreezing + layer-wise LR decay) and LoRA.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_finetune.config.load import load_recipe
from hf_finetune.pipeline import recipe_differences

from .conftest import REPO, tiny_recipe, write_recipe

CHILD = REPO / "tests" / "helpers" / "faulty_train.py"
STEPS = 12
SAVE_EVERY = 3
VARIANTS = {
    "full": {},
    "strategy": {
        "strategy": {"gradual_unfreezing": {"every": 3, "unit": "steps"}, "layerwise_lr_decay": 0.8}
    },
    "lora": {"peft": {"method": "lora", "r": 4}},
}


def run(recipe_path: str, *args: str, fault: str = "none", step: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(CHILD), fault, str(step), "train", recipe_path, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def make_recipe(tmp_path: Path, model, files, name: str, variant: str) -> tuple[str, Path]:
    out = tmp_path / name
    recipe = tiny_recipe(
        model,
        files,
        out,
        training={
            "max_steps": STEPS,
            "learning_rate": 5e-3,
            "per_device_train_batch_size": 8,
            "eval_strategy": "no",
            "save_strategy": "steps",
            "save_steps": SAVE_EVERY,
            "logging_steps": 1,
        },
        **VARIANTS[variant],
    )
    return write_recipe(tmp_path / f"{name}.yaml", recipe), out


def weights(out: Path) -> dict[str, torch.Tensor]:
    name = (
        "adapter_model.safetensors" if (out / "adapter_model.safetensors").is_file() else "model.safetensors"
    )
    return load_file(out / name)


def eval_metrics(out: Path) -> dict:
    results = json.loads((out / "all_results.json").read_text())
    return {
        k: v
        for k, v in results.items()
        if k.startswith("eval_") and "runtime" not in k and "per_second" not in k
    }


def losses(out: Path) -> dict[int, float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def assert_same_run(resumed: Path, straight: Path, after_step: int) -> None:
    a, b = weights(resumed), weights(straight)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: max diff {(a[key] - b[key]).abs().max().item()}"
    assert eval_metrics(resumed) == eval_metrics(straight)
    # the steps trained after the resume log the same losses
    tail = {s: v for s, v in losses(straight).items() if s > after_step}
    assert tail and {s: losses(resumed)[s] for s in tail} == tail


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, tiny_model_dir):
    """One uninterrupted run per variant, the reference the interrupted runs must match."""
    from .conftest import write_sentiment_files

    root = tmp_path_factory.mktemp("straight")
    files = write_sentiment_files(root / "data")
    runs = {}
    for variant in VARIANTS:
        path, out = make_recipe(root, tiny_model_dir, files, variant, variant)
        proc = run(path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[variant] = out
    return root, files, runs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sigkill_at_a_random_step_then_resume(variant, straight_runs, tiny_model_dir):
    root, files, straight = straight_runs
    kill_at = random.Random(f"kill-{variant}").randint(SAVE_EVERY + 1, STEPS - 1)
    path, out = make_recipe(root, tiny_model_dir, files, f"killed-{variant}", variant)
    proc = run(path, fault="kill", step=kill_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "config.json").exists()  # died before the end
    newest = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    # killed in on_step_end, before that step's own save
    assert newest == (kill_at - 1) // SAVE_EVERY * SAVE_EVERY, f"killed at {kill_at}"

    proc = run(path, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{newest}'}" in proc.stderr
    assert_same_run(out, straight[variant], after_step=newest)


def test_sigkill_during_a_checkpoint_save_keeps_the_previous_one(straight_runs, tiny_model_dir):
    root, files, straight = straight_runs
    path, out = make_recipe(root, tiny_model_dir, files, "killed-in-save", "full")
    proc = run(path, fault="kill-in-save", step=2 * SAVE_EVERY)  # after weights + optimizer, before the rest
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = out / f".partial-checkpoint-{2 * SAVE_EVERY}"
    assert (
        partial / f"checkpoint-{2 * SAVE_EVERY}" / "model.safetensors"
    ).is_file()  # the save was under way
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{SAVE_EVERY}"]
    previous = out / f"checkpoint-{SAVE_EVERY}"
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {
        p.name for p in previous.iterdir()
    }

    proc = run(path, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {previous}" in proc.stderr
    assert not partial.exists()  # the unfinished save was cleared away
    assert_same_run(out, straight["full"], after_step=SAVE_EVERY)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_writes_a_note_and_resume_finishes(sig, straight_runs, tiny_model_dir):
    root, files, straight = straight_runs
    name = signal.Signals(sig).name
    path, out = make_recipe(root, tiny_model_dir, files, f"signal-{name}", "full")
    stop_at = 5  # not a multiple of save_steps: the checkpoint comes from the signal
    proc = run(path, fault=name, step=stop_at)
    assert proc.returncode == 128 + sig, proc.stderr[-2000:]
    assert f"{name}: saving a checkpoint at the end of this step" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hf-finetune: error:")]
    assert len(errors) == 1 and f"stopped by {name} at step {stop_at} of {STEPS}" in errors[0]
    assert (out / f"checkpoint-{stop_at}" / "trainer_state.json").is_file()
    assert (
        json.loads((out / f"checkpoint-{stop_at}" / "trainer_state.json").read_text())["global_step"]
        == stop_at
    )
    note = (out / "INTERRUPTED.txt").read_text()
    assert f"stopped by {name} at step {stop_at} of {STEPS}" in note and "--resume" in note
    assert not (out / "config.json").exists()  # no final model from a stopped run

    proc = run(path, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "INTERRUPTED.txt").exists()
    assert_same_run(out, straight["full"], after_step=stop_at)


def test_a_signal_to_one_rank_stops_both_at_the_same_step(straight_runs, tiny_model_dir):
    """torchrun, 2 processes: SIGTERM reaches rank 1 only; rank 0 learns it through the per-step
    all-reduce, both stop after the same step, the checkpoint has both ranks' RNG states, resume finishes."""
    from .helpers import free_port

    root, files, _ = straight_runs
    path, out = make_recipe(root, tiny_model_dir, files, "ddp-signal", "full")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAULT_RANK": "1"}

    def launch(*args, fault="none"):
        cmd = [*launcher, "--master_port", str(free_port()), str(CHILD), fault, "4", "train", path, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)

    proc = launch(fault="SIGTERM")
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert proc.stderr.count("training stopped by SIGTERM at step 4 of 12") == 2, proc.stderr[-3000:]
    checkpoint = out / "checkpoint-4"
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert not list(out.glob(".partial-*")) and (out / "INTERRUPTED.txt").is_file()
    proc = launch("--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == STEPS
    assert not (out / "INTERRUPTED.txt").exists()


def test_second_signal_exits_at_once(straight_runs, tiny_model_dir):
    root, files, _ = straight_runs
    path, out = make_recipe(root, tiny_model_dir, files, "two-signals", "full")
    proc = run(path, fault="SIGTERM-twice", step=5)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "second SIGTERM: exiting now, without a checkpoint" in proc.stderr
    assert not (out / "checkpoint-5").exists() and not (out / "INTERRUPTED.txt").exists()


def test_resume_auto_without_checkpoints_starts_fresh_and_same_recipe_reruns(tmp_path, tiny_model_dir):
    from .conftest import write_sentiment_files

    files = write_sentiment_files(tmp_path / "data")
    path, out = make_recipe(tmp_path, tiny_model_dir, files, "fresh", "full")
    recipe = load_recipe(path, ["training.resume=auto", "training.save_strategy=no"])
    from hf_finetune.pipeline import resume_point

    assert resume_point(recipe) is None  # nothing there yet
    out.mkdir()
    load_recipe(path).save(out / "recipe.yaml")
    assert recipe_differences(out / "recipe.yaml", recipe) == ["training.save_strategy"]
    same = load_recipe(path, ["training.resume=auto", "training.logging_steps=7"])
    assert recipe_differences(out / "recipe.yaml", same) == []  # logging is not part of the run
    assert resume_point(same) is None
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (out / ".partial-checkpoint-6").mkdir()
    assert resume_point(same) == out / "checkpoint-3"
