"""`hf-finetune export RUN --format onnx [--quantize int8] --output DIR`: a run as one ONNX file, checked.

The steps, in order:

1. every input is checked before any weights load: the run directory, the `--output` directory (new or
   empty), the peft method (LoRA/IA3 merge into the weights; the prompt methods cannot), the quantisation
   method, the `onnx` extra, and the evaluation split that parity runs on (read and tokenised here);
2. the model is loaded as `eval` loads it (a peft adapter merged into its base), in fp32 on the CPU;
3. `torch.onnx.export` (the dynamo exporter) traces it on a padded batch of two, with the batch and
   sequence axes dynamic (named ``batch`` and ``sequence``), into one self-contained file: graph inputs
   named as the model's arguments the tokenizer produces, outputs ``logits`` (QA: ``start_logits`` and
   ``end_logits``);
4. onnxruntime's transformer optimizer fuses what it can for BERT-like models (LayerNorm + residual, bias +
   GELU; the exact GELU kept), counted into export.json; other model types are left unfused, with a note;
5. ``--quantize int8``: dynamic int8 weights (`hf_finetune.export.quantize`);
6. parity (`hf_finetune.export.parity`): the export, run by onnxruntime (`OrtModel`), against the PyTorch
   model on the evaluation split;
7. export.json records all of it. The directory is written as ``DIR.partial`` and renamed to ``DIR`` only
   when complete and parity holds; otherwise nothing is left.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from ..card import hub_base_model
from ..config.load import load_recipe
from ..errors import FinetuneError, RecipeError
from ..fewshot.model import is_few_shot_dir
from ..inference import load_output_recipe, restore_model, restore_task
from ..outputs import EXPORT_FILE, PARTIAL_SUFFIX, RECIPE_FILE, atomic_write_text, is_adapter_dir
from . import parity
from .merge import check_mergeable, check_target, copy_calibration
from .quantize import check_method, quantize
from .runtime import INSTALL_HINT, ONNX_FILE, OrtModel, is_onnx_dir

logger = logging.getLogger(__name__)

#: the model inputs a graph may take, in the order the graph declares them
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: the dimension names of the dynamic axes
AXES = {0: "batch", 1: "sequence"}
#: transformers model types -> onnxruntime's optimizer model type that fuses them (BERT-like encoders)
FUSIONS = {name: "bert" for name in ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra")}
#: the packages the `onnx` extra installs (import name, distribution name)
REQUIRED = (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime"))
VERSIONS = ("hf-finetune", "torch", "transformers", "onnx", "onnxscript", "onnxruntime")
WEIGHTS = "model.safetensors"


def require_onnx() -> None:
    """The `onnx` extra is installed, else a FinetuneError saying how to install it."""
    missing = [dist for module, dist in REQUIRED if find_spec(module) is None]
    if missing:
        raise FinetuneError(
            f"--format onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: `{INSTALL_HINT}`."
        )


def export_onnx(
    run_dir: str | Path,
    target: str | Path,
    quantization: str | None = None,
    parity_examples: int | None = None,
    tolerance: parity.Tolerance | None = None,
) -> dict[str, Any]:
    """Export the run in ``run_dir`` to the new directory ``target`` as ONNX (``quantization``: None for fp32,
    or "int8"), checked on the first ``parity_examples`` examples of its evaluation split (None: all of
    them; 0: no check). Returns what export.json holds. Raises `parity.ParityError` (exit 1) when the check
    fails, FinetuneError (exit 2) on bad input, before any weights load."""
    run_dir, target = Path(run_dir), Path(target)
    tolerance = tolerance or parity.Tolerance()
    check_method(quantization)
    if parity_examples is not None and parity_examples < 0:
        raise FinetuneError(f"--parity-examples: must be 0 (no check) or more, got {parity_examples}.")
    if is_onnx_dir(run_dir):
        raise FinetuneError(
            f"{run_dir}: is an ONNX export already (it holds {ONNX_FILE}); export the training run it came "
            "from (export.json names it)."
        )
    recipe = load_output_recipe(run_dir)  # a run directory with a saved model
    if is_few_shot_dir(run_dir):
        raise FinetuneError(
            f"{run_dir}: is a few-shot run (`few_shot.method: {recipe.few_shot.method}`: a sentence encoder and a "
            "logistic regression), which `hf-finetune export` does not convert; it loads with "
            "`setfit.SetFitModel.from_pretrained`, and setfit's `setfit.exporters.onnx.export_onnx` exports it."
        )
    check_target(target)
    saved = load_recipe(run_dir / RECIPE_FILE, defaults=False)
    peft = saved.peft.method if is_adapter_dir(run_dir) else None
    check_mergeable(run_dir, peft, "exported to ONNX")
    require_onnx()
    task, tokenizer = restore_task(run_dir, recipe)
    check = _parity_data(task, recipe, tokenizer, parity_examples)  # the data is read before the weights

    model = restore_model(run_dir, recipe, task)
    if peft is not None:
        model = model.merge_and_unload()
    model = model.to("cpu").float().eval()
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        info = _write(model, task, tokenizer, run_dir, saved, partial, target, quantization, peft)
        if check is None:
            info["parity"] = {"skipped": _no_parity_reason(recipe, parity_examples)}
        else:
            split, examples, data = check
            reference = parity.predict(
                task, model, tokenizer, data, recipe.training.per_device_eval_batch_size
            )
            del model
            exported = parity.predict(
                task, OrtModel.from_dir(partial), tokenizer, data, recipe.training.per_device_eval_batch_size
            )
            report = parity.compare(task, recipe, split, examples, data, reference, exported, tolerance)
            found = parity.problems(report, tolerance, quantized=quantization is not None)
            report["passed"] = not found
            info["parity"] = report
            if found:
                raise parity.ParityError(
                    f"parity: the {info['precision']} ONNX export disagrees with the PyTorch model on "
                    f"{split} ({examples} examples): {'; '.join(found)}. Nothing was written to {target}."
                )
        atomic_write_text(partial / EXPORT_FILE, json.dumps(info, indent=2) + "\n")
        if target.exists():
            target.rmdir()  # check_target: an empty directory
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return info


def _parity_data(task, recipe, tokenizer, examples: int | None):
    """(split, examples, tokenised rows) that parity runs on: the first ``examples`` of the run's evaluation
    split (None: all); None when there is nothing to check (``examples`` 0, or no evaluation split)."""
    if examples == 0 or not recipe.data.eval_splits:
        if examples is None:
            logger.warning("the run's recipe names no evaluation split: the export's parity is not checked")
        return None
    split = recipe.data.eval_splits[0]
    recipe.data.eval_split = split
    if recipe.data.test_split == split:
        recipe.data.test_split = None
    recipe.data.max_eval_samples = examples
    raw = task.load([split])
    task.prepare(raw)
    return split, len(raw[split]), task.preprocess(raw, tokenizer)[split]


def _no_parity_reason(recipe, examples: int | None) -> str:
    if examples == 0:
        return "--parity-examples 0: not checked"
    return "the run's recipe names no evaluation split (data.eval_split), so parity was not checked"


def _write(model, task, tokenizer, run_dir, saved, partial, target, quantization, peft) -> dict[str, Any]:
    """model.onnx (traced, fused, quantised), config.json, the tokenizer, recipe.yaml and the calibration
    files into ``partial``; returns export.json's fields but parity."""
    with tempfile.TemporaryDirectory(prefix="hf-finetune-onnx-") as scratch:
        traced, fused = Path(scratch) / "traced.onnx", Path(scratch) / "fused.onnx"
        inputs, outputs = trace(model, tokenizer, traced)
        fusion = fuse(traced, fused, model.config)
        final = partial / ONNX_FILE
        settings = None
        if quantization is None:
            shutil.copyfile(fused, final)
        else:
            with _quiet():
                settings = quantize(fused, final, quantization)
    import onnx

    graph = onnx.load(str(final), load_external_data=False)
    opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    config = model.config
    config.architectures = [type(model).__name__]  # the head OrtModel runs the graph as
    config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    copy_calibration(run_dir, partial)
    base_model = hub_base_model(saved.model.name_or_path)  # the model card's base_model when pushed
    saved.peft = type(saved.peft)()  # the export is a plain model
    saved.model.name_or_path = str(target.absolute())
    saved.save(partial / RECIPE_FILE, header=f"# Exported to ONNX from the run in {run_dir.absolute()}\n")
    pytorch_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    onnx_bytes = final.stat().st_size
    run_weights = run_dir / WEIGHTS
    return {
        "format": "onnx",
        "file": ONNX_FILE,
        "precision": quantization or "fp32",
        "quantization": settings,
        "opset": opset,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_axes": {name: axis for axis, name in AXES.items()},
        "source": {
            "run": str(run_dir.absolute()),
            "task": task.name,
            "base_model": base_model,
            "model_type": config.model_type,
            "peft": peft,
            "merged": peft is not None,
        },
        "fusion": fusion,
        "sizes": {
            "onnx_bytes": onnx_bytes,
            "pytorch_fp32_bytes": pytorch_bytes,
            "run_weights_bytes": run_weights.stat().st_size if run_weights.is_file() else None,
            "onnx_to_pytorch": round(onnx_bytes / pytorch_bytes, 4),
        },
        "versions": {name: _version(name) for name in VERSIONS},
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def trace(model, tokenizer, path: Path) -> tuple[list[str], list[str]]:
    """Export ``model`` to the single file ``path``; returns (graph input names, graph output names)."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    names = [n for n in INPUTS if n in tokenizer.model_input_names and n in accepted]
    if "input_ids" not in names:
        raise RecipeError(
            "model.name_or_path",
            f"{type(model).__name__} does not take input_ids from its tokenizer; the ONNX export covers text "
            "models whose tokenizer gives input_ids.",
        )
    # batch 2, sequence > 2, one row padded: torch.export would fix an axis of size 1 to a constant
    sample = tokenizer(
        ["a short text", "a somewhat longer text, so that the first one is padded"],
        padding=True,
        return_tensors="pt",
    )
    kwargs = {name: sample[name] for name in names}  # in INPUTS' order: the graph's inputs follow it
    with torch.no_grad():
        probe = model(**kwargs)
    outputs = [name for name in ("logits", "start_logits", "end_logits") if probe.get(name) is not None]
    if "start_logits" in outputs:
        outputs = ["start_logits", "end_logits"]
    wrapper = _Outputs(model, outputs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log), _quiet(), torch.no_grad():
        torch.onnx.export(
            wrapper,
            (),
            str(path),
            kwargs=kwargs,
            input_names=names,
            output_names=outputs,
            dynamic_shapes={name: dict(AXES) for name in names},
            dynamo=True,
            external_data=False,
            verify=False,
        )
    logger.debug("torch.onnx.export:\n%s", log.getvalue())
    return names, outputs


class _DropRecords(logging.Filter):
    """Drops the log records that start with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def _quiet():
    """The exporter's and the quantiser's chatter kept off the console: torch.onnx's progress and its notes on
    operators of packages that are not installed (torchvision), the tracer's warnings, and onnxruntime's
    advice to pre-process before quantising (its shape inference adds nothing to these graphs)."""
    import warnings

    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level
    drop = _DropRecords(("Please consider to run pre-processing",))
    root = logging.getLogger()
    torch_onnx.setLevel(logging.ERROR)
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx.setLevel(level)
        root.removeFilter(drop)


class _Outputs(torch.nn.Module):
    """The model called with the graph's inputs by name, returning its outputs as plain tensors."""

    def __init__(self, model, outputs: list[str]):
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(input_ids=input_ids, **{k: v for k, v in given.items() if v is not None})
        return tuple(out[name] for name in self.outputs)


def fuse(source: Path, target: Path, config) -> dict[str, Any]:
    """onnxruntime's transformer fusions for a BERT-like ``config.model_type`` (GELU kept exact), else a copy of
    ``source``; returns export.json's ``fusion`` entry (the fused op counts, or why there are none)."""
    model_type = FUSIONS.get(config.model_type)
    if model_type is None:
        shutil.copyfile(source, target)
        return {"skipped": f"onnxruntime's optimizer has no fusions for model type {config.model_type!r}"}
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    options.enable_gelu_approximation = False  # the tanh approximation would move the logits
    try:
        optimized = optimize_model(
            str(source), model_type=model_type, optimization_options=options, opt_level=1, use_gpu=False
        )
        optimized.save_model_to_file(str(target), use_external_data_format=False)
    except Exception as exc:  # an unfamiliar graph: ship it unfused rather than not at all
        logger.warning("ONNX fusions skipped: onnxruntime's optimizer failed (%s)", exc)
        shutil.copyfile(source, target)
        return {
            "skipped": f"onnxruntime's optimizer failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        }
    counts = {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}
    return {"optimizer": f"onnxruntime.transformers ({model_type})", "fused_ops": counts}
