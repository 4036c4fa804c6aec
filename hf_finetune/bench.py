"""`hf-finetune bench`: task recipes x strategy overlays x seeds, one process per cell.

A bench file::

    bench:
      output_dir: runs/bench/glue-quick
      seeds: [1, 2, 3]
      max_steps: 150            # the budget of every cell (null: each recipe's own schedule)
    tasks:                      # name -> recipe (a path, relative to this file, or a bundled name)
      sst2: glue/sst2
      mrpc: {recipe: glue/mrpc, metric: f1, overrides: {training: {per_device_train_batch_size: 16}}}
    strategies:                 # name -> recipe sections laid over every task recipe
      full: {}
      freeze-bottom-4: {strategy: {freeze_layers: 4}}
      lora-r8: {peft: {method: lora, r: 8}, training: {learning_rate: 5.0e-4}}
    overrides: {training: {logging_steps: 50}}   # laid over every cell

writes ``results.jsonl`` (one line per finished cell, appended as it finishes), ``results.md`` (mean +- std
over seeds per task x strategy) and ``results.png`` (score against training time) into ``bench.output_dir``.
A re-run skips the cells already recorded as ``ok`` with the same settings, so an interrupted bench resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SECTIONS, accelerator, load_recipe, parse_yaml
from .errors import FinetuneError, RecipeError, close_matches

logger = logging.getLogger("hf_finetune")

RESULTS = "results.jsonl"
REPORT = "results.md"
PLOT = "results.png"
CELLS_DIR = "cells"
BENCH_FIELDS = {
    "output_dir": "directory for results.jsonl, results.md, results.png and the cells' run directories",
    "seeds": "list of training seeds; each task x strategy runs once per seed",
    "max_steps": "optimizer steps per cell (null: every recipe's own schedule)",
    "cell_timeout_s": "a cell still running after this many seconds is stopped and recorded as failed",
    "keep_models": "keep each cell's trained weights (default false: only metrics and logs are kept)",
}
TOP_LEVEL = ("bench", "tasks", "strategies", "overrides")
#: the headline metric per GLUE config (as the GLUE leaderboard ranks them); other tasks: see `default_metric`
GLUE_METRIC = {
    "cola": "matthews_correlation",
    "stsb": "pearson",
    "mrpc": "f1",
    "qqp": "f1",
}
RECORD_FIELDS = (
    "task",
    "strategy",
    "seed",
    "metric",
    "score",
    "train_runtime",
    "train_samples_per_second",
    "train_tokens_per_second",
    "peak_memory_mb",
    "trainable_params",
    "total_params",
    "mfu",
    "status",
)


@dataclass
class Cell:
    task: str
    strategy: str
    seed: int
    recipe_path: str
    overrides: list[str]
    metric: str | None
    run_dir: Path
    device: str = "cpu"
    dtype: str = "float32"
    recipe: Any = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.task, self.strategy, self.seed)

    @property
    def label(self) -> str:
        return f"{self.task}/{self.strategy}/seed{self.seed}"

    @property
    def fingerprint(self) -> str:
        """Changes when the recipe file, the cell's overrides or the machine (device, its name, dtype,
        threads, torch version) change: such a cell is not 'done', so one table never mixes machines."""
        from .mfu import cache_key

        text = Path(self.recipe_path).read_text(encoding="utf-8")
        blob = json.dumps(
            [text, self.overrides, self.metric, cache_key(self.device, self.dtype)], sort_keys=True
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


@dataclass
class Bench:
    path: Path
    output_dir: Path
    seeds: list[int]
    max_steps: int | None
    cell_timeout_s: float | None
    keep_models: bool
    tasks: dict[str, dict[str, Any]]
    strategies: dict[str, list[str]]
    overrides: list[str]
    cli_overrides: list[str] = field(default_factory=list)

    def cells(self) -> list[Cell]:
        cells = []
        for task, spec in self.tasks.items():
            for strategy, overlay in self.strategies.items():
                for seed in self.seeds:
                    run_dir = self.output_dir / CELLS_DIR / task / strategy / f"seed{seed}"
                    overrides = [
                        *spec["overrides"],
                        *overlay,
                        *self.overrides,
                        *self.cli_overrides,
                        *([f"training.max_steps={self.max_steps}"] if self.max_steps is not None else []),
                        f"training.seed={seed}",
                        "training.eval_strategy=no",  # one evaluation, at the end
                        "training.save_strategy=no",
                        "training.load_best_model_at_end=false",
                        "training.report_to=none",
                        "training.disable_tqdm=true",
                        f"training.output_dir={json.dumps(str(run_dir))}",
                    ]
                    cells.append(
                        Cell(task, strategy, seed, spec["recipe"], overrides, spec["metric"], run_dir)
                    )
        # every cell's recipe is read and type-checked now: a typo fails here, not an hour in
        # (quietly: the cells themselves log what their recipes resolve to)
        with _quiet():
            recipes = [self._cell_recipe(cell) for cell in cells]
        for cell, recipe in zip(cells, recipes):
            cell.recipe = recipe
            args = recipe.training
            cell.device = "cpu" if args.use_cpu else accelerator() or "cpu"
            cell.dtype = "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32"
            if cell.dtype == "float32" and cell.device == "cuda" and getattr(args, "tf32", None):
                cell.dtype = "tfloat32"  # fp32 matmuls on tensor cores: measured against the TF32 peak
        return cells

    def preflight(self, cells: list[Cell]) -> None:
        """`hf-finetune validate` for each task x strategy among ``cells`` (data, labels, tokenizer, the
        strategy on a weightless model): a missing file or an impossible strategy fails the bench now,
        naming the cell, instead of failing every one of its cells later."""
        from .pipeline import validate

        checked = set()
        with _quiet():
            for cell in cells:
                if (cell.task, cell.strategy) in checked:
                    continue
                checked.add((cell.task, cell.strategy))
                try:
                    validate(cell.recipe)
                except FinetuneError as exc:
                    raise FinetuneError(f"{self.path}: cell {cell.label}: {exc}") from None

    def _cell_recipe(self, cell: Cell):
        try:
            return load_recipe(cell.recipe_path, cell.overrides)
        except RecipeError as exc:
            raise FinetuneError(f"{self.path}: cell {cell.label}: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Reading a bench file
# ------------------------------------------------------------------------------------------------
def load_bench(path: str | Path, overrides: list[str] = ()) -> Bench:
    """Read and check a bench file; ``bench.FIELD=value`` overrides set bench fields, any other
    ``section.field=value`` is laid over every cell's recipe."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(
            f"bench file not found: {path}. Give a bench YAML file, e.g. recipes/bench/glue-quick.yaml."
        )
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(raw, dict):
        raise FinetuneError(f"{path}: expected a mapping with the keys {', '.join(TOP_LEVEL)}.")
    for key in raw:
        if key not in TOP_LEVEL:
            raise FinetuneError(
                f"{path}: unknown key {key!r}{close_matches(str(key), TOP_LEVEL)}; "
                f"a bench file has {', '.join(TOP_LEVEL)}."
            )
    settings = dict(raw.get("bench") or {})
    cli_overrides = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise FinetuneError(f"override {item!r} is not `bench.field=value` or `section.field=value`.")
        if key.startswith("bench."):
            settings[key[len("bench.") :]] = parse_yaml(text, f"override {key}") if text.strip() else None
        else:
            cli_overrides.append(item)
    for key in settings:
        if key not in BENCH_FIELDS:
            raise FinetuneError(
                f"{path}: unknown field bench.{key}{close_matches(str(key), BENCH_FIELDS)}; fields: "
                + "; ".join(f"{k} ({v})" for k, v in BENCH_FIELDS.items())
            )

    seeds = settings.get("seeds", [42])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise FinetuneError(f"{path}: bench.seeds must be a non-empty list of integers, e.g. [1, 2, 3].")
    if len(set(seeds)) != len(seeds):
        raise FinetuneError(f"{path}: bench.seeds repeats a seed: {seeds}.")
    max_steps = settings.get("max_steps")
    if max_steps is not None and (
        not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1
    ):
        raise FinetuneError(f"{path}: bench.max_steps must be a positive integer or null, got {max_steps!r}.")
    timeout = settings.get("cell_timeout_s")
    if timeout is not None and (
        not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0
    ):
        raise FinetuneError(f"{path}: bench.cell_timeout_s must be a positive number of seconds or null.")
    keep_models = settings.get("keep_models", False)
    if not isinstance(keep_models, bool):
        raise FinetuneError(f"{path}: bench.keep_models must be true or false, got {keep_models!r}.")
    output_dir = settings.get("output_dir") or f"runs/bench/{path.stem}"

    tasks = _read_tasks(path, raw.get("tasks"))
    strategies = _read_strategies(path, raw.get("strategies"))
    common = raw.get("overrides") or {}
    if not isinstance(common, dict):
        raise FinetuneError(
            f"{path}: overrides must map recipe sections to fields, e.g. {{training: {{...}}}}."
        )
    return Bench(
        path=path,
        output_dir=Path(output_dir),
        seeds=seeds,
        max_steps=max_steps,
        cell_timeout_s=float(timeout) if timeout is not None else None,
        keep_models=keep_models,
        tasks=tasks,
        strategies=strategies,
        overrides=flatten_overrides(common, f"{path}: overrides"),
        cli_overrides=cli_overrides,
    )


