"""Inference on SST-2 dev: speed, size and accuracy of PyTorch fp32, PyTorch bf16 autocast, ONNX fp32 and ONNX int8.

For a fine-tuned run (`--run`, default runs/glue-sst2, what `make demo` trains) and any distilled students
(`--student`, e.g. runs/glue-sst2-student from benchmarks/distill.py), side by side in one process:
- throughput: examples/s over the dev sentences in batches of `--batch-size` (32), sorted by length and each
  padded to its longest (the same batches, as the same int64 arrays, for every engine);
- latency: p50 and p95 of one sentence at a time (batch 1, unpadded), the first `--latency-examples` dev
  sentences in dataset order, timed with time.perf_counter around each call;
- size on disk: the weight files (the run's *.safetensors; the export's model.onnx and any external data);
- accuracy on dev, the share of predicted labels equal to PyTorch fp32's and the largest |logit difference|.
The ONNX models come from `hf-finetune export RUN --format onnx [--quantize int8] --output DIR`, run once into
`--exports` before anything is timed (`--reuse-exports` keeps the ones already there). Tokenisation is done
once, before timing, and is not timed. Every engine gets `--threads` threads (default: the cores this process
may use): torch.set_num_threads and one inter-op thread; onnxruntime sessions from hf_finetune.export.runtime
(the same intra-op threads, one inter-op thread, sequential, every graph optimisation, CPUExecutionProvider).
PyTorch runs under inference_mode in eval() (bf16: torch.autocast("cpu", dtype=torch.bfloat16), fp32 weights).
Each round measures every engine once, alone (load, warm up, throughput, latency, unload), in an order rotated
by one each round; the median of `--rounds` rounds is reported. Ratios are against PyTorch fp32 of `--run`.
The issue's int8 gates (ONNX int8 at batch 32 >= 2x the examples/s of PyTorch fp32, accuracy within 1 point,
size <= 30% of the fp32 weights) are printed as checks for each model, from the figures measured here.
Run it on an otherwise idle machine. Exit status 1 if an export or an engine fails (the rest is still reported),
2 for a bad argument.

    .venv/bin/python benchmarks/inference.py [--run runs/glue-sst2] [--student runs/glue-sst2-student]
        [--rounds 3] [--latency-examples 200] [--threads N] [--exports runs/bench-inference-exports]
        [--reuse-exports] [--examples N] [--output runs/bench-inference.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# this folder, first on sys.path when run as a script, holds peft.py, which would shadow the peft package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

ENGINES = ("pytorch-fp32", "pytorch-bf16", "onnx-fp32", "onnx-int8")
GATES = {"throughput_x": 2.0, "accuracy_points": 1.0, "size_share": 0.30}  # the issue's int8 gates


def _load_helper(name: str):
    """benchmarks/NAME.py, by path (this folder is off sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_data() -> Path:
    mirror = os.environ.get("HF_FINETUNE_DATA_MIRROR") or str(REPO.parent / "shared" / "data")
    return Path(mirror) / "glue" / "sst2" / "validation.jsonl"


def weight_files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


TORCH_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
ONNX_WEIGHTS = ("*.onnx", "*.onnx.data", "*.onnx_data", "*.data")


def check_run(path: Path, flag: str) -> Path:
    """``path`` as a full (non-adapter) fine-tuned run, or exit 2 saying why."""
    if not path.is_dir():
        sys.exit(
            _bad(f"{flag} {path}: no such directory (train it first, e.g. `make demo` for runs/glue-sst2).")
        )
    if (path / "adapter_config.json").is_file():
        sys.exit(
            _bad(
                f"{flag} {path}: a PEFT adapter run; merge it first (`hf-finetune export {path} --merge "
                "--output DIR`) and benchmark DIR, so that PyTorch runs the same merged model as ONNX."
            )
        )
    if not (path / "config.json").is_file() or not weight_files(path, TORCH_WEIGHTS):
        sys.exit(
            _bad(f"{flag} {path}: holds no config.json and model weights; give a finished run's output_dir.")
        )
    return path


def _bad(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------- data


class Batch:
    """One model input, built before timing: int64 numpy arrays (onnxruntime) and torch tensors on the same
    memory (PyTorch), and the dev indices of its rows."""

    def __init__(self, arrays: dict, index):
        import numpy as np
        import torch

        self.arrays = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in arrays.items()}
        self.tensors = {k: torch.from_numpy(v) for k, v in self.arrays.items()}
        self.index = index
        self.size = len(index)


def read_dev(path: Path, limit: int | None) -> tuple[list[str], list[int]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def gold_ids(run: Path, labels: list[int]) -> list[int]:
    """The dataset's label indices as the model's class ids: through the recipe's `task.labels` names and
    the saved label2id when both are there (hf-finetune maps integer labels through `task.labels`)."""
    import yaml

    recipe = yaml.safe_load((run / "recipe.yaml").read_text()) if (run / "recipe.yaml").is_file() else {}
    names = ((recipe or {}).get("task") or {}).get("labels")
    label2id = json.loads((run / "config.json").read_text()).get("label2id") or {}
    if isinstance(names, list) and all(n in label2id for n in names):
        return [int(label2id[names[y]]) for y in labels]
    return labels


def max_length(run: Path, tokenizer) -> int:
    import yaml

    recipe = yaml.safe_load((run / "recipe.yaml").read_text()) if (run / "recipe.yaml").is_file() else {}
    length = ((recipe or {}).get("data") or {}).get("max_seq_length")
    return int(length or min(tokenizer.model_max_length, 512))


def tokenise(run: Path, texts: list[str], batch_size: int, latency_examples: int, warmup_examples: int):
    """The run's tokenizer over ``texts`` (truncated to the recipe's max_seq_length): length-sorted padded
    batches of ``batch_size`` for throughput, the first ``latency_examples`` single unpadded examples for
    latency, and ``warmup_examples`` singles from the end of the set to warm up on."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run)
    length = max_length(run, tokenizer)
    started = time.perf_counter()
    encoded = tokenizer(texts, truncation=True, max_length=length)
    rows = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]
    order = sorted(range(len(texts)), key=lambda i: (len(rows[i]["input_ids"]), i))
    batches = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        padded = tokenizer.pad([rows[i] for i in index], padding="longest", return_tensors="np")
        batches.append(Batch(dict(padded), index))

    def single(i: int) -> Batch:
        return Batch({k: [v] for k, v in rows[i].items()}, [i])

    singles = [single(i) for i in range(min(latency_examples, len(texts)))]
    warm = [single(i) for i in range(max(0, len(texts) - warmup_examples), len(texts))]
    lengths = [len(r["input_ids"]) for r in rows]
    info = {
        "max_seq_length": length,
        "inputs": list(encoded.keys()),
        "tokens_mean": statistics.mean(lengths),
        "tokens_max": max(lengths),
        "batches": len(batches),
        "padded_tokens": sum(b.arrays["input_ids"].size for b in batches),
        "tokenise_s": time.perf_counter() - started,
    }
    return batches, singles, warm, info


# ---------------------------------------------------------------------------------------------- engines


class TorchEngine:
    """The run's PyTorch model (fp32 weights), in eval() under inference_mode; ``bf16``: under bf16 autocast."""

    def __init__(self, run: Path, bf16: bool):
        self.run, self.bf16, self.model = run, bf16, None
        self.files = weight_files(run, TORCH_WEIGHTS)

    def load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(self.run, dtype=torch.float32).eval()
        self.describe = {"attn_implementation": self.model.config._attn_implementation}

    def context(self):
        import torch

        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext()
        stack = _Stack(torch.inference_mode(), autocast)
        return stack

    def __call__(self, batch: Batch):
        return self.model(**batch.tensors).logits.float().numpy()

    def close(self) -> None:
        self.model = None


class OnnxEngine:
    """An export directory's model.onnx in an onnxruntime CPU session (hf_finetune.export.runtime's options),
    fed the batch's int64 arrays by the names the graph declares."""

    def __init__(self, folder: Path, threads: int):
        self.folder, self.threads, self.session = folder, threads, None
        self.files = weight_files(folder, ONNX_WEIGHTS)

    def load(self) -> None:
        from hf_finetune.export.runtime import load_session

        self.session = load_session(self.folder / "model.onnx", threads=self.threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output = self.session.get_outputs()[0].name
        options = self.session.get_session_options()
        self.describe = {
            "inputs": self.inputs,
            "intra_op_num_threads": options.intra_op_num_threads,
            "inter_op_num_threads": options.inter_op_num_threads,
            "execution_mode": str(options.execution_mode),
            "graph_optimization_level": str(options.graph_optimization_level),
            "providers": self.session.get_providers(),
        }

    def context(self):
        return nullcontext()

    def __call__(self, batch: Batch):
        arrays = batch.arrays
        feed = {}
        for name in self.inputs:
            if name in arrays:
                feed[name] = arrays[name]
            elif name == "token_type_ids":
                feed[name] = _zeros(arrays["input_ids"])
            else:
                raise ValueError(
                    f"the ONNX graph needs the input {name!r}, which the tokenizer does not give"
                )
        return self.session.run([self.output], feed)[0]

    def close(self) -> None:
        self.session = None


def _zeros(like):
    import numpy as np

    return np.zeros_like(like)


class _Stack:
    """Enter several context managers as one."""

    def __init__(self, *managers):
        self.managers = managers

    def __enter__(self):
        for m in self.managers:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self.managers):
            m.__exit__(*exc)
        return False


def measure(engine, batches, singles, warm, warmup_batches: int, n: int) -> dict:
    """Load ``engine``, warm it up (``warmup_batches`` batches spread over the lengths, longest first, and
    the ``warm`` singles), then time one pass over ``batches`` and each of ``singles``; unload it."""
    import numpy as np

    started = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - started
    picks = sorted(
        {round(i * (len(batches) - 1) / max(1, warmup_batches - 1)) for i in range(warmup_batches)}
    )
    try:
        with engine.context():
            for i in reversed(picks):
                engine(batches[i])
            for single in warm:
                engine(single)
            logits = None
            started = time.perf_counter()
            for batch in batches:
                out = engine(batch)
                if logits is None:
                    logits = np.empty((n, out.shape[-1]), dtype=np.float32)
                logits[batch.index] = out
            total = time.perf_counter() - started
            latencies = []
            for single in singles:
                started = time.perf_counter()
                engine(single)
                latencies.append(time.perf_counter() - started)
    finally:
        describe = getattr(engine, "describe", {})
        engine.close()
        gc.collect()
    result = {
        "load_s": load_s,
        "throughput": n / total,
        "pass_s": total,
        "logits": logits,
        "describe": describe,
    }
    if latencies:
        p50, p95 = np.percentile(np.array(latencies) * 1000, [50, 95])
        result.update(p50_ms=float(p50), p95_ms=float(p95), mean_ms=1000 * statistics.mean(latencies))
    return result


# ---------------------------------------------------------------------------------------------- exports


def export(run: Path, target: Path, quantize: bool, reuse: bool) -> dict:
    """`hf-finetune export RUN --format onnx [--quantize int8] --output TARGET` in a fresh process (or the
    export already in TARGET with ``reuse``); returns what happened, with the export's export.json."""
    info: dict = {"dir": str(target)}
    if reuse and (target / "model.onnx").is_file():
        info["reused"] = True
    else:
        if target.exists():
            if any(target.iterdir()) and not (target / "export.json").is_file():
                raise SystemExit(
                    _bad(f"{target} exists and is not an export directory; give another --exports folder.")
                )
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        result = _load_helper("_export").run_export(run, target, quantize, cwd=REPO)
        info["command"], info["wall_s"] = result["command"], result["wall_s"]
        if "export_json" not in result:
            info["error"] = f"exit {result['exit_code']}: {result['stderr']}"
            return info
    if (target / "export.json").is_file():
        info["export_json"] = json.loads((target / "export.json").read_text())
    return info


# ---------------------------------------------------------------------------------------------- report


def machine(threads: int) -> dict:
    record = _load_helper("_record")
    info = record.machine()
    info["cores_usable"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    info["cores_total"] = os.cpu_count()
    info["benchmark_threads"] = threads
    for package in ("onnxruntime", "onnx", "transformers", "numpy"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    info["python"] = platform.python_version()
    git = ["git", "-C", str(REPO)]
    try:
        info["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout
        info["git_dirty"] = bool(dirty.strip())
    except OSError:
        info["git_commit"] = None
    info["describe"] = record.describe_machine(info)
    return info


def size_mb(files: list[Path]) -> float:
    return sum(f.stat().st_size for f in files) / 1e6


def gates(row_fp32: dict, row_int8: dict) -> dict:
    """The issue's int8 gates for one model, from the measured rows (None where a figure is missing)."""
    out = {}
    if row_fp32.get("throughput") and row_int8.get("throughput"):
        x = row_int8["throughput"] / row_fp32["throughput"]
        out["throughput"] = {
            "value": x,
            "need": f">= {GATES['throughput_x']}x",
            "pass": x >= GATES["throughput_x"],
        }
    if row_fp32.get("accuracy") is not None and row_int8.get("accuracy") is not None:
        drop = 100 * (row_fp32["accuracy"] - row_int8["accuracy"])
        out["accuracy"] = {
            "value": 100 * row_int8["accuracy"] - 100 * row_fp32["accuracy"],
            "need": f"drop <= {GATES['accuracy_points']} point",
            "pass": drop <= GATES["accuracy_points"],
        }
    if row_fp32.get("size_mb") and row_int8.get("size_mb"):
        share = row_int8["size_mb"] / row_fp32["size_mb"]
        out["size"] = {
            "value": share,
            "need": f"<= {GATES['size_share']:.0%}",
            "pass": share <= GATES["size_share"],
        }
    out["all_pass"] = len(out) == 3 and all(g["pass"] for g in out.values())
    return out


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    head = (
        "| model | engine | examples/s (batch 32) | x ref | p50 ms (batch 1) | p95 ms | size MB | size % ref "
        "| accuracy | Δ points vs ref | labels = own fp32 |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        if r.get("error"):
            lines.append(
                f"| {r['model']} | {r['engine']} | failed: {r['error'].splitlines()[-1][:80]} |" + " |" * 8
            )
            continue
        lines.append(
            f"| {r['model']} | {r['engine']} | {fmt(r['throughput'], '.1f')} | {fmt(r.get('throughput_x'), '.2f')}x "
            f"| {fmt(r.get('p50_ms'), '.2f')} | {fmt(r.get('p95_ms'), '.2f')} | {fmt(r['size_mb'], '.1f')} "
            f"| {fmt(r.get('size_share'), '.0%')} | {fmt(r['accuracy'], '.4f')} "
            f"| {fmt(r.get('accuracy_delta_points'), '+.2f')} | {fmt(r.get('agreement'), '.2%')} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default=str(REPO / "runs" / "glue-sst2"), help="the fine-tuned run (teacher)"
    )
    parser.add_argument(
        "--student",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="a distilled student run (repeatable)",
    )
    parser.add_argument(
        "--data", default=str(default_data()), help="SST-2 dev as JSON Lines (sentence, label)"
    )
    parser.add_argument("--examples", type=int, help="only the first N dev examples (smoke tests)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument(
        "--student-engines", nargs="+", choices=ENGINES, help="engines for the students (default: --engines)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-examples", type=int, default=200)
    parser.add_argument("--warmup-batches", type=int, default=5, help="batches run before timing (default 5)")
    parser.add_argument("--warmup-examples", type=int, default=20, help="single examples run before timing")
    parser.add_argument("--threads", type=int, help="threads for every engine (default: the usable cores)")
    parser.add_argument("--exports", default=str(REPO / "runs" / "bench-inference-exports"))
    parser.add_argument("--reuse-exports", action="store_true", help="keep exports already in --exports")
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-inference.json"))
    args = parser.parse_args()

    for name in ("batch_size", "rounds", "warmup_batches"):
        if getattr(args, name) < 1:
            return _bad(f"--{name.replace('_', '-')} must be at least 1.")
    if (
        args.latency_examples < 0
        or args.warmup_examples < 0
        or (args.examples is not None and args.examples < 1)
    ):
        return _bad("--latency-examples and --warmup-examples must be >= 0, --examples >= 1.")
    data = Path(args.data)
    if not data.is_file():
        return _bad(f"--data {data}: no such file (set HF_FINETUNE_DATA_MIRROR or give --data).")
    models = [("teacher" if args.student else "model", check_run(Path(args.run), "--run"), args.engines)]
    for i, student in enumerate(args.student):
        name = "student" if len(args.student) == 1 else f"student-{i + 1}"
        models.append((name, check_run(Path(student), "--student"), args.student_engines or args.engines))
    threads = args.threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )

    import torch
    from transformers.utils import logging as transformers_logging

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    transformers_logging.disable_progress_bar()

    texts, labels = read_dev(data, args.examples)
    n = len(texts)
    failed = False

    # 1. the exports, each in a fresh process, before anything is timed
    exports_root = Path(args.exports)
    setup = []
    for name, run, engines in models:
        entry = {"name": name, "run": str(run.resolve()), "engines": engines, "exports": {}}
        for engine in engines:
            if engine.startswith("onnx-"):
                target = exports_root / f"{name}-{run.name}-{engine.removeprefix('onnx-')}"
                done = export(run, target, engine == "onnx-int8", args.reuse_exports)
                entry["exports"][engine] = done
                what = "reused" if done.get("reused") else f"exported in {done.get('wall_s', 0):.0f} s"
                print(f"{engine} of {run}: {target} ({what})", flush=True)
                if "error" in entry["exports"][engine]:
                    failed = True
                    print(
                        f"  export failed: {entry['exports'][engine]['error']}", file=sys.stderr, flush=True
                    )
        config = json.loads((run / "config.json").read_text())
        entry["num_hidden_layers"] = config.get("num_hidden_layers")
        entry["hidden_size"] = config.get("hidden_size")
        setup.append(entry)

    # 2. the inputs, tokenised once per model (its tokenizer), and the gold labels as its class ids
    inputs = {}
    for entry in setup:
        run = Path(entry["run"])
        batches, singles, warm, info = tokenise(
            run, texts, args.batch_size, args.latency_examples, args.warmup_examples
        )
        inputs[entry["name"]] = (batches, singles, warm)
        entry["inputs"] = info
        entry["gold"] = gold_ids(run, labels)

    # 3. the engines, each alone, in rounds (order rotated by one each round)
    slots = []
    for entry in setup:
        for engine in entry["engines"]:
            slot = {"model": entry["name"], "engine": engine, "rounds": [], "error": None}
            exported = entry["exports"].get(engine)
            if exported and "error" in exported:
                slot["error"] = "export failed: " + exported["error"]
            run = Path(entry["run"])
            if engine.startswith("pytorch"):
                slot["impl"] = TorchEngine(run, bf16=engine == "pytorch-bf16")
            else:
                slot["impl"] = OnnxEngine(Path(exported["dir"]), threads)
            slots.append(slot)
    for round_index in range(args.rounds):
        order = slots[round_index % len(slots) :] + slots[: round_index % len(slots)]
        for slot in order:
            if slot["error"]:
                continue
            batches, singles, warm = inputs[slot["model"]]
            try:
                result = measure(slot["impl"], batches, singles, warm, args.warmup_batches, n)
            except Exception:
                slot["error"] = traceback.format_exc()
                failed = True
                print(
                    f"{slot['model']} {slot['engine']} failed:\n{slot['error']}", file=sys.stderr, flush=True
                )
                continue
            logits = result.pop("logits")
            slot.setdefault("logits", logits)
            slot["rounds"].append(result)
            print(
                f"round {round_index + 1}: {slot['model']} {slot['engine']}: {result['throughput']:.1f} examples/s, "
                f"p50 {fmt(result.get('p50_ms'), '.2f')} ms, p95 {fmt(result.get('p95_ms'), '.2f')} ms",
                flush=True,
            )

    # 4. the rows: medians over rounds, accuracy, agreement, ratios
    import numpy as np

    rows = []
    by_key = {}
    for slot in slots:
        entry = next(e for e in setup if e["name"] == slot["model"])
        row = {"model": slot["model"], "run": entry["run"], "engine": slot["engine"], "error": slot["error"]}
        row["files"] = [str(f) for f in slot["impl"].files]
        row["size_mb"] = size_mb(slot["impl"].files) if slot["impl"].files else None
        measured = slot["rounds"]
        row["throughput"] = statistics.median(r["throughput"] for r in measured) if measured else None
        row["throughput_rounds"] = [r["throughput"] for r in measured]
        for key in ("p50_ms", "p95_ms", "mean_ms"):
            values = [r[key] for r in measured if key in r]
            row[key] = statistics.median(values) if values else None
        row["latency_rounds"] = [{k: r.get(k) for k in ("p50_ms", "p95_ms", "mean_ms")} for r in measured]
        row["load_s"] = [r["load_s"] for r in measured]
        row["settings"] = measured[0]["describe"] if measured else None
        row["accuracy"] = None
        if "logits" in slot:
            predicted = slot["logits"].argmax(-1)
            row["accuracy"] = float((predicted == np.array(entry["gold"])).mean())
        rows.append(row)
        by_key[(slot["model"], slot["engine"])] = (row, slot)
    for row in rows:
        own_row, own_slot = by_key.get((row["model"], "pytorch-fp32"), (None, None))
        _, slot = by_key[(row["model"], row["engine"])]
        if own_slot is not None and "logits" in own_slot and "logits" in slot:
            row["agreement"] = float((slot["logits"].argmax(-1) == own_slot["logits"].argmax(-1)).mean())
            row["max_abs_logit_diff"] = float(np.abs(slot["logits"] - own_slot["logits"]).max())
    ref, _ = by_key.get((models[0][0], "pytorch-fp32"), (None, None))
    if ref is not None and not ref["error"]:
        for row in rows:
            if row["error"]:
                continue
            row["throughput_x"] = row["throughput"] / ref["throughput"]
            if row.get("p50_ms") and ref.get("p50_ms"):
                row["latency_p50_x"] = ref["p50_ms"] / row["p50_ms"]
            row["size_share"] = row["size_mb"] / ref["size_mb"] if row["size_mb"] and ref["size_mb"] else None
            row["accuracy_delta_points"] = 100 * (row["accuracy"] - ref["accuracy"])
    checks = {}
    for name, _, _ in models:
        fp32, _ = by_key.get((name, "pytorch-fp32"), (None, None))
        int8, _ = by_key.get((name, "onnx-int8"), (None, None))
        if fp32 and int8 and not fp32["error"] and not int8["error"]:
            checks[name] = gates(fp32, int8)

    # 5. print and write
    info = machine(threads)
    markdown = table(rows)
    print()
    print(
        f"SST-2 dev, {n} examples; throughput: batches of {args.batch_size} sorted by length; latency: batch 1, "
        f"the first {min(args.latency_examples, n)} in dataset order; median of {args.rounds} rounds; "
        f"{threads} threads; ref = {models[0][0]} PyTorch fp32"
    )
    print(markdown)
    for name, check in checks.items():
        parts = [f"{key} {'PASS' if g['pass'] else 'FAIL'}" for key, g in check.items() if key != "all_pass"]
        t, a, s = check.get("throughput"), check.get("accuracy"), check.get("size")
        print(
            f"int8 gates ({name}, against its own PyTorch fp32): "
            f"throughput {fmt(t and t['value'], '.2f')}x (>= 2x) {'PASS' if t and t['pass'] else 'FAIL'}; "
            f"accuracy {fmt(a and a['value'], '+.2f')} points (drop <= 1) {'PASS' if a and a['pass'] else 'FAIL'}; "
            f"size {fmt(s and s['value'], '.1%')} (<= 30%) {'PASS' if s and s['pass'] else 'FAIL'}"
            + ("" if len(parts) == 3 else " (some figures missing)")
        )
    students = [m[0] for m in models[1:]]
    for name in students:
        for engine in ("pytorch-fp32", "onnx-int8"):
            student, _ = by_key.get((name, engine), (None, None))
            teacher, _ = by_key.get((models[0][0], engine), (None, None))
            if student and teacher and student["throughput"] and teacher["throughput"]:
                print(
                    f"{name} / teacher throughput, {engine}: {student['throughput'] / teacher['throughput']:.2f}x "
                    f"(accuracy {100 * (student['accuracy'] - teacher['accuracy']):+.2f} points)"
                )
    print(
        f"on {info['describe']}, onnxruntime {info['onnxruntime']}, commit {info['git_commit'][:12]}"
        + (" (uncommitted changes)" if info.get("git_dirty") else "")
    )
    report = {
        "command": "python benchmarks/inference.py " + " ".join(sys.argv[1:]),
        "settings": vars(args) | {"threads": threads},
        "machine": info,
        "data": {"file": str(data), "examples": n},
        "models": setup,
        "rows": rows,
        "gates": checks,
        "table": markdown,
    }
    for entry in setup:
        entry.pop("gold", None)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {output}")
    if failed or any(r["error"] for r in rows):
        print("some exports or engines failed (see above and the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
