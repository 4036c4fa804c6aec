"""The strategy as data: which parameters train, at which learning rate and weight decay, from when.

`make_plan` is a pure function of a model (real or on the ``meta`` device) and the recipe's ``strategy``
section. The same plan is printed by `hf-finetune plan`, checked by `hf-finetune validate` before any
weights load, applied to the loaded model (`apply`) and turned into the optimizer's parameter groups
(`optimizer_groups`) by `FinetuneTrainer.create_optimizer`.

Rules (documented in docs/strategies.md):

- frozen: ``freeze_all_but_head`` (every part but the head), ``freeze_embeddings``, ``freeze_layers``
  (bottom N, or all but the top |N|), ``freeze_modules`` regexes. Frozen parameters get
  ``requires_grad=False`` and never enter the optimizer.
- learning rates: the head at ``lr * head_lr_multiplier``; with ``layerwise_lr_decay = d`` and L layers,
  the pooler at ``lr``, layer l (0 = bottom) at ``lr * d**(L - l)``, the embeddings at ``lr * d**(L + 1)``.
- weight decay: the Trainer's rule (none on biases and norm weights).
- gradual unfreezing: units top down are the head, then the top layer with the pooler, then each layer
  below, then the embeddings; units left frozen by the rules above are skipped. Unit k starts training
  after ``k * every`` epochs or optimizer steps.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..config.schema import PeftSection, StrategyConfig
from ..errors import RecipeError
from .layers import EMBEDDINGS, HEAD, POOLER, PROMPT, Layout, LayoutError, discover_layout, layer_part

logger = logging.getLogger(__name__)


@dataclass
class GroupPlan:
    name: str
    part: str
    modules: list[str]
    param_names: list[str]
    params: int
    trainable: bool
    lr: float | None
    weight_decay: float | None
    #: epoch or optimizer step at which this group starts training (gradual unfreezing), else None
    unfreeze_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modules": self.modules,
            "params": self.params,
            "trainable": self.trainable,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "unfreeze_at": self.unfreeze_at,
        }


@dataclass
class StrategyPlan:
    description: str
    architecture: str
    num_layers: int
    groups: list[GroupPlan]
    trainable_params: int
    total_params: int
    #: gradual unfreezing: (every, unit) and, per stage k >= 1, the parameter names unfrozen then
    unfreeze_every: int | None = None
    unfreeze_unit: str | None = None
    stages: list[list[str]] = field(default_factory=list)
    #: group learning rates differ from training.learning_rate (LLRD or a head multiplier)
    custom_lr: bool = False

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    def summary(self) -> str:
        return (
            f"{self.description}: trains {self.trainable_params:,} of {self.total_params:,} parameters "
            f"({self.trainable_percent:.2f}%)"
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "strategy": self.description,
            "architecture": self.architecture,
            "num_layers": self.num_layers,
            "groups": [g.to_dict() for g in self.groups],
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_percent": round(self.trainable_percent, 4),
        }
        if self.unfreeze_every is not None:
            out["gradual_unfreezing"] = {
                "every": self.unfreeze_every,
                "unit": self.unfreeze_unit,
                "schedule": [
                    {
                        "at": k * self.unfreeze_every,
                        "groups": [g.name for g in self.groups if g.unfreeze_at == at],
                    }
                    for k in range(1, len(self.stages) + 1)
                    for at in [k * self.unfreeze_every]
                ],
            }
        return out

    def format_table(self) -> str:
        """The table `hf-finetune plan` prints: one row per parameter group, then the trainable share."""
        unit = {"epoch": "epoch", "steps": "step"}.get(self.unfreeze_unit or "", "")
        header = (
            "group",
            "params",
            "trainable",
            "lr",
            "weight_decay",
            *(["from " + unit] if unit else []),
            "modules",
        )
        rows = [header]
        for g in self.groups:
            row = [
                g.name,
                f"{g.params:,}",
                "yes" if g.trainable else "frozen",
                "-" if g.lr is None else f"{g.lr:.3g}",
                "-" if g.weight_decay is None else f"{g.weight_decay:g}",
            ]
            if unit:
                row.append("-" if not g.trainable else str(g.unfreeze_at or 0))
            row.append(", ".join(g.modules))
            rows.append(tuple(row))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        lines = [f"strategy: {self.description} ({self.architecture}, {self.num_layers} layers)"]
        for r in rows:
            cells = [c.rjust(w) if 0 < i < 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
            lines.append("  ".join(cells) + "  " + r[-1])
        lines.append(
            f"trainable {self.trainable_params:,} of {self.total_params:,} parameters ({self.trainable_percent:.2f}%)"
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------ applying it
    def apply(self, model) -> None:
        """Set ``requires_grad`` as planned. Gradually unfrozen groups keep it on (see unfreezing.py)."""
        trainable = {name for g in self.groups if g.trainable for name in g.param_names}
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)

    def optimizer_groups(self, model) -> list[dict[str, Any]]:
        """torch optimizer parameter groups: trainable parameters only, each group with its lr and decay."""
        params = dict(model.named_parameters())
        missing = [n for g in self.groups if g.trainable for n in g.param_names if n not in params]
        if missing:
            raise RuntimeError(f"the strategy plan names parameters the model does not have: {missing[:5]}")
        return [
            {
                "params": [params[n] for n in g.param_names],
                "lr": g.lr,
                "weight_decay": g.weight_decay,
                "name": g.name,
            }
            for g in self.groups
            if g.trainable
        ]


def default_decay_names(model) -> set[str]:
    """The Trainer's weight-decay rule (no decay on biases and norm weights), without a Trainer."""
    from transformers import Trainer

    return set(Trainer.get_decay_parameter_names(None, model))


