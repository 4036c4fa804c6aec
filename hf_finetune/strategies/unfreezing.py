"""Gradual unfreezing (ULMFiT), driven by a `TrainerCallback`.

Mechanism, chosen so that multi-process data parallel stays correct: every parameter the schedule will
ever train has ``requires_grad=True`` and sits in the optimizer from the first step. PyTorch DDP decides
which parameters it all-reduces when it wraps the model (only those requiring grad at that moment), so
flipping ``requires_grad`` on later would leave the newly unfrozen layers un-synchronised across processes
(each replica would drift on its own), and a parameter without a gradient would stall DDP's reducer unless
``find_unused_parameters`` were on. Instead, while a unit is still "frozen", its gradients are dropped
(``grad = None``) after each backward pass - after DDP's all-reduce and before gradient clipping - so
clipping sees only the training units and AdamW skips those parameters entirely: no update, no weight
decay, no moment estimates until the unit's turn. The price: until a unit unfreezes, its gradients are
still computed, so gradual unfreezing saves no compute (its purpose is to protect pretrained features).

The schedule is a pure function of the Trainer state (epoch or global step), so a resumed run picks up
where it stopped.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from .plan import StrategyPlan

logger = logging.getLogger("hf_finetune")


class GradualUnfreezing(TrainerCallback):
    def __init__(self, plan: StrategyPlan):
        if plan.unfreeze_every is None:
            raise ValueError("the strategy plan has no gradual unfreezing schedule")
        self.plan = plan
        self.every = plan.unfreeze_every
        self.unit = plan.unfreeze_unit
        self.stage: int | None = None
        self._by_stage: list[list] = []  # parameters of stage k+1
        self.held: list = []

    # ------------------------------------------------------------------ schedule
    def stage_at(self, epoch: float, global_step: int) -> int:
        count = int(epoch + 1e-6) if self.unit == "epoch" else global_step
        return min(count // self.every, len(self.plan.stages))

    def _update(self, state) -> None:
        stage = self.stage_at(state.epoch or 0.0, state.global_step)
        if stage == self.stage:
            return
        self.stage = stage
        self.held = [p for params in self._by_stage[stage:] for p in params]
        opened = [
            g.name
            for g in self.plan.groups
            if g.unfreeze_at is not None and g.unfreeze_at <= stage * self.every
        ]
        where = f"{self.unit} {state.epoch:.0f}" if self.unit == "epoch" else f"step {state.global_step}"
        logger.info(
            "gradual unfreezing at %s: stage %d of %d; %s",
            where,
            stage,
            len(self.plan.stages),
            f"training the head plus {', '.join(opened)}" if opened else "training the head only",
        )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        self._by_stage = [[params[n] for n in names] for names in self.plan.stages]
        self.stage = None
        self._update(state)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._update(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._update(state)

    # ------------------------------------------------------------------ called by FinetuneTrainer.training_step
    def drop_held_gradients(self) -> None:
        for param in self.held:
            param.grad = None
