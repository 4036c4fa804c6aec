"""`hf-finetune push`: upload a trained output directory to the Hugging Face Hub, with its model card.

What is uploaded: the top-level files of the output directory that make up the model and its record:
weights (full model or PEFT adapter), config, tokenizer, ``README.md`` (the card, rebuilt for the target
repository), ``recipe.yaml``, ``strategy.json``, the results JSON files, ``trainer_state.json``,
``environment.json``, the training-curve plot and, for calibrated classifiers, ``calibration.json`` (the
temperature `predict` divides the logits by) with ``reliability_diagram.png``. Not uploaded: ``checkpoint-*``
and other subdirectories, ``training_args.bin`` (a pickle; ``recipe.yaml`` is the reproducible record),
``predictions_*.jsonl`` (a test split's inputs are the user's data), hidden, partial and lock files. ``--dry-run`` prints exactly that list and contacts nothing.

`train_and_push` is the training entry of `hf-finetune train` and `hf_finetune.train`: `pipeline.train`
with the push of a recipe's ``hub`` section as its ``after_training`` hook (pipeline never imports this
module).

One commit per push (``create_commit``), so a failed upload changes nothing on the Hub. The token is
`huggingface_hub`'s (``HF_TOKEN`` or `hf auth login`); it is passed to the client and never printed,
logged or written anywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .card import write_card
from .config import Recipe, check_repo_id
from .errors import FinetuneError, first_line
from .export.merge import export_merged
from .hub import check_can_push, hub_token
from .outputs import (
    CALIBRATION_FILE,
    CARD_FILE,
    CLASS_REPORT_FILE,
    CONFUSION_FILE,
    CURVES_FILE,
    ENV_FILE,
    PARTIAL_SUFFIX,
    PREDICTIONS_FILE,
    RECIPE_FILE,
    RELIABILITY_FILE,
    RESULTS_FILE,
    STRATEGY_FILE,
    TRAINER_STATE,
    check_output_dir,
    is_adapter_dir,
)
from .pipeline import train

logger = logging.getLogger("hf_finetune")

#: top-level files never uploaded
EXCLUDED = ("training_args.bin",)
EXCLUDED_SUFFIXES = (PARTIAL_SUFFIX, ".lock", ".tmp")
PREDICTIONS_PREFIX = PREDICTIONS_FILE.split("{", 1)[0]  # predictions_<split>.jsonl
#: files of the training record copied next to a merged model
RECORD_FILES = (
    RECIPE_FILE,
    STRATEGY_FILE,
    RESULTS_FILE,
    "train_results.json",
    "eval_results.json",
    TRAINER_STATE,
    ENV_FILE,
    CURVES_FILE,
    CLASS_REPORT_FILE,
    CONFUSION_FILE,
    CALIBRATION_FILE,
    RELIABILITY_FILE,
)


@dataclass
class PushPlan:
    repo_id: str
    folder: Path
    files: list[str]
    revision: str | None = None
    private: bool = False
    merged: bool = False
    sizes: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        where = f"{self.repo_id}" + (f" (branch {self.revision})" if self.revision else "")
        total = sum(self.sizes.values())
        lines = [
            f"would upload {len(self.files)} files ({total / 1e6:.1f} MB) to {where}"
            + (" as a private repository" if self.private else "")
            + (", the adapter merged into the base weights" if self.merged else "")
            + ":"
        ]
        lines += [f"  {name}  ({self.sizes.get(name, 0):,} bytes)" for name in self.files]
        return "\n".join(lines)


def upload_files(folder: Path) -> list[str]:
    """The files of ``folder`` that a push uploads (see the module docstring), sorted."""
    names = []
    for path in sorted(Path(folder).iterdir()):
        name = path.name
        if not path.is_file() or path.is_symlink():
            continue
        if name.startswith(".") or name in EXCLUDED or name.endswith(EXCLUDED_SUFFIXES):
            continue
        if name.startswith(PREDICTIONS_PREFIX):  # they hold the user's own test inputs: data, not the model
            continue
        names.append(name)
    return names


def push(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    merge: bool = False,
    dry_run: bool = False,
    commit_message: str | None = None,
) -> dict:
    """Push ``output_dir`` to ``repo_id``; with ``dry_run``, only return what would be pushed.

    Returns ``{"repo_id", "files", "commit_url"|None, "dry_run"}``.
    """
    output_dir = Path(output_dir)
    check_repo_id(repo_id, "--repo-id")
    check_output_dir(output_dir)
    if merge and not is_adapter_dir(output_dir):
        raise FinetuneError(
            f"--merge: {output_dir} holds a full model, not a PEFT adapter; push it without --merge."
        )
    if not dry_run:
        check_can_push()

    with tempfile.TemporaryDirectory(prefix="hf-finetune-push-") as scratch:
        folder = Path(scratch) / "model"
        if merge:
            export_merged(output_dir, folder)
            for name in RECORD_FILES:
                source = output_dir / name
                if source.is_file() and not (folder / name).exists():
                    shutil.copy2(source, folder / name)
            # the merged model's recipe points at the merged folder; the card's base model is the run's
            shutil.copy2(output_dir / RECIPE_FILE, folder / RECIPE_FILE)
        else:
            folder.mkdir()
            for name in upload_files(output_dir):
                try:  # a hard link: no copy of multi-GB weights
                    os.link(output_dir / name, folder / name)
                except OSError:
                    shutil.copy2(output_dir / name, folder / name)
        # the card names the repository it is pushed to; the output dir's own card is left as written
        (folder / CARD_FILE).unlink(missing_ok=True)
        write_card(folder, repo_id=repo_id, merged_from_adapter=merge)
        plan = PushPlan(
            repo_id=repo_id,
            folder=folder,
            files=upload_files(folder),
            revision=revision,
            private=private,
            merged=merge,
        )
        plan.sizes = {name: (folder / name).stat().st_size for name in plan.files}
        if dry_run:
            return {
                "repo_id": repo_id,
                "files": plan.files,
                "sizes": plan.sizes,
                "commit_url": None,
                "dry_run": True,
                "description": plan.describe(),
            }
        commit_url = _upload(plan, commit_message or f"Upload {output_dir.resolve().name} with hf-finetune")
    return {
        "repo_id": repo_id,
        "files": plan.files,
        "sizes": plan.sizes,
        "commit_url": commit_url,
        "dry_run": False,
    }


def _upload(plan: PushPlan, message: str) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    # HF_ENDPOINT is read here rather than at import, so a private Hub (or a test server) set late applies
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=hub_token())
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(plan.folder / name)) for name in plan.files
    ]
    try:
        # private=None: a new repository gets the namespace default; an existing one keeps its visibility
        api.create_repo(plan.repo_id, private=plan.private or None, exist_ok=True, repo_type="model")
        if plan.revision and plan.revision != "main":
            api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
        info = api.create_commit(
            plan.repo_id, operations=operations, commit_message=message, revision=plan.revision
        )
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = {
            401: " The token was refused: log in again (`hf auth login`) or check HF_TOKEN.",
            403: " The token cannot write to this repository: use a write token, or a namespace you own.",
        }.get(status, "")
        raise FinetuneError(f"push to {plan.repo_id} failed: {first_line(exc)}.{hint}") from None
    except OSError as exc:  # connection refused, DNS, timeouts
        raise FinetuneError(f"push to {plan.repo_id} failed: the Hub could not be reached ({exc}).") from None
    logger.info("pushed %d files to %s", len(plan.files), plan.repo_id)
    return str(getattr(info, "commit_url", info))


# ------------------------------------------------------------------------------------------------
# Training that ends with a push
# ------------------------------------------------------------------------------------------------
def train_and_push(recipe: Recipe, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """`hf-finetune train` and `hf_finetune.train`: `pipeline.train`, then, with ``hub.push``, the push of the
    finished output directory (main process only). A missing token or offline mode fails before training."""
    if not recipe.hub.push:
        return train(recipe, callbacks)
    check_can_push()
    return train(recipe, callbacks, after_training=push_after_training)


def push_after_training(recipe: Recipe, output_dir: Path) -> None:
    """Push a finished run as its ``hub`` section says; a failure says how to retry, the model being saved."""
    hub = recipe.hub
    try:
        result = push(output_dir, hub.repo_id, private=hub.private, revision=hub.revision, merge=hub.merge)
    except FinetuneError as exc:
        retry = f"hf-finetune push {output_dir} --repo-id {hub.repo_id}" + (" --merge" if hub.merge else "")
        raise FinetuneError(
            f"{exc} The trained model is saved in {output_dir}; retry with `{retry}`."
        ) from None
    logger.info("pushed to %s: %s", hub.repo_id, result["commit_url"])
