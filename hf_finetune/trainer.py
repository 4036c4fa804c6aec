"""The one Trainer: `transformers.Trainer` with a recipe attached. Public hooks only."""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

RECIPE_FILE = "recipe.yaml"


class FinetuneTrainer(Trainer):
    """A `Trainer` that knows the recipe it runs.

    Every directory it saves a model to (the final output and each ``checkpoint-N``) also gets the
    resolved ``recipe.yaml``, so `hf-finetune eval` and `predict` work on any of them.
    The strategies (layer-wise learning rates, unfreezing) plug in through `create_optimizer`
    and callbacks, not through a custom loop.
    """

    def __init__(self, *args, recipe=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.recipe = recipe

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.recipe is not None and self.args.should_save:
            target = Path(output_dir or self.args.output_dir)
            target.mkdir(parents=True, exist_ok=True)
            self.recipe.save(target / RECIPE_FILE, header=recipe_header(self.recipe))


def recipe_header(recipe) -> str:
    from . import __version__

    return (
        f"# Resolved recipe written by hf-finetune {__version__}.\n"
        f"# Reproduce the run:  hf-finetune train {Path(recipe.training.output_dir) / RECIPE_FILE}\n"
    )
