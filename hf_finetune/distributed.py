"""Multi-process training: launch checks, and the DDP/FSDP settings a recipe's strategy needs.

Launch a recipe on N processes with either launcher; the Trainer (through Accelerate) reads the
environment they set up, so the recipe itself does not change::

    accelerate launch --config_file recipes/accelerate/cpu-2proc.yaml -m hf_finetune train RECIPE
    torchrun --nproc_per_node 2 -m hf_finetune train RECIPE

What is decided here, per run, before the Trainer wraps the model:

- On a machine without an accelerator, a multi-process launch trains on the CPU over gloo
  (``use_cpu`` is derived in `config.build_training_arguments`); a launch whose world size the Trainer
  does not see is an error instead of N unsynchronised single-process runs.
- DDP's unused-parameter detection (``find_unused_parameters``) is on exactly when some trainable
  parameter gets no gradient in a step: found by one forward/backward pass on two real training
  examples (eval mode, RNG state untouched) rather than guessed from the strategy. Frozen parameters
  (``requires_grad=False``: frozen layers, a PEFT base model and the original copy of a
  ``modules_to_save`` head) never enter DDP's reducer, and gradual unfreezing keeps every unit in the
  reducer (see strategies/unfreezing.py), so the usual strategies leave it off and avoid its extra
  graph traversal per step; a model with a dead branch (a pooler its head does not read, say) turns it
  on. A recipe that sets ``training.ddp_find_unused_parameters`` explicitly is checked against the probe.
- Combinations that are known to fail are refused with the field to change: unused parameters with
  reentrant activation checkpointing, FSDP1 without ``use_orig_params`` on a partly frozen model, and a
  DeepSpeed launch without the ``deepspeed`` package.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .errors import FinetuneError, RecipeError
from .hub import env_flag

logger = logging.getLogger("hf_finetune")


def launched_world_size() -> int:
    """The number of processes the launcher (torchrun, accelerate launch) started, 1 without one."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(name)
        if value and value.strip().isdigit():
            return int(value)
    return 1


def deepspeed_requested(args) -> bool:
    return bool(getattr(args, "deepspeed", None)) or env_flag("ACCELERATE_USE_DEEPSPEED")


def fsdp_settings(args) -> dict[str, Any] | None:
    """The FSDP version and ``use_orig_params`` this run will get, and where they are set; None without FSDP.

    From the recipe (``training.fsdp`` + ``training.fsdp_config``: transformers defaults to FSDP2) or from
    an ``accelerate launch`` FSDP config (environment ``FSDP_*``: Accelerate defaults to FSDP1 with
    ``use_orig_params`` off).
    """
    if getattr(args, "fsdp", None):
        config = dict(getattr(args, "fsdp_config", None) or {})
        return {
            "version": int(config.get("version", 2)),
            "use_orig_params": str(config.get("use_orig_params", "true")).lower() in ("1", "true"),
            "field": "training.fsdp_config.use_orig_params",
        }
    if env_flag("ACCELERATE_USE_FSDP"):
        return {
            "version": int(os.environ.get("FSDP_VERSION", "1")),
            "use_orig_params": env_flag("FSDP_USE_ORIG_PARAMS"),
            "field": "fsdp_use_orig_params in the accelerate config",
        }
    return None


def check_launch(args) -> int:
    """Checks that need no model: the world size the Trainer sees, and the packages the launch needs.

    Returns the world size. Initialises the process group on a multi-process launch (via
    ``args.world_size``), which `TrainingArguments.main_process_first` needs anyway.
    """
    launched = launched_world_size()
    world = args.world_size
    if launched > 1 and world != launched:
        raise FinetuneError(
            f"the launcher started {launched} processes but the Trainer sees a world of {world}: each process "
            "would train alone on the whole data. On a machine without a GPU set training.use_cpu=true "
            "(and training.ddp_backend=gloo), or launch with the recipes/accelerate/cpu-2proc.yaml config."
        )
    if deepspeed_requested(args):
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise FinetuneError(
                "this launch asks for DeepSpeed (an accelerate DeepSpeed config or training.deepspeed), but the "
                "`deepspeed` package is not installed: `pip install deepspeed` (it needs a CUDA toolchain), or "
                "use the DDP/FSDP configs in recipes/accelerate/."
            ) from None
    return world


