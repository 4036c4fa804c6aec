"""Running a bench: every cell not already done, one child process each (`hf_finetune.launch`), its record
appended to results.jsonl as it finishes, the report redrawn after each cell.

A cell's record carries the device, precision and machine its process trained on (as the process reported
them), so a table never passes off an fp32 run as bf16, or one machine's times as another's.
"""

from __future__ import annotations

import logging
import math
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from ..launch import (
    STOP_CHILDREN,
    Launched,
    calibrate_in_child,
    progress_bar,
    run_training,
    sigterm_as_exit,
    single_device_env,
    worker_env,
)
from ..outputs import (
    TRAINER_STATE,
    append_jsonl,
    drop_torn_line,
    drop_weights,
    finite,
    read_json,
    run_results,
)
from ..tasks.base import score_key
from .report import latest_records, read_results, write_report
from .spec import EARLY_STOPPING_FIELDS, RECORD_FIELDS, RESULTS, Bench, Cell, cell_log

logger = logging.getLogger("hf_finetune")

#: what runs a cell's training: `hf_finetune.launch.run_training` or a stand-in with its signature
Launcher = Callable[..., Launched]


def run_bench(
    bench: Bench,
    progress: bool = True,
    launcher: Launcher = run_training,
    workers: int = 1,
    devices: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every cell not already done; write the three outputs. Returns {'ran', 'skipped', 'failed', ...}.

    ``workers`` > 1: that many cells at once, each in its own process as always, the i-th running cell slot
    on the i-th of ``devices`` (in turn) and on its share of the CPU cores; each record is appended as its
    cell finishes, so results.jsonl and the report are the same as from one cell at a time."""
    from ..mfu import peak_flops

    cells = bench.cells()
    bench.output_dir.mkdir(parents=True, exist_ok=True)
    results_path = bench.output_dir / RESULTS
    drop_torn_line(results_path)
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
            logger.info("no peak FLOPs cached for %s %s; measuring it now in a child process", device, dtype)
            error = calibrate_in_child(device, dtype)  # keeps the bench process free of a CUDA context
            if error:
                logger.warning("calibrating %s %s failed (MFU left empty): %s", device, dtype, error)
        peaks[(device, dtype)] = peak_flops(device, dtype, measure_if_missing=device == "cpu")

    bar = progress_bar(len(cells), skipped, progress, "bench cells", "cell")
    failed = 0

    def finished(cell: Cell, record: dict[str, Any]) -> None:
        nonlocal failed
        record["fingerprint"] = fingerprints[cell.key]
        append_jsonl(results_path, record)
        if record["status"] != "ok":
            failed += 1
            bar.write(f"cell {cell.label} failed: {record.get('error')} (log: {cell_log(cell)})")
        else:
            bar.write(
                f"cell {cell.label}: {record['metric']} {record['score']:.4f} in {record['train_runtime']:.0f}s"
            )
        bar.update(1)
        write_report(bench, fingerprints)  # the table and plot grow as cells finish

    try:
        with sigterm_as_exit():
            if workers > 1:
                _run_parallel(todo, bench, peaks, launcher, workers, list(devices), finished)
            else:
                env = worker_env(0, 1, list(devices), single_device_env()) if devices else None
                for cell in todo:
                    bar.set_postfix_str(f"running {cell.label}", refresh=True)
                    finished(cell, run_cell(cell, bench, peaks.get((cell.device, cell.dtype)), launcher, env))
    finally:
        bar.close()
    write_report(bench, fingerprints)
    return {
        "cells": len(cells),
        "ran": len(todo),
        "skipped": skipped,
        "failed": failed,
        "output_dir": str(bench.output_dir),
    }


def _run_parallel(
    todo: list[Cell],
    bench: Bench,
    peaks: dict,
    launcher: Launcher,
    workers: int,
    devices: list[str],
    finished: Callable[[Cell, dict[str, Any]], None],
) -> None:
    """`workers` cells at once, a thread each waiting on its cell's process; ``finished`` runs here, in the
    calling thread, as each ends. Ctrl-C or SIGTERM stops every running cell's process (`STOP_CHILDREN`)."""
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(workers):
        slots.put(slot)

    def one(cell: Cell) -> tuple[Cell, dict[str, Any]]:
        slot = slots.get()
        try:
            env = worker_env(slot, workers, devices, single_device_env())
            return cell, run_cell(cell, bench, peaks.get((cell.device, cell.dtype)), launcher, env)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bench-cell") as pool:
        futures = [pool.submit(one, cell) for cell in todo]
        try:
            for future in as_completed(futures):
                finished(*future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            STOP_CHILDREN.set()  # the running cells' processes stop; their threads return
            pool.shutdown(wait=True)
            STOP_CHILDREN.clear()
            raise


def run_cell(
    cell: Cell,
    bench: Bench,
    peak: float | None,
    launcher: Launcher = run_training,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train one cell in a fresh process; its record (status ok, or failed with the error). ``peak``: the
    peak FLOP/s of the cell's device in its planned precision (None: no MFU); ``env``: the process's
    environment (default: this one, one device visible)."""
    record: dict[str, Any] = {
        "task": cell.task,
        "strategy": cell.strategy,
        "seed": cell.seed,
        "metric": cell.metric,
    }
    env = single_device_env() if env is None else env
    if cell.tracking:  # bench.report_to: the bench's store, the cell's tags
        env = bench.tracking_env(cell, env)
    launched = launcher(
        cell.recipe_path,
        [*cell.overrides, *cell.tracking],
        cell.run_dir,
        timeout=bench.cell_timeout_s,
        env=env,
    )
    record["wall_s"] = launched.wall_s
    device = launched.device or cell.device
    dtype = launched.dtype or cell.dtype
    ran_on = {"device": device, "dtype": dtype, "machine": launched.machine or _machine(device)}
    results = run_results(cell.run_dir) if launched.code == 0 else None
    if results is None:
        record.update({k: None for k in RECORD_FIELDS if k not in record})
        record.update(ran_on)
        record["status"] = "failed"
        record["error"] = (
            f"stopped after bench.cell_timeout_s={bench.cell_timeout_s:g}s"
            if launched.timed_out
            else launched.error()
        )
        return record
    if (device, dtype) != (cell.device, cell.dtype):
        from ..mfu import peak_flops

        logger.warning(
            "cell %s trained on %s in %s, not %s in %s as its recipe said; its MFU is against that peak",
            cell.label,
            device,
            dtype,
            cell.device,
            cell.dtype,
        )
        peak = peak_flops(device, dtype, measure_if_missing=False)
    key = score_key(cell.recipe, results, cell.metric)
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
            "peak_memory_mb": launched.peak_rss_mb,
            "trainable_params": results.get("trainable_params"),
            "total_params": results.get("total_params"),
            "mfu": (flops / runtime / peak) if flops and runtime and peak else None,
            "status": "ok",
            "train_loss": results.get("train_loss"),
            "train_steps": _steps(cell),
            "train_tokens": results.get("train_tokens"),
            "train_model_flops": flops,
            "peak_flops": peak,
            **ran_on,
            "eval": {k: finite(v) for k, v in results.items() if k.startswith("eval_")},
        }
    )
    if launched.cuda_peak_mb is not None:
        record["cuda_peak_memory_mb"] = launched.cuda_peak_mb
    if "early_stopping" in results:  # the recipe's training.early_stopping: where it stopped, the best step
        record.update({k: results.get(k) for k in EARLY_STOPPING_FIELDS})
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

    drop_weights(cell.run_dir, keep=bench.keep_models)
    return record


def _steps(cell: Cell) -> int | None:
    try:
        return (read_json(cell.run_dir / TRAINER_STATE) or {})["global_step"]
    except (OSError, ValueError, KeyError):
        return None


def _machine(device: str) -> str:
    from ..mfu import device_name

    return device_name(device)
