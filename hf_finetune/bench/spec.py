"""A bench file, read and checked: its settings, tasks, strategies and the cells they make.

The ``bench:`` settings are a dataclass read through the recipes' own coercion (`hf_finetune.config.
build_section`), so a wrong one fails as a recipe field does: "`bench.max_steps`: must be a positive
integer or null, got 0." Every cell's recipe is loaded and type-checked before anything runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tracking
from ..config import SECTIONS, build_section, field_help, parse_yaml
from ..config.load import load_recipe
from ..errors import FinetuneError, RecipeError, close_matches
from ..hardware import accelerator
from ..tracking import check_report_to

logger = logging.getLogger("hf_finetune")

RESULTS = "results.jsonl"
REPORT = "results.md"
PLOT = "results.png"
CELLS_DIR = "cells"
TOP_LEVEL = ("bench", "tasks", "strategies", "overrides")
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
    "device",
    "dtype",
    "machine",
)

#: a cell's record with early stopping in its recipe also has these (from its all_results.json)
EARLY_STOPPING_FIELDS = ("early_stopping", "stopped_early", "stopped_at_step", "scheduled_steps", "best_step")


@dataclass
class BenchSettings:
    """The ``bench:`` section of a bench file (``bench.FIELD=value`` on the command line)."""

    output_dir: str | None = field_help(
        "directory for results.jsonl, results.md, results.png and the cells' run directories "
        "(default runs/bench/<bench file name>)",
        None,
    )
    seeds: list[int] | int = field_help(
        "list of training seeds; each task x strategy runs once per seed", default_factory=lambda: [42]
    )
    max_steps: int | None = field_help("optimizer steps per cell (null: every recipe's own schedule)", None)
    cell_timeout_s: float | None = field_help(
        "a cell still running after this many seconds is stopped and recorded as failed", None
    )
    keep_models: bool = field_help(
        "keep each cell's trained weights (default false: only metrics and logs are kept)", False
    )
    report_to: list[str] | str | None = field_help(
        "experiment trackers every cell reports to (`tensorboard`, `trackio`, `mlflow`; the `track` extra): one "
        "store in <output_dir>/tracking, the bench (its output dir's name) as the project or experiment, a run "
        "per cell named TASK/STRATEGY/seedN and tagged with them (cells already done are not rerun for it)",
        None,
    )

    def __post_init__(self) -> None:
        if isinstance(self.seeds, int):
            self.seeds = [self.seeds]
        if not self.seeds:
            raise RecipeError("bench.seeds", "must be a non-empty list of integers, e.g. [1, 2, 3].")
        if len(set(self.seeds)) != len(self.seeds):
            raise RecipeError("bench.seeds", f"repeats a seed: {self.seeds}; give each seed once.")
        if self.max_steps is not None and self.max_steps < 1:
            raise RecipeError(
                "bench.max_steps", f"must be a positive integer or null, got {self.max_steps!r}."
            )
        if self.cell_timeout_s is not None and not self.cell_timeout_s > 0:
            raise RecipeError(
                "bench.cell_timeout_s",
                f"must be a positive number of seconds or null, got {self.cell_timeout_s!r}.",
            )
        self.report_to = check_report_to(self.report_to, "bench.report_to")


@dataclass
class TaskEntry:
    """One entry of ``tasks:``: a recipe, its headline metric, and overrides for it alone."""

    recipe: str = field_help("a recipe path (relative to the bench file) or a bundled name such as glue/sst2")
    metric: str | None = field_help("the metric that scores it (default: the task's headline metric)", None)
    overrides: dict[str, Any] | None = field_help(
        "recipe sections laid over this task's recipe, e.g. {training: {per_device_train_batch_size: 16}}",
        None,
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
    #: the overrides that send the cell to the bench's trackers (not part of its fingerprint: turning tracking
    #: on does not make a cell that is done run again)
    tracking: list[str] = field(default_factory=list, compare=False)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.task, self.strategy, self.seed)

    @property
    def label(self) -> str:
        return f"{self.task}/{self.strategy}/seed{self.seed}"

    @property
    def fingerprint(self) -> str:
        """Changes when the recipe file, the cell's overrides, hf-finetune's training defaults or the machine
        (device, its name, dtype, threads, torch version) change: such a cell is not 'done', so one table never
        mixes machines."""
        from ..config.defaults import table_key
        from ..mfu import cache_key

        text = Path(self.recipe_path).read_text(encoding="utf-8")
        blob = json.dumps(
            [text, self.overrides, self.metric, cache_key(self.device, self.dtype), table_key()],
            sort_keys=True,
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
    report_to: list[str] = field(default_factory=list)

    def cells(self) -> list[Cell]:
        cells = []
        for task, spec in self.tasks.items():
            for strategy, overlay in self.strategies.items():
                layers = [*spec["overrides"], *overlay, *self.overrides, *self.cli_overrides]
                # early stopping keeps the recipe's evaluations and the checkpoints the best model is loaded
                # from (dropped with the weights once the cell is scored); other cells evaluate once, at the end
                stops_early = self._early_stopping(spec["recipe"], layers)
                for seed in self.seeds:
                    run_dir = self.output_dir / CELLS_DIR / task / strategy / f"seed{seed}"
                    overrides = [
                        *layers,
                        *([f"training.max_steps={self.max_steps}"] if self.max_steps is not None else []),
                        f"training.seed={seed}",
                        *(
                            []
                            if stops_early
                            else [
                                "training.eval_strategy=no",  # one evaluation, at the end
                                "training.save_strategy=no",
                                "training.load_best_model_at_end=false",
                            ]
                        ),
                        "training.report_to=none",
                        "training.disable_tqdm=true",
                        f"training.output_dir={json.dumps(str(run_dir))}",
                    ]
                    cell = Cell(task, strategy, seed, spec["recipe"], overrides, spec["metric"], run_dir)
                    cell.tracking = tracking.run_overrides(self.report_to, self.output_dir.name, cell.label)
                    cells.append(cell)
        # every cell's recipe is read and type-checked now: a typo fails here, not an hour in
        # (quietly: the cells themselves log what their recipes resolve to)
        with quiet():
            recipes = [self._cell_recipe(cell) for cell in cells]
        from ..mfu import training_dtype

        for cell, recipe in zip(cells, recipes):
            cell.recipe = recipe
            args = recipe.training
            cell.device = "cpu" if args.use_cpu else accelerator() or "cpu"
            cell.dtype = training_dtype(args, cell.device)
        return cells

    def tracking_env(self, cell: Cell, env: dict[str, str]) -> dict[str, str]:
        """The environment of ``cell``'s process: ``env``, plus the bench's tracking store and the cell's tags
        when the bench reports to trackers."""
        tags = {
            "bench": self.output_dir.name,
            "task": cell.task,
            "strategy": cell.strategy,
            "seed": cell.seed,
        }
        tags["group"] = f"{cell.task}/{cell.strategy}"  # trackio groups a cell's seeds
        root = self.output_dir / tracking.STORE_DIR
        return tracking.child_env(self.report_to, root, cell.label, tags, env=env)

    def preflight(self, cells: list[Cell]) -> None:
        """`hf-finetune validate` for each task x strategy among ``cells`` (data, labels, tokenizer, the
        strategy on a weightless model): a missing file or an impossible strategy fails the bench now,
        naming the cell, instead of failing every one of its cells later."""
        from ..pipeline import validate

        checked = set()
        with quiet():
            for cell in cells:
                if (cell.task, cell.strategy) in checked:
                    continue
                checked.add((cell.task, cell.strategy))
                try:
                    validate(cell.recipe)
                except FinetuneError as exc:
                    raise FinetuneError(f"{self.path}: cell {cell.label}: {exc}") from None

    def _early_stopping(self, recipe_path: str, overrides: list[str]) -> bool:
        """Whether the task's recipe with these layers sets `training.early_stopping` (a recipe that does not
        load says so next, for each of its cells)."""
        try:
            with quiet():
                return load_recipe(recipe_path, overrides).early_stopping is not None
        except RecipeError:
            return False

    def _cell_recipe(self, cell: Cell):
        try:
            return load_recipe(cell.recipe_path, cell.overrides)
        except RecipeError as exc:
            raise FinetuneError(f"{self.path}: cell {cell.label}: {exc}") from None


def cell_log(cell: Cell) -> Path:
    """The whole output of a cell's training process: cells/TASK/STRATEGY/seedN.log."""
    from ..launch import log_path

    return log_path(cell.run_dir)