def unused_parameters(model, batch: dict[str, Any]) -> list[str]:
    """Names of trainable parameters that get no gradient from one forward/backward pass on ``batch``.

    Runs in eval mode (no dropout) with the RNG state forked, and clears the gradients afterwards, so
    the training run that follows is the same as without the probe.
    """
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            outputs = model(**inputs)
            loss = outputs.get("loss") if hasattr(outputs, "get") else None
            if loss is None:
                logits = outputs[0] if not hasattr(outputs, "logits") else outputs.logits
                loss = logits.float().sum()
            loss.backward()
        return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        for param in model.parameters():
            param.grad = None
        model.train(was_training)


def configure(model, args, probe_batch, gradual_unfreezing: bool = False) -> dict[str, Any]:
    """Settle the DDP/FSDP settings for ``model`` before the Trainer wraps it; raise for broken combinations.

    ``probe_batch`` is a callable returning a collated batch of real training examples (only called for
    DDP). Sets ``args.ddp_find_unused_parameters`` when the recipe left it unset. Returns what was
    decided (logged, and recorded in the run's results).
    """
    from transformers.training_args import ParallelMode

    decided: dict[str, Any] = {"world_size": args.world_size}
    params = [p for p in model.parameters()]
    trainable = sum(p.numel() for p in params if p.requires_grad)
    partly_frozen = 0 < trainable < sum(p.numel() for p in params)

    fsdp = fsdp_settings(args)
    if fsdp is not None:
        decided["fsdp_version"] = fsdp["version"]
        if fsdp["version"] == 1 and partly_frozen and not fsdp["use_orig_params"]:
            raise RecipeError(
                fsdp["field"],
                "FSDP1 flattens each wrapped module's parameters into one tensor, which cannot mix frozen and "
                "trainable parameters, and this strategy freezes some: set use_orig_params to true, or use "
                "FSDP2 (fsdp_version: 2, as recipes/accelerate/fsdp.yaml does).",
            )
        return decided
    if deepspeed_requested(args) or args.parallel_mode != ParallelMode.DISTRIBUTED or args.world_size < 2:
        return decided

    unused = unused_parameters(model, probe_batch())
    decided["unused_parameters"] = len(unused)
    shown = ", ".join(unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
    if args.ddp_find_unused_parameters is None:
        args.ddp_find_unused_parameters = bool(unused)
    elif not args.ddp_find_unused_parameters and unused:
        raise RecipeError(
            "training.ddp_find_unused_parameters",
            f"is false, but {len(unused)} trainable parameters get no gradient ({shown}): DDP would stop with "
            "'Expected to have finished reduction'. Drop the setting (it is derived) or freeze those modules "
            "with strategy.freeze_modules.",
        )
    if args.ddp_find_unused_parameters and _reentrant_checkpointing(model, args):
        raise RecipeError(
            "training.activation_checkpointing_kwargs",
            "reentrant activation checkpointing (use_reentrant: true) runs the forward pass again inside "
            "backward, which DDP's unused-parameter detection cannot follow (it fails with 'Expected to mark "
            f"a variable ready only once'){'; the unused parameters: ' + shown if unused else ''}. Set "
            "use_reentrant: false (the default), or freeze the unused parameters.",
        )
    decided["find_unused_parameters"] = args.ddp_find_unused_parameters
    logger.info(
        "DDP over %d processes: find_unused_parameters=%s (%s)%s",
        args.world_size,
        args.ddp_find_unused_parameters,
        f"{len(unused)} trainable parameters get no gradient: {shown}"
        if unused
        else "every trainable parameter gets a gradient",
        "; gradual unfreezing keeps all units in the reducer" if gradual_unfreezing else "",
    )
    return decided


def _reentrant_checkpointing(model, args) -> bool:
    on = bool(
        getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", None)
    )
    on = on or bool(getattr(model, "is_gradient_checkpointing", False))
    if not on:
        return False
    kwargs = getattr(args, "activation_checkpointing_kwargs", None) or getattr(
        args, "gradient_checkpointing_kwargs", None
    )
    if isinstance(kwargs, str):
        import json

        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            kwargs = {}
    return bool((kwargs or {}).get("use_reentrant", False))