def make_plan(
    model,
    strategy: StrategyConfig,
    learning_rate: float,
    weight_decay: float,
    decay_names: set[str] | None = None,
    peft: PeftSection | None = None,
) -> StrategyPlan:
    """Plan ``strategy`` on ``model``; raises RecipeError naming the field when it cannot apply.

    ``model`` may be a `peft.PeftModel` (``peft`` is then its recipe section): which parameters train is
    peft's decision (adapters, the head in modules_to_save, virtual tokens); the plan adds the learning
    rates (LLRD, head multiplier, LoRA+) and weight decay on top.
    """
    decay_names = default_decay_names(model) if decay_names is None else decay_names
    wrapped = peft is not None and peft.enabled
    layout = _peft_layout(model, strategy) if wrapped else _layout(model, strategy)
    total = sum(p.numel() for _, p in model.named_parameters())
    num_layers = layout.num_layers

    frozen = _frozen_names(layout, strategy)
    if wrapped:
        frozen |= {name for name, param in model.named_parameters() if not param.requires_grad}
    loraplus = peft.loraplus_lr_ratio if wrapped else None
    stage_of = _stages(layout, strategy, frozen)
    every = strategy.gradual_unfreezing.every if strategy.gradual_unfreezing else None

    decay = strategy.layerwise_lr_decay

    def lr_of(part: str) -> float:
        if part == HEAD:
            return learning_rate * strategy.head_lr_multiplier
        if decay == 1.0 or part in (POOLER, PROMPT):
            return learning_rate
        if part == EMBEDDINGS:
            return learning_rate * decay ** (num_layers + 1)
        index = int(part.split(".")[1])
        return learning_rate * decay ** (num_layers - index)

    sizes = {name: p.numel() for name, p in model.named_parameters()}
    groups: list[GroupPlan] = []
    for part in layout.order():
        members = layout.params_of(part)
        frozen_members = [n for n in members if n in frozen]
        if frozen_members:
            groups.append(
                GroupPlan(
                    name=f"{part} (frozen)",
                    part=part,
                    modules=layout.modules.get(part, []),
                    param_names=frozen_members,
                    params=sum(sizes[n] for n in frozen_members),
                    trainable=False,
                    lr=None,
                    weight_decay=None,
                )
            )
        live = [n for n in members if n not in frozen]
        by_stage: dict[int, list[str]] = {}
        for n in live:
            by_stage.setdefault(stage_of.get(n, 0), []).append(n)
        for stage, stage_names in sorted(by_stage.items()):
            for is_b in (False, True) if loraplus else (False,):
                for with_decay in (True, False):
                    chosen = [
                        n
                        for n in stage_names
                        if (n in decay_names) == with_decay and (not loraplus or _is_lora_b(n) == is_b)
                    ]
                    if not chosen:
                        continue
                    name = part + (" lora_B" if is_b else "") + ("" if with_decay else " (no decay)")
                    groups.append(
                        GroupPlan(
                            name=name,
                            part=part,
                            modules=layout.modules.get(part, []),
                            param_names=chosen,
                            params=sum(sizes[n] for n in chosen),
                            trainable=True,
                            lr=lr_of(part) * (loraplus if is_b else 1.0),
                            weight_decay=weight_decay if with_decay else 0.0,
                            unfreeze_at=stage * every if (every and stage) else None,
                        )
                    )
    trainable = sum(g.params for g in groups if g.trainable)
    if trainable == 0:
        raise RecipeError(
            "strategy",
            f"freezes all {total:,} parameters of {layout.architecture}, so nothing would train; "
            "unfreeze something (e.g. drop `freeze_all_but_head`, lower `freeze_layers`, or narrow `freeze_modules`).",
        )
    stages: list[list[str]] = []
    if every:
        last = max(stage_of.values(), default=0)
        stages = [[n for n, s in stage_of.items() if s == k] for k in range(1, last + 1)]
    assert set(layout.parts) == {n for g in groups for n in g.param_names}
    description = describe(strategy, num_layers)
    if wrapped:
        description = describe_peft(peft) + ("" if description == "full fine-tuning" else f"; {description}")
    return StrategyPlan(
        description=description,
        architecture=layout.architecture,
        num_layers=num_layers,
        groups=groups,
        trainable_params=trainable,
        total_params=total,
        unfreeze_every=every,
        unfreeze_unit=strategy.gradual_unfreezing.unit if strategy.gradual_unfreezing else None,
        stages=stages,
        custom_lr=decay != 1.0 or strategy.head_lr_multiplier != 1.0 or bool(loraplus),
    )