@contextlib.contextmanager
def quiet():
    """hf_finetune's info logging off (warnings stay) while the bench reads and checks every cell."""
    package = logging.getLogger("hf_finetune")
    level = package.level
    package.setLevel(logging.WARNING)
    try:
        yield
    finally:
        package.setLevel(level)


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
    settings_raw = raw.get("bench") or {}
    if not isinstance(settings_raw, dict):
        raise FinetuneError(f"{path}: `bench`: expected a mapping of settings, e.g. {{seeds: [1, 2, 3]}}.")
    settings_raw = dict(settings_raw)
    cli_overrides = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise FinetuneError(f"override {item!r} is not `bench.field=value` or `section.field=value`.")
        if key.startswith("bench."):
            settings_raw[key[len("bench.") :]] = parse_yaml(text, f"override {key}") if text.strip() else None
        else:
            cli_overrides.append(item)
    try:
        settings = build_section(BenchSettings, settings_raw, "bench")
    except RecipeError as exc:
        raise FinetuneError(f"{path}: {exc}") from None

    tasks = _read_tasks(path, raw.get("tasks"))
    strategies = _read_strategies(path, raw.get("strategies"))
    common = raw.get("overrides") or {}
    if not isinstance(common, dict):
        raise FinetuneError(
            f"{path}: overrides must map recipe sections to fields, e.g. {{training: {{...}}}}."
        )
    return Bench(
        path=path,
        output_dir=Path(settings.output_dir or f"runs/bench/{path.stem}"),
        seeds=list(settings.seeds),
        max_steps=settings.max_steps,
        cell_timeout_s=settings.cell_timeout_s,
        keep_models=settings.keep_models,
        report_to=list(settings.report_to),
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
        try:
            entry = build_section(TaskEntry, spec, f"tasks.{name}")
        except RecipeError as exc:
            raise FinetuneError(f"{path}: {exc}") from None
        out[str(name)] = {
            "recipe": _resolve_recipe(path, entry.recipe, where),
            "metric": entry.metric,
            "overrides": flatten_overrides(entry.overrides or {}, f"{where}.overrides"),
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
    from ..catalog import resolve

    for candidate in (bench_path.parent / name, bench_path.parent / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate.resolve())
    resolved = Path(resolve(name))
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
