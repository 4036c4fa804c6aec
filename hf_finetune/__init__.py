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
_API = {
    "Recipe": "config",
    "load_recipe": "config",
    "DataError": "errors",
    "FinetuneError": "errors",
    "RecipeError": "errors",
    "train": "pipeline",
    "run": "pipeline",
    "validate": "pipeline",
    "evaluate_output": "pipeline",
    "predict_output": "pipeline",
}
__all__ = sorted([*_API, "__version__"])


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'hf_finetune' has no attribute {name!r}")
    module = import_module(f".{_API[name]}", __name__)
    return getattr(module, "train" if name == "run" else name)
