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

Modules: `spec` (the bench file, its cells), `run` (running the cells), `report` (results.md, results.png).
"""

from .report import format_markdown, latest_records, plot_results, read_results, summarise, write_report
from .run import run_bench, run_cell
from .spec import (
    CELLS_DIR,
    PLOT,
    RECORD_FIELDS,
    REPORT,
    RESULTS,
    Bench,
    BenchSettings,
    Cell,
    cell_log,
    flatten_overrides,
    load_bench,
)

__all__ = [
    "CELLS_DIR",
    "PLOT",
    "RECORD_FIELDS",
    "REPORT",
    "RESULTS",
    "Bench",
    "BenchSettings",
    "Cell",
    "cell_log",
    "flatten_overrides",
    "format_markdown",
    "latest_records",
    "load_bench",
    "plot_results",
    "read_results",
    "run_bench",
    "run_cell",
    "summarise",
    "write_report",
]
