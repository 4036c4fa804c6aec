"""hf-finetune's defaults for the `training` section: what a recipe that leaves a Trainer setting out gets.

transformers' `TrainingArguments` defaults are general-purpose: batches of 8 in random order, each padded to its
longest example; a loss logged every 500 steps (none at all in a run of 313); no evaluation during training; a
checkpoint every 500 steps, all kept; fp32 on hardware that computes bf16. A recipe that names only the task, the
model, the data files and an output dir should train the way the bundled recipes do, so these fill in what the
recipe leaves out. A value the recipe sets (even to transformers' own default) always wins. The defaults applied
are part of the run: `validate` lists them and `recipe.yaml` records them, so a saved recipe does not depend on
this table (nor on the next version of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import hardware
from .coerce import Override
from .schema import plain

#: the learning rates: full fine-tuning of an encoder, and an adapter (LoRA, IA3, ...) on a frozen one. 1e-4 is
#: the bundled recipes' rate on the large sets (SST-2, QNLI, QQP, MNLI, CoNLL, SQuAD); at batch 32, transformers'
#: 5e-5 left one epoch 2 points short (docs/figures.md#package-defaults). Models of 300M parameters and more
#: usually want 1e-5 to 3e-5.
FULL_LR = 1e-4
ADAPTER_LR = 1e-3


_SAVE_STEPS = "applied when `save_strategy` is `steps`: `eval_steps` when evaluating by steps, else 0.25"


@dataclass(frozen=True)
class Default:
    field: str
    value: Any
    why: str
    when: str = ""  # when it applies, or what instead, where not always (the reference says so)


def training_defaults(
    training: dict[str, Any], evaluates: bool, adapter: bool = False, bf16_native: bool | None = None
) -> list[Default]:
    """The defaults for the fields ``training`` (the recipe's own values, command-line overrides still as
    typed) leaves out, in order.

    ``evaluates``: the data has an evaluation split; ``adapter``: the recipe trains a `peft` adapter;
    ``bf16_native``: whether the training device computes bf16 natively (None: find out, when it matters).
    """
    given = {key: value.parsed() if isinstance(value, Override) else value for key, value in training.items()}
    if adapter:
        lr = Default(
            "learning_rate", ADAPTER_LR, "an adapter on a frozen model (the bundled LoRA recipes' rate)"
        )
    else:
        lr = Default(
            "learning_rate",
            FULL_LR,
            "full fine-tuning of a small encoder; 1e-5 to 3e-5 for models of 300M+ parameters",
            f"{ADAPTER_LR:g} instead when the recipe trains a `peft` adapter",
        )
    table = [
        Default("per_device_train_batch_size", 32, "batches of 32"),
        Default("per_device_eval_batch_size", 64, "evaluation batches of 64"),
        lr,
        Default("warmup_steps", 0.06, "warm up over the first 6% of the steps"),
        Default("weight_decay", 0.01, "AdamW weight decay 0.01"),
        Default(
            "train_sampling_strategy",
            "group_by_length",
            "batches of similar lengths: less padding, faster",
        ),
        Default("logging_steps", 0.02, "a loss every 2% of the steps: 50 points on any run's curves"),
        Default("report_to", "none", "no experiment tracker unless one is named"),
    ]
    if evaluates:
        table.append(
            Default(
                "eval_strategy",
                "steps",
                "evaluate during training",
                "applied when the data has an evaluation split",
            )
        )
    settings = {**{d.field: d.value for d in table}, **given}
    evaluation = _text(settings.get("eval_strategy", "no"))
    saving = _text(settings.get("save_strategy", "steps"))
    if evaluation == "steps" and "eval_steps" not in given:
        table.append(
            Default(
                "eval_steps",
                0.25,
                "an evaluation every 25% of the steps",
                "applied when `eval_strategy` is `steps`",
            )
        )
    if saving == "steps":
        if evaluation == "steps":  # a checkpoint at each evaluation, so the best one can be loaded at the end
            every = given.get("eval_steps", 0.25)
            table.append(Default("save_steps", every, "a checkpoint at each evaluation", _SAVE_STEPS))
        else:
            table.append(Default("save_steps", 0.25, "a checkpoint every 25% of the steps", _SAVE_STEPS))
    if saving != "no":
        table.append(
            Default(
                "save_total_limit",
                2,
                "keep the 2 newest checkpoints",
                "applied unless `save_strategy` is `no`",
            )
        )
    if "bf16" not in given and not given.get("fp16"):
        if bf16_native is None:
            bf16_native = _bf16_native(bool(given.get("use_cpu")))
        if bf16_native:
            table.append(
                Default(
                    "bf16",
                    True,
                    "bf16 mixed precision where the hardware computes it natively",
                    "applied on a GPU with bf16 or a CPU with AVX512-BF16/AMX, not where bf16 would be emulated",
                )
            )
    return [d for d in table if d.field not in given]


def documented_defaults() -> dict[str, Default]:
    """Every default the table can apply (data with an evaluation split, bf16 hardware), by field: the docs."""
    return {d.field: d for d in training_defaults({}, evaluates=True, bf16_native=True)}


def table_key() -> str:
    """The defaults table as text: part of what a bench cell or a search must match to reuse earlier runs (a
    recipe that leaves a field out trains differently when the table changes)."""
    return repr(sorted((d.field, d.value) for d in documented_defaults().values()))


def describe(applied: list[Default]) -> str:
    """What `validate` says about the defaults a recipe got."""
    return ", ".join(
        f"{d.field}={d.value:g}" if isinstance(d.value, float) else f"{d.field}={d.value}" for d in applied
    )


def _bf16_native(use_cpu: bool) -> bool:
    """Whether the run trains on hardware that computes bf16 natively: a GPU with bf16 (Ampere and later), or,
    without an accelerator (or with ``use_cpu``), a CPU with AVX512-BF16 or AMX, where bf16 autocast trained
    MiniLM 1.26x faster than fp32 (docs/figures.md#cpu-precision). A CPU without them would only emulate it."""
    accelerator = None if use_cpu else hardware.accelerator()
    if accelerator is None:
        return hardware.cpu_has_native("bf16")
    if accelerator != "cuda":
        return False
    import torch

    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def _text(value: Any) -> str:
    """A strategy setting (an enum of transformers, or text) as its text."""
    return str(plain(value))