def _is_lora_b(name: str) -> bool:
    return ".lora_B." in name or ".lora_embedding_B." in name


def _peft_layout(model, strategy: StrategyConfig) -> Layout:
    """The layout of the model inside a PeftModel, under the PeftModel's parameter names."""
    inner = model.get_base_model()
    layout = _layout(inner, strategy)
    inner_names = {id(p): n for n, p in inner.named_parameters()}
    parts = {}
    for name, param in model.named_parameters():
        inner_name = inner_names.get(id(param))
        parts[name] = layout.parts[inner_name] if inner_name is not None else PROMPT
    modules = dict(layout.modules)
    if PROMPT in parts.values():
        modules[PROMPT] = ["prompt_encoder"]
    return Layout(
        layout.architecture, layout.num_layers, parts, modules, layout.layer_sharing, layout.layers_module
    )


def describe_peft(peft: PeftSection) -> str:
    if peft.method == "lora":
        extras = [x for x, on in (("DoRA", peft.use_dora), ("rsLoRA", peft.use_rslora)) if on]
        if peft.loraplus_lr_ratio:
            extras.append(f"LoRA+ x{peft.loraplus_lr_ratio:g}")
        return f"LoRA r={peft.r} alpha={peft.alpha}" + (f" ({', '.join(extras)})" if extras else "")
    if peft.method == "ia3":
        return "IA3"
    return f"{peft.method} ({peft.num_virtual_tokens} virtual tokens)"


def _layout(model, strategy: StrategyConfig) -> Layout:
    layered = {
        "strategy.freeze_layers": strategy.freeze_layers != 0,
        "strategy.layerwise_lr_decay": strategy.layerwise_lr_decay != 1.0,
        "strategy.gradual_unfreezing": strategy.gradual_unfreezing is not None,
    }
    in_use = [name for name, used in layered.items() if used]
    try:
        layout = discover_layout(model)
    except LayoutError as exc:
        if in_use or strategy.freeze_embeddings or strategy.freeze_all_but_head:
            field_name = in_use[0] if in_use else "strategy"
            raise RecipeError(
                field_name, f"{exc} Use `strategy.freeze_modules` (regexes over parameter names) instead."
            ) from None
        # Full fine-tuning (perhaps with freeze_modules / a head multiplier) needs no layer structure.
        parts = {name: HEAD for name, _ in model.named_parameters()}
        return Layout(type(model).__name__, 0, parts, {HEAD: [type(model).__name__]})
    if layout.layer_sharing and in_use:
        raise RecipeError(
            in_use[0],
            f"{layout.layer_sharing}. Use `strategy.freeze_embeddings`, `freeze_all_but_head` or "
            "`freeze_modules` with this model, or pick a checkpoint with separate layers.",
        )
    depth = layout.num_layers
    if abs(strategy.freeze_layers) > depth:
        raise RecipeError(
            "strategy.freeze_layers",
            f"is {strategy.freeze_layers} but {layout.architecture} has {depth} layers; "
            f"give a number from -{depth} to {depth}.",
        )
    return layout


