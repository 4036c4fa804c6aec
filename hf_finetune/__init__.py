"""hf-finetune: fine-tune pretrained transformers for NLP tasks from one YAML recipe.

from hf_finetune import load_recipe, run
metrics = run(load_recipe("recipes/glue/sst2.yaml", ["training.learning_rate=3e-5"]))
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hf-finetune")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

# Imported on first use, so `hf-finetune recipes` or `import hf_finetune` stays fast.
# public name -> (module, attribute)
_API = {
    "Recipe": ("config", "Recipe"),
    "load_recipe": ("config.load", "load_recipe"),
    "DataError": ("errors", "DataError"),
    "FinetuneError": ("errors", "FinetuneError"),
    "RecipeError": ("errors", "RecipeError"),
    "train": ("publish", "train_and_push"),  # train, then push when the recipe's hub section says so
    "run": ("publish", "train_and_push"),
    "validate": ("pipeline", "validate"),
    "evaluate_output": ("inference", "evaluate_output"),
    "predict_output": ("inference", "predict_output"),
}
__all__ = sorted([*_API, "__version__"])


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'hf_finetune' has no attribute {name!r}")
    module, attribute = _API[name]
    return getattr(import_module(f".{module}", __name__), attribute)
