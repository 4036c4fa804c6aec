"""Files written next to a model: environment versions and the training-curve plot."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ENV_FILE = "environment.json"
CURVES_FILE = "training_curves.png"
_PACKAGES = (
    "hf-finetune",
    "torch",
    "transformers",
    "datasets",
    "evaluate",
    "accelerate",
    "peft",
    "tokenizers",
    "huggingface-hub",
    "numpy",
)
_NOT_METRICS = {"loss", "runtime", "samples_per_second", "steps_per_second", "epoch"}


def environment() -> dict[str, Any]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
    }
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["device"] = (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
        )
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # pragma: no cover - torch is a dependency
        pass
    return info


def write_environment(output_dir: str | Path) -> Path:
    path = Path(output_dir) / ENV_FILE
    path.write_text(json.dumps(environment(), indent=2) + "\n")
    return path


def eval_metric_names(log_history: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for entry in log_history:
        for key in entry:
            if key.startswith("eval_") and not key.endswith(tuple(_NOT_METRICS)) and key not in names:
                names.append(key)
    return names


def plot_curves(log_history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Training loss and the first evaluation metric against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    metric = next(iter(eval_metric_names(log_history)), None)
    points = [(e["step"], e[metric]) for e in log_history if metric and metric in e and "step" in e]
    if not losses and not points:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if losses:
        axes[0].plot(*zip(*losses), color="tab:blue")
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    if points:
        axes[1].plot(*zip(*points), marker="o", color="tab:orange")
    axes[1].set(title=metric or "no evaluation logged", xlabel="step", ylabel=metric or "")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