def _frozen_names(layout: Layout, strategy: StrategyConfig) -> set[str]:
    frozen_parts: set[str] = set()
    if strategy.freeze_all_but_head:
        frozen_parts |= {p for p in layout.order() if p != HEAD}
    if strategy.freeze_embeddings:
        frozen_parts.add(EMBEDDINGS)
    n = strategy.freeze_layers
    count = n if n >= 0 else layout.num_layers + n
    frozen_parts |= {layer_part(i) for i in range(count)}
    frozen = {name for name, part in layout.parts.items() if part in frozen_parts}
    for i, pattern in enumerate(strategy.freeze_modules):
        rx = re.compile(pattern)
        matched = {name for name in layout.parts if rx.search(name)}
        if not matched:
            examples = ", ".join(list(layout.parts)[:: max(1, len(layout.parts) // 4)][:4])
            raise RecipeError(
                f"strategy.freeze_modules[{i}]",
                f"{pattern!r} matches no parameter of {layout.architecture}; names look like {examples} "
                "(`hf-finetune plan RECIPE` lists the modules).",
            )
        frozen |= matched
    return frozen


def _stages(layout: Layout, strategy: StrategyConfig, frozen: set[str]) -> dict[str, int]:
    """Gradual unfreezing: parameter name -> stage (0 trains from the start). Empty when off."""
    if strategy.gradual_unfreezing is None:
        return {}
    depth = layout.num_layers

    def raw_stage(part: str) -> int:
        if part == HEAD:
            return 0
        if part == POOLER:
            return 1  # with the top layer
        if part == EMBEDDINGS:
            return depth + 1
        return depth - int(part.split(".")[1])

    live = {name: raw_stage(part) for name, part in layout.parts.items() if name not in frozen}
    ranks = {raw: rank for rank, raw in enumerate(sorted(set(live.values())))}
    stages = {name: ranks[raw] for name, raw in live.items()}
    if max(stages.values(), default=0) == 0:
        raise RecipeError(
            "strategy.gradual_unfreezing",
            "has nothing to unfreeze: every part but the first is frozen by the other strategy settings; "
            "drop `gradual_unfreezing` or freeze less.",
        )
    return stages


def describe(strategy: StrategyConfig, num_layers: int) -> str:
    parts = []
    if strategy.freeze_all_but_head:
        parts.append("head only (linear probing)")
    else:
        frozen = []
        if strategy.freeze_embeddings:
            frozen.append("embeddings")
        n = strategy.freeze_layers
        if n > 0:
            frozen.append(f"bottom {n} of {num_layers} layers")
        elif n < 0:
            frozen.append(f"all but the top {-n} of {num_layers} layers")
        if frozen:
            parts.append("freeze " + " + ".join(frozen))
    if strategy.freeze_modules:
        parts.append("freeze modules " + ", ".join(repr(p) for p in strategy.freeze_modules))
    if strategy.layerwise_lr_decay != 1.0:
        parts.append(f"layer-wise lr decay {strategy.layerwise_lr_decay:g}")
    if strategy.head_lr_multiplier != 1.0:
        parts.append(f"head lr x{strategy.head_lr_multiplier:g}")
    if strategy.gradual_unfreezing is not None:
        g = strategy.gradual_unfreezing
        unit = g.unit if g.unit == "steps" else "epoch"
        parts.append(
            f"gradual unfreezing every {g.every} {unit if g.every == 1 or unit == 'steps' else 'epochs'}"
        )
    return "; ".join(parts) if parts else "full fine-tuning"
