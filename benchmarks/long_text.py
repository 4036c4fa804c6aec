"""Long documents: an SST-2 model reads documents of about 400 tokens whose sentiment sits in one sentence.

The long-text set is built from the mirror: each of the 872 SST-2 dev sentences is put at a random sentence
boundary inside three Wikipedia paragraphs (SQuAD validation contexts, drawn at random: neutral text about
other things), and the document keeps the sentence's label. Two models read it, with `data.max_seq_length` 128:
- `sst2`: an SST-2 model trained on short sentences (`--model`, default the run benchmarks/calibration.py
  keeps; trained here from `recipes/glue/sst2.yaml` when absent);
- `sst2+long` (`--adapt N`, default 2,000; 0 skips it): that model fine-tuned one more epoch (lr 3e-5) on N long
  documents built the same way from SST-2 training sentences and SQuAD *training* contexts (no paragraph in
  common with the evaluated documents), with `data.long_text=windows` and `data.windows_in_training=true`.
`hf-finetune eval --file` scores the documents
- `truncate`: the default, the first 128 tokens only;
- `windows-mean` / `windows-max`: `data.long_text=windows`, windows of 128 tokens sharing `--stride` tokens,
  window logits averaged / the maximum of each class's logit.
Accuracy is reported for all documents and apart for those whose sentence starts past the first window.

    .venv/bin/python benchmarks/long_text.py [--model runs/bench-calibration] [--stride 32] [--adapt 2000] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import _train

ARMS = {
    # explicit: a model trained on windows saved `windows` (and `windows_in_training`) in its recipe
    "truncate": ["data.long_text=truncate", "data.windows_in_training=false"],
    "windows-mean": ["data.long_text=windows", "data.window_aggregate=mean"],
    "windows-max": ["data.long_text=windows", "data.window_aggregate=max"],
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def build_documents(
    mirror: Path,
    tokenizer,
    sst2: str,
    squad: str,
    rows: int | None = None,
    paragraphs: int = 3,
    seed: int = 0,
) -> list[dict]:
    """One document per sentence of SST-2's ``sst2`` split (the first ``rows``): ``paragraphs`` contexts of
    SQuAD's ``squad`` split with the sentence at a random sentence boundary; `position` is the number of tokens
    before the sentence."""
    contexts = sorted({json.loads(line)["context"] for line in (mirror / "squad" / f"{squad}.jsonl").open()})
    draw = random.Random(seed)
    docs = []
    lines = (mirror / "glue" / "sst2" / f"{sst2}.jsonl").open().readlines()
    if rows is not None:
        lines = random.Random(seed + 1).sample(lines, rows)
    for line in lines:
        row = json.loads(line)
        sentences = [s for c in draw.sample(contexts, paragraphs) for s in _SENTENCE_END.split(c.strip())]
        at = draw.randint(0, len(sentences))
        before = " ".join(sentences[:at])
        text = " ".join([*sentences[:at], row["sentence"].strip(), *sentences[at:]])
        position = len(tokenizer(before, add_special_tokens=False)["input_ids"]) if before else 0
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        docs.append({"text": text, "label": row["label"], "position": position, "tokens": length})
    return docs


def write(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"sentence": d["text"], "label": d["label"]}) + "\n" for d in docs))
    return path


def evaluate(model: Path, docs_file: Path, name: str, overrides: list[str]) -> tuple[dict, list[dict]]:
    cmd = [sys.executable, "-m", "hf_finetune", "eval", str(model), "--file", str(docs_file)]
    cmd += ["--name", name, "--predictions", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((model / f"eval_{name}_results.json").read_text())
    rows = [json.loads(line) for line in (model / f"predictions_{name}.jsonl").open()]
    return metrics, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(_train.REPO / "runs" / "bench-calibration"))
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument(
        "--adapt",
        type=int,
        default=2000,
        help="then fine-tune the model on this many long training documents with windows_in_training (0: not)",
    )
    parser.add_argument("--keep-adapted", default=str(_train.REPO / "runs" / "bench-long-text-adapted"))
    parser.add_argument(
        "--reuse-adapted",
        action="store_true",
        help="evaluate the model --keep-adapted holds instead of training it",
    )
    parser.add_argument("--mirror", default=str(_train.REPO.parent / "shared" / "data"))
    parser.add_argument("--output", default=str(_train.REPO / "runs" / "bench-long-text.json"))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    mirror, model = Path(args.mirror), Path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if not (model / "config.json").is_file():
            print(f"no model in {model}: training recipes/glue/sst2.yaml", flush=True)
            model = Path(_train.train("sst2", _train.GLUE / "sst2.yaml", [], scratch, None)["output_dir"])
        tokenizer = AutoTokenizer.from_pretrained(str(model))
        docs = build_documents(mirror, tokenizer, "validation", "validation")
        docs_file = write(scratch / "long-sst2.jsonl", docs)
        lengths = sorted(d["tokens"] for d in docs)
        first_window = 128 - 2  # [CLS] ... [SEP]
        late = [i for i, d in enumerate(docs) if d["position"] >= first_window]
        print(
            f"{len(docs)} documents, median {lengths[len(lengths) // 2]} tokens (min {lengths[0]}, max "
            f"{lengths[-1]}); the sentence starts past the first {first_window} tokens in {len(late)}",
            flush=True,
        )
        models = {"sst2": model}
        keep = Path(args.keep_adapted)
        if args.adapt and args.reuse_adapted and (keep / "config.json").is_file():
            models["sst2+long"] = keep
        elif args.adapt:  # the SST-2 model trained on long documents, every window labelled as its document
            train_docs = build_documents(mirror, tokenizer, "train", "train", rows=args.adapt, seed=1)
            adapted = _train.train(
                "adapted",
                _train.GLUE / "sst2.yaml",
                [
                    f"model.name_or_path={json.dumps(str(model))}",
                    "data.dataset=null",
                    "data.config=null",
                    f"data.files={{train: {json.dumps(str(write(scratch / 'train.jsonl', train_docs)))}}}",
                    "data.eval_split=null",
                    "data.long_text=windows",
                    f"data.window_stride={args.stride}",
                    "data.windows_in_training=true",
                    "training.learning_rate=3e-5",
                    "task.calibration=none",
                ],
                scratch,
                None,
            )
            models["sst2+long"] = _train.keep(adapted["output_dir"], keep)
            print(f"adapted on {args.adapt} long documents: {adapted['train_samples']} windows", flush=True)
        arms = {}
        for label, path in models.items():
            for name, overrides in ARMS.items():
                extra = [f"data.window_stride={args.stride}"] if "windows" in name else []
                metrics, rows = evaluate(path, docs_file, f"long-{name}", [*overrides, *extra])
                names = {0: "negative", 1: "positive"}
                right = [
                    names.get(docs[i]["label"], docs[i]["label"]) == rows[i]["label"]
                    for i in range(len(docs))
                ]
                arms[f"{label} {name}"] = {
                    "accuracy": metrics["eval_accuracy"],
                    "accuracy_sentence_past_first_window": sum(right[i] for i in late) / len(late),
                    "eval_samples": metrics.get("eval_samples"),
                }
                print(f"{label} {name}: {json.dumps(arms[f'{label} {name}'])}", flush=True)
    report = {
        "command": f"python benchmarks/long_text.py --model {args.model} --stride {args.stride} --adapt {args.adapt}",
        "documents": len(docs),
        "median_tokens": lengths[len(lengths) // 2],
        "sentence_past_first_window": len(late),
        "arms": arms,
    }
    print(f"report: {_train.write_report(args.output, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
