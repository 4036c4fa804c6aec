"""Export parity on real data: a CoNLL-2003 NER run and a SQuAD QA run, exported to ONNX (fp32 and int8),
each export checked against its PyTorch model on the whole dev set by `hf-finetune export` itself.

Each task trains its bundled recipe (recipes/ner/conll2003.yaml, recipes/qa/squad.yaml) for ``--steps``
optimizer steps (a short run: parity compares two engines on the same weights, so the model needs to be a
real fine-tuned one, not the best one), then `hf-finetune export RUN --format onnx [--quantize int8]` runs in a
fresh process, with its parity check on every example of the run's eval split (CoNLL-2003 validation, 3,250
sentences; the SQuAD sample's validation, 810 questions). Reported from each export.json: the largest logit
difference, the share of identical predictions (NER: per labelled token; QA: the answer text per question),
and the task metric of both engines (NER: entity F1 via seqeval's rules; QA: exact match and F1).
SST-2's fp32 and int8 parity comes from `benchmarks/inference.py`, whose exports run the same check.

    .venv/bin/python benchmarks/export_parity.py [--steps 300] [--tasks ner qa] [--output runs/bench-export-parity.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _export
import _train

RECIPES = {
    "ner": _train.REPO / "recipes" / "ner" / "conll2003.yaml",
    "qa": _train.REPO / "recipes" / "qa" / "squad.yaml",
}
PRECISIONS = {"fp32": False, "int8": True}  # quantise?


def export(run: Path, target: Path, quantize: bool) -> dict:
    """The export's figures from its export.json, with the exit code and wall time (`_export.run_export`)."""
    result = _export.run_export(run, target, quantize)
    info = result.pop("export_json", None)
    if info is None:
        return result
    return {**result, "parity": info["parity"], "sizes": info["sizes"], "fusion": info["fusion"]}


def row(task: str, precision: str, result: dict) -> str:
    if result["exit_code"] != 0:
        return f"| {task} | {precision} | failed (exit {result['exit_code']}) | | | |"
    parity = result["parity"]
    shown = [n for n in ("f1", "exact_match", "accuracy") if n in parity["pytorch_metrics"]]
    metrics = ", ".join(
        f"{n} {parity['pytorch_metrics'][n]:.4f} / {parity['onnx_metrics'].get(n, float('nan')):.4f}"
        for n in shown
    )
    return (
        f"| {task} | {precision} | {parity['examples']} | {parity['max_abs_logit_diff']:.2e} | "
        f"{parity['identical_predictions']:.4%} ({parity['differing']} of {parity['compared']} "
        f"{parity['unit']} differ) | {metrics} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(RECIPES), default=["ner", "qa"])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each training run")
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-export-parity.json"))
    args = parser.parse_args()
    report: dict = {"steps": args.steps, "tasks": {}}
    lines = [
        "| task | export | examples | max abs logit diff | identical predictions | metric PyTorch / ONNX |",
        "|---|---|---|---|---|---|",
    ]
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-export-parity-") as scratch:
        scratch = Path(scratch)
        for task in args.tasks:
            trained = _train.train(task, RECIPES[task], ["training.bf16=false"], scratch, args.steps)
            run = Path(trained["output_dir"])
            report["tasks"][task] = {"train_runtime_s": trained.get("train_runtime"), "exports": {}}
            for precision, quantize in PRECISIONS.items():
                result = export(run, scratch / f"{task}-{precision}", quantize)
                report["tasks"][task]["exports"][precision] = result
                lines.append(row(task, precision, result))
                failed |= precision == "fp32" and result["exit_code"] != 0
                print(lines[-1], flush=True)
    _train.write_report(args.output, report)
    print("\n".join(lines))
    print(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