def _read_tasks(path: Path, tasks: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(tasks, dict) or not tasks:
        raise FinetuneError(
            f"{path}: `tasks` must map task names to recipes, e.g. tasks: {{sst2: glue/sst2, mrpc: glue/mrpc}}."
        )
    out = {}
    for name, spec in tasks.items():
        where = f"{path}: tasks.{name}"
        _check_name(where, name)
        if isinstance(spec, str):
            spec = {"recipe": spec}
        if not isinstance(spec, dict) or "recipe" not in spec:
            raise FinetuneError(
                f"{where}: give a recipe path or bundled name, or {{recipe: ..., metric: ...}}."
            )
        unknown = set(spec) - {"recipe", "metric", "overrides"}
        if unknown:
            raise FinetuneError(
                f"{where}: unknown field(s) {sorted(unknown)}; fields: recipe, metric, overrides."
            )
        out[str(name)] = {
            "recipe": _resolve_recipe(path, str(spec["recipe"]), where),
            "metric": spec.get("metric"),
            "overrides": flatten_overrides(spec.get("overrides") or {}, f"{where}.overrides"),
        }
    return out


def _read_strategies(path: Path, strategies: Any) -> dict[str, list[str]]:
    if not isinstance(strategies, dict) or not strategies:
        raise FinetuneError(
            f"{path}: `strategies` must map names to recipe overlays, e.g. "
            "strategies: {full: {}, freeze-bottom-4: {strategy: {freeze_layers: 4}}}."
        )
    out = {}
    for name, overlay in strategies.items():
        where = f"{path}: strategies.{name}"
        _check_name(where, name)
        out[str(name)] = flatten_overrides(overlay or {}, where)
    return out


def _check_name(where: str, name: Any) -> None:
    text = str(name)
    if not text or any(c in text for c in "/\\ \t") or text.startswith("."):
        raise FinetuneError(f"{where}: names become directories; use letters, digits, '-', '_' or '.'.")


def _resolve_recipe(bench_path: Path, name: str, where: str) -> str:
    from .catalog import resolve_recipe_path

    for candidate in (bench_path.parent / name, bench_path.parent / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate.resolve())
    resolved = Path(resolve_recipe_path(name))
    if resolved.is_file():
        return str(resolved.resolve())
    raise FinetuneError(
        f"{where}: recipe {name!r} not found (next to the bench file, as a path, or as a bundled name; "
        "`hf-finetune recipes` lists those)."
    )


def flatten_overrides(overlay: Any, where: str) -> list[str]:
    """{training: {learning_rate: 5e-4}} -> ['training.learning_rate=0.0005'] (values as JSON, which YAML reads)."""
    if not isinstance(overlay, dict):
        raise FinetuneError(
            f"{where}: expected a mapping of recipe sections, e.g. {{strategy: {{freeze_layers: 4}}}}."
        )
    out: list[str] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        else:
            out.append(f"{prefix}={json.dumps(node)}")

    for section, fields in overlay.items():
        if "." in str(section):  # dotted keys: {"strategy.freeze_layers": 4}
            out.append(f"{section}={json.dumps(fields)}")
            continue
        if section not in SECTIONS:
            raise FinetuneError(
                f"{where}: unknown recipe section {section!r}{close_matches(str(section), SECTIONS)}; "
                f"sections: {', '.join(SECTIONS)}."
            )
        if not isinstance(fields, dict):
            raise FinetuneError(f"{where}.{section}: expected a mapping of fields.")
        walk(str(section), fields)
    return out


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------
def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of results.jsonl; a torn last line (a killed bench) is skipped."""
    records = []
    if not path.is_file():
        return records
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning(
                "%s line %d is not complete JSON (an interrupted write); ignoring it", path, number
            )
    return records


def latest_records(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    latest = {}
    for record in records:
        latest[(record["task"], record["strategy"], record["seed"])] = record
    return latest


def run_bench(bench: Bench, progress: bool = True) -> dict[str, Any]:
    """Run every cell not already done; write the three outputs. Returns {'ran', 'skipped', 'failed', ...}."""
    from .mfu import peak_flops

    cells = bench.cells()
    bench.output_dir.mkdir(parents=True, exist_ok=True)
    results_path = bench.output_dir / RESULTS
    _drop_torn_line(results_path)
    fingerprints = {c.key: c.fingerprint for c in cells}
    previous = latest_records(read_results(results_path))

    def done(cell: Cell) -> bool:
        record = previous.get(cell.key, {})
        return record.get("status") == "ok" and record.get("fingerprint") == fingerprints[cell.key]

    todo = [c for c in cells if not done(c)]
    skipped = len(cells) - len(todo)
    if skipped:
        logger.info(
            "%d of %d cells already done in %s; running the other %d",
            skipped,
            len(cells),
            results_path,
            len(todo),
        )
    bench.preflight(todo)
    peaks = {}
    for device, dtype in sorted({(c.device, c.dtype) for c in todo}):
        if device != "cpu" and peak_flops(device, dtype, measure_if_missing=False) is None:
            _calibrate_in_child(device, dtype)  # keeps the bench process free of a CUDA context
        peaks[(device, dtype)] = peak_flops(device, dtype, measure_if_missing=device == "cpu")

    bar = _progress(len(cells), skipped, enabled=progress)
    failed = 0
    restore = _sigterm_as_exit()
    try:
        for cell in todo:
            bar.set_postfix_str(f"running {cell.label}", refresh=True)
            record = run_cell(cell, bench, peaks.get((cell.device, cell.dtype)))
            record["fingerprint"] = fingerprints[cell.key]
            _append(results_path, record)
            if record["status"] != "ok":
                failed += 1
                bar.write(f"cell {cell.label} failed: {record.get('error')} (log: {cell_log(cell)})")
            else:
                bar.write(
                    f"cell {cell.label}: {record['metric']} {record['score']:.4f} in {record['train_runtime']:.0f}s"
                )
            bar.update(1)
            write_report(bench, fingerprints)  # the table and plot grow as cells finish
    finally:
        bar.close()
        restore()
    write_report(bench, fingerprints)
    return {
        "cells": len(cells),
        "ran": len(todo),
        "skipped": skipped,
        "failed": failed,
        "output_dir": str(bench.output_dir),
    }


def _calibrate_in_child(device: str, dtype: str) -> None:
    logger.info("no peak FLOPs cached for %s %s; measuring it now in a child process", device, dtype)
    code = f"from hf_finetune.mfu import calibrate; calibrate({device!r}, [{dtype!r}])"
    proc = subprocess.run([sys.executable, "-c", code], env=_cell_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        logger.warning("calibrating %s %s failed (MFU left empty): %s", device, dtype, proc.stderr[-500:])


def _sigterm_as_exit():
    """Turn SIGTERM into SystemExit while cells run, so the running cell's process group is stopped
    (see `_run_child`) instead of being orphaned; returns the function that restores the old handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _quiet():
    """hf_finetune's info logging off (warnings stay) while the bench reads and checks every cell."""
    package = logging.getLogger("hf_finetune")
    level = package.level
    package.setLevel(logging.WARNING)
    try:
        yield
    finally:
        package.setLevel(level)


def _cell_env() -> dict[str, str]:
    """A cell trains on one device: with several GPUs visible and no CUDA_VISIBLE_DEVICES, the Trainer would
    wrap the model in DataParallel over all of them, and its speed and MFU would not compare across machines
    (multi-GPU runs are `accelerate launch`'s job)."""
    import torch

    env = dict(os.environ)
    if "CUDA_VISIBLE_DEVICES" not in env and torch.cuda.device_count() > 1:
        env["CUDA_VISIBLE_DEVICES"] = "0"
    return env


def _drop_torn_line(path: Path) -> None:
    """A bench killed mid-write leaves a last line without its newline: cut it, so appends stay whole lines."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        logger.warning("%s: dropping an incomplete last line (an interrupted write)", path)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(keep)
        os.replace(tmp, path)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc="bench cells", unit="cell", disable=not enabled, dynamic_ncols=True
    )


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def die_with_parent() -> None:
    """Linux: this process is killed when its parent dies. A cell or trial runs in its own session (so a
    timeout can stop its whole group), where a SIGKILLed bench or tune would otherwise leave it training on."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


_CHILD = """
import json, resource, sys
from hf_finetune.bench import die_with_parent
die_with_parent()
from hf_finetune import cli
try:
    code = cli.main(sys.argv[2:])
finally:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"max_rss_mb": rss / (2**20 if sys.platform == "darwin" else 1024)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        peak["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    open(sys.argv[1], "w").write(json.dumps(peak))
sys.exit(code)
"""


def cell_log(cell: Cell) -> Path:
    """The whole output of a cell's training process: cells/TASK/STRATEGY/seedN.log."""
    return cell.run_dir.with_name(f"{cell.run_dir.name}.log")


def run_cell(cell: Cell, bench: Bench, peak: float | None) -> dict[str, Any]:
    """Train one cell in a fresh process; its record (status ok, or failed with the error)."""
    import shutil

    shutil.rmtree(cell.run_dir, ignore_errors=True)  # a cell interrupted earlier starts clean
    cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
    # next to the run's output dir, not in it: training refuses an output dir with files of no run
    memory_file = cell.run_dir.with_name(f"{cell.run_dir.name}.memory.json")
    log_file = cell_log(cell)
    cmd = [sys.executable, "-c", _CHILD, str(memory_file), "train", cell.recipe_path, *cell.overrides]
    record: dict[str, Any] = {
        "task": cell.task,
        "strategy": cell.strategy,
        "seed": cell.seed,
        "metric": cell.metric,
    }
    started = time.time()
    with log_file.open("w", encoding="utf-8") as log:
        log.write("$ hf-finetune train " + " ".join([cell.recipe_path, *cell.overrides]) + "\n")
        log.flush()
        code = _run_child(cmd, log, bench.cell_timeout_s, env=_cell_env())
    record["wall_s"] = round(time.time() - started, 2)
    results_file = cell.run_dir / "all_results.json"
    if code != 0 or not results_file.is_file():
        record.update({k: None for k in RECORD_FIELDS if k not in record})
        record["status"] = "failed"
        record["error"] = (
            f"stopped after bench.cell_timeout_s={bench.cell_timeout_s:g}s"
            if code is None
            else _last_error(log_file, code)
        )
        return record
    results = json.loads(results_file.read_text())
    memory = json.loads(memory_file.read_text()) if memory_file.is_file() else {}
    metric = cell.metric or default_metric(cell.recipe, results)
    key = metric_key(cell.recipe, metric)
    score = results.get(key)
    flops = results.get("train_model_flops")
    runtime = results.get("train_runtime")
    record.update(
        {
            "metric": key.removeprefix("eval_"),  # e.g. validation_matched_accuracy for MNLI
            "score": score,
            "train_runtime": runtime,
            "train_samples_per_second": results.get("train_samples_per_second"),
            "train_tokens_per_second": results.get("train_tokens_per_second"),
            "peak_memory_mb": round(memory["max_rss_mb"], 1) if "max_rss_mb" in memory else None,
            "trainable_params": results.get("trainable_params"),
            "total_params": results.get("total_params"),
            "mfu": (flops / runtime / peak) if flops and runtime and peak else None,
            "status": "ok",
            "train_loss": results.get("train_loss"),
            "train_steps": _steps(cell.run_dir),
            "train_tokens": results.get("train_tokens"),
            "train_model_flops": flops,
            "peak_flops": peak,
            "device": cell.device,
            "dtype": cell.dtype,
            "eval": {k: _finite(v) for k, v in results.items() if k.startswith("eval_")},
        }
    )
    if "cuda_max_allocated_mb" in memory:
        record["cuda_peak_memory_mb"] = round(memory["cuda_max_allocated_mb"], 1)
    if score is None:
        record["status"] = "failed"
        record["error"] = (
            f"{key} is not among the eval results {sorted(record['eval'])}; set tasks.{cell.task}.metric "
            "to one of them"
        )
    elif not math.isfinite(score):
        record["status"] = "failed"
        record["score"] = None
        record["error"] = f"{key} is {score} (a constant prediction leaves a correlation undefined)"

    if not bench.keep_models:
        for pattern in ("*.safetensors", "*.bin", "*.pt"):
            for weights in cell.run_dir.glob(pattern):
                weights.unlink()
    return record


def _finite(value: Any) -> Any:
    """NaN and infinities as None: results.jsonl stays strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _run_child(cmd: list[str], log, timeout: float | None, env: dict[str, str] | None = None) -> int | None:
    """Run a cell's process in its own process group; its exit code, or None when it ran out of time.

    On a timeout, Ctrl-C or SIGTERM the whole group is stopped (TERM, then KILL after 10 s), so
    tokenisation workers and dataloader workers the cell started go with it.
    """
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        return None
    except BaseException:  # KeyboardInterrupt, SystemExit from SIGTERM: leave nothing running
        _stop_group(proc)
        raise


def _stop_group(proc: subprocess.Popen) -> None:
    import signal

    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # workers the leader left behind
            break
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    proc.wait()


def _steps(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return None


def _last_error(log_file: Path, code: int) -> str:
    lines = [
        line.strip()
        for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        if line.strip()
    ]
    for line in reversed(lines):
        if line.startswith("hf-finetune: error:"):
            return line[len("hf-finetune: error:") :].strip()
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:500]
    return f"exit code {code}" + (f": {lines[-1][:300]}" if lines else "")


def metric_key(recipe, metric: str) -> str:
    """The all_results.json key of ``metric`` on the recipe's (first) eval split: ``eval_<metric>``, or
    ``eval_<split>_<metric>`` when the recipe evaluates several splits (MNLI's matched and mismatched)."""
    metric = metric.removeprefix("eval_")
    splits = recipe.data.eval_splits
    if len(splits) > 1 and not metric.startswith(tuple(f"{split}_" for split in splits)):
        return f"eval_{splits[0]}_{metric}"
    return f"eval_{metric}"


def default_metric(recipe, results: dict[str, Any]) -> str:
    """The headline metric of a cell's resolved recipe: GLUE's own per task; F1 for NER and QA; else
    accuracy (Pearson for regression)."""
    data = recipe.data
    if data.dataset and data.dataset.rstrip("/").split("/")[-1] == "glue" and data.config:
        return GLUE_METRIC.get(data.config, "accuracy")
    if recipe.task.name in ("token-classification", "question-answering"):
        order = ("f1", "exact_match", "accuracy")
    else:
        order = ("accuracy", "pearson", "matthews_correlation", "f1")
    return next((name for name in order if metric_key(recipe, name) in results), order[0])


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task x strategy (in first-seen order) over the latest record of each seed."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in latest_records(records).values():
        groups.setdefault((record["task"], record["strategy"]), []).append(record)
    rows = []
    for (task, strategy), group in groups.items():
        ok = [r for r in group if r.get("status") == "ok"]
        row: dict[str, Any] = {
            "task": task,
            "strategy": strategy,
            "metric": (ok or group)[0].get("metric") or "",
            "seeds": len(ok),
            "failed": len(group) - len(ok),
        }
        for key in (
            "score",
            "train_runtime",
            "train_samples_per_second",
            "train_tokens_per_second",
            "peak_memory_mb",
            "cuda_peak_memory_mb",
            "mfu",
            "train_steps",
        ):
            values = [r[key] for r in ok if r.get(key) is not None]
            row[key] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None  # one seed: no spread
        row["trainable_params"] = ok[0].get("trainable_params") if ok else None
        row["total_params"] = ok[0].get("total_params") if ok else None
        rows.append(row)
    return rows


def _fmt(value: Any, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def format_markdown(bench: Bench, records: list[dict[str, Any]], hidden: int = 0) -> str:
    rows = summarise(records)
    cuda = any(row["cuda_peak_memory_mb"] is not None for row in rows)  # a GPU column only for GPU cells
    seeds = ", ".join(map(str, bench.seeds))
    budget = f"{bench.max_steps} steps per cell" if bench.max_steps else "each recipe's own schedule"
    lines = [
        f"# Bench: {bench.path.stem}",
        "",
        f"Bench file `{bench.path}`; seeds {seeds}; {budget}. Score: mean ± std over the seeds that finished "
        "(no ± with one seed). "
        "Time: the Trainer's train_runtime (training only, no evaluation); memory: the cell process's peak RSS"
        + (" and peak CUDA memory allocated" if cuda else "")
        + "; MFU: model FLOPs per second over the calibrated peak (see `hf_finetune/mfu.py`).",
        "",
        "| task | strategy | metric | score | seeds | steps | train s | samples/s | tokens/s | peak RSS MB | "
        + ("CUDA peak MB | " if cuda else "")
        + "trainable | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else "") + "---|---|",
    ]
    for row in rows:
        trainable = (
            f"{row['trainable_params'] / row['total_params']:.1%}"
            if row["trainable_params"] and row["total_params"]
            else "-"
        )
        score = "failed" if row["score"] is None else f"{row['score']:.4f}"
        if row["score_std"] is not None:
            score += f" ± {row['score_std']:.4f}"
        seeds_cell = f"{row['seeds']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        lines.append(
            f"| {row['task']} | {row['strategy']} | {row['metric']} | {score} | {seeds_cell} | "
            f"{_fmt(row['train_steps'], '.0f')} | "
            f"{_fmt(row['train_runtime'], '.1f')} | {_fmt(row['train_samples_per_second'], '.1f')} | "
            f"{_fmt(row['train_tokens_per_second'], ',.0f')} | {_fmt(row['peak_memory_mb'], ',.0f')} | "
            + (f"{_fmt(row['cuda_peak_memory_mb'], ',.0f')} | " if cuda else "")
            + f"{trainable} | {_fmt(None if row['mfu'] is None else row['mfu'] * 100, '.1f')}{'%' if row['mfu'] is not None else ''} |"
        )
    if hidden:
        lines[2] += (
            f" Not shown: {hidden} record(s) in {RESULTS} from cells or settings this bench no longer has."
        )
    failures = [r for r in latest_records(records).values() if r.get("status") != "ok"]
    if failures:
        lines += ["", "## Failed cells", ""]
        for r in failures:
            lines.append(f"- {r['task']}/{r['strategy']}/seed{r['seed']}: {r.get('error')}")
    return "\n".join(lines) + "\n"


def plot_results(
    records: list[dict[str, Any]], path: Path, title: str, tasks: list[str] | None = None
) -> None:
    """Score against training time: one panel per task (``tasks``, by default those with records; a task
    whose cells all failed keeps an empty panel), one marker per strategy (seeds small, mean large)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in latest_records(records).values() if r.get("status") == "ok"]
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(r["task"] for r in ok))
    strategies = list(dict.fromkeys(r["strategy"] for r in ok))
    markers = "osD^vP*Xh<>p"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.2 * max(len(tasks), 1), 3.8), squeeze=False)
    handles = {}  # strategy -> its mean marker, for one legend over all panels
    for ax, task in zip(axes[0], tasks):
        for i, strategy in enumerate(strategies):
            points = [
                (r["train_runtime"], r["score"])
                for r in ok
                if r["task"] == task
                and r["strategy"] == strategy
                and r.get("score") is not None
                and r.get("train_runtime") is not None
            ]
            if not points:
                continue
            style = {"marker": markers[i % len(markers)], "color": colors[i % len(colors)]}
            xs, ys = zip(*points)
            ax.scatter(xs, ys, s=18, alpha=0.45, **style)
            handles[strategy] = ax.scatter(
                [statistics.fmean(xs)],
                [statistics.fmean(ys)],
                s=90,
                edgecolors="black",
                label=strategy,
                **style,
            )
        metric = next((r.get("metric") for r in ok if r["task"] == task), None) or "score"
        if not ax.collections:
            ax.text(0.5, 0.5, "no finished cells", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(task)
        ax.set_xlabel("train time (s)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if handles:
        axes[0][0].legend(handles=[handles[s] for s in strategies if s in handles], fontsize=8, loc="best")
    elif not tasks:
        axes[0][0].text(0.5, 0.5, "no finished cells", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(bench: Bench, fingerprints: dict[tuple, str]) -> None:
    """results.md and results.png from the records of this bench's cells at their current settings
    (``fingerprints``: cell key -> fingerprint); older records stay in results.jsonl, out of the report."""
    latest = latest_records(read_results(bench.output_dir / RESULTS))
    records = [r for key, r in latest.items() if fingerprints.get(key) == r.get("fingerprint")]
    hidden = len(latest) - len(records)
    report = bench.output_dir / REPORT
    tmp = report.with_name(report.name + ".partial")
    tmp.write_text(format_markdown(bench, records, hidden), encoding="utf-8")
    os.replace(tmp, report)
    plot_results(
        records, bench.output_dir / PLOT, f"{bench.path.stem}: score vs training time", list(bench.tasks)
    )
