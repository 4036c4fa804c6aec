"""`hf-finetune export --merge`: a LoRA/IA3 run folded into a standalone PyTorch model directory."""

from __future__ import annotations

from pathlib import Path

from ..config.load import load_recipe
from ..errors import FinetuneError
from ..inference import load_output_recipe, restore_model, restore_task
from ..outputs import (
    ADAPTER_CONFIG,
    CALIBRATION_FILE,
    PARTIAL_SUFFIX,
    RECIPE_FILE,
    RELIABILITY_FILE,
    is_adapter_dir,
)

#: the peft methods whose adapters fold into the weights; the prompt methods add virtual tokens at run time
MERGEABLE = ("lora", "ia3")


def check_mergeable(output_dir: Path, method: str | None, what: str) -> None:
    """A FinetuneError (before any weights load) when the run's peft ``method`` cannot be merged into the
    weights, which ``what`` (e.g. "merged", "exported to ONNX") needs."""
    if method is not None and method not in MERGEABLE:
        raise FinetuneError(
            f"{output_dir}: a {method} adapter adds virtual tokens at run time and cannot be merged into the "
            f"weights, so the run cannot be {what}; use the adapter directory with `eval` and `predict`, or "
            "train with `peft.method: lora` (or ia3) or without peft."
        )


def check_target(target: Path) -> None:
    """``--output``: a new directory (or an empty one), so nothing of the user's is overwritten."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FinetuneError(f"--output {target}: exists and is not empty; give a new directory.")


def export_merged(output_dir: str | Path, target: str | Path) -> Path:
    """`hf-finetune export --merge`: fold a LoRA/IA3 adapter (and its head) into a standalone model directory.

    The result loads with plain ``AutoModelFor...from_pretrained`` and works with `eval` and `predict`. It is
    written next to the target and renamed into place, so a failure leaves nothing half-written.
    """
    import os
    import shutil

    output_dir, target = Path(output_dir), Path(target)
    recipe = load_output_recipe(output_dir)
    if not is_adapter_dir(output_dir):
        raise FinetuneError(
            f"{output_dir}: holds a full model, not a peft adapter ({ADAPTER_CONFIG} missing); it is standalone already."
        )
    check_target(target)
    saved = load_recipe(output_dir / RECIPE_FILE, defaults=False)
    check_mergeable(output_dir, saved.peft.method, "merged")
    task, tokenizer = restore_task(output_dir, recipe)
    model = restore_model(output_dir, recipe, task).merge_and_unload()
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    copy_calibration(output_dir, partial)
    saved.peft = type(saved.peft)()  # the merged model is a plain one
    saved.model.name_or_path = str(target.absolute())
    saved.save(partial / RECIPE_FILE, header=f"# Merged from the adapter in {output_dir.absolute()}\n")
    if target.exists():
        target.rmdir()
    os.replace(partial, target)
    return target


def copy_calibration(output_dir: Path, target: Path) -> None:
    """The run's calibration.json and reliability diagram (the temperature its scores need), when it has them."""
    import shutil

    for name in (CALIBRATION_FILE, RELIABILITY_FILE):
        if (output_dir / name).is_file():
            shutil.copy2(output_dir / name, target / name)
