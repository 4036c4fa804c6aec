"""What a search is: the recipe, the space, the options and the tune directory's layout (`Tune`), and
`prepare_tune`, which checks all of it before the first trial; plus the overrides every trial's recipe gets.

The tune directory holds ``study.db`` (the optuna study in SQLite: a second run with the same recipe, space
and settings continues it), ``trials.jsonl``, ``leaderboard.md``, ``importance.png``, ``best_recipe.yaml``,
``trials/trial-NNN/`` (each trial's run directory, weights removed; with ``--trial-seeds``, one
``seedS/`` directory per seed in it) with its ``.log``, and with ``--confirm-seeds`` ``confirm.jsonl`` (the
recipe as given and the best recipe retrained per seed, in ``confirm/``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tracking
from ..config import Recipe, plain
from ..config.defaults import table_key
from ..config.load import load_recipe
from ..errors import FinetuneError
from .space import Space, load_space, show

STUDY_DB = "study.db"
#: the study's name in its storage (--study-name: another, for several searches in one database)
STUDY_NAME = "hf-finetune-tune"
TRIALS = "trials.jsonl"
LEADERBOARD = "leaderboard.md"
PLOT = "importance.png"
BEST_RECIPE = "best_recipe.yaml"
CONFIRM = "confirm.jsonl"
TRIALS_DIR = "trials"
CONFIRM_DIR = "confirm"
LOCK = ".lock"
#: the evaluation split of a --folds run: its held-out fold of the training split
FOLD_SPLIT = "fold"


def recipe_value(recipe: Recipe, name: str) -> Any:
    """The value of dotted field ``name`` in a resolved recipe (Trainer defaults included)."""
    section, _, rest = name.partition(".")
    if section == "training":
        node: Any = recipe.training
    else:
        node = getattr(recipe, section)
    for part in rest.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif node is None or not hasattr(node, part):
            return None
        else:
            node = getattr(node, part)
    return plain(node)


def value_overrides(values: dict[str, Any]) -> list[str]:
    return [f"{name}={json.dumps(value)}" for name, value in values.items()]


def result_overrides(recipe: Recipe) -> list[str]:
    """What trials change that changes the result, so `best_recipe.yaml` keeps it too: an evaluation every
    epoch if the recipe never evaluates (the pruner needs them; each evaluation also draws from the random
    stream the later dropout masks come from), and scoring the last model, not the best checkpoint (unless
    the recipe stops early: a trial then stops as the recipe does, and is scored on its best evaluation)."""
    out = []
    if str(recipe_value(recipe, "training.eval_strategy")) == "no":
        out.append("training.eval_strategy=epoch")
    if recipe_value(recipe, "training.load_best_model_at_end") and recipe.early_stopping is None:
        out.append("training.load_best_model_at_end=false")
    return out


def run_overrides(recipe: Recipe, output_dir: Path, seed: int | None = None) -> list[str]:
    """What every trial (and confirmation run) changes besides the searched values: its own output dir, no
    checkpoints (early stopping keeps those it loads the best model from; the weights are dropped after), no
    Hub push, no progress bars, and `result_overrides`."""
    out = [
        f"training.output_dir={json.dumps(str(output_dir))}",
        *(["training.save_strategy=no"] if recipe.early_stopping is None else []),
        "training.report_to=none",
        "training.disable_tqdm=true",
        "hub.push=false",
        *result_overrides(recipe),
    ]
    if seed is not None:
        out.append(f"training.seed={seed}")
    return out


@dataclass
class Tune:
    recipe_path: str
    overrides: list[str]
    space: Space
    output_dir: Path
    trials: int | None
    budget_minutes: float | None
    seed: int
    metric: str | None
    direction: str
    confirm_seeds: list[int] = field(default_factory=list)
    keep_models: bool = False
    #: seeds every trial trains with (its score is their mean); empty: once, with the recipe's training.seed
    trial_seeds: list[int] = field(default_factory=list)
    base: Recipe | None = None
    layers: int = 0
    storage: Any = None
    #: experiment trackers every trial (and confirmation run) reports to (--report-to), in one store here
    report_to: list[str] = field(default_factory=list)
    #: --storage: an optuna storage URL shared by workers; None: the SQLite file in the tune dir
    storage_url: str | None = None
    study_name: str = STUDY_NAME
    #: --join: add this process's trials to a study that another search started
    join: bool = False
    #: --workers: searches at once on this machine, each its own process (1: this process searches)
    workers: int = 1
    #: --devices: the devices the workers are pinned to, one each in turn (CUDA_VISIBLE_DEVICES)
    devices: list[str] = field(default_factory=list)
    #: the number of this process among the --workers of a search on this machine (None: not one of them)
    worker: int | None = None
    #: --folds K: every trial trains K times, once per fold of the training split, scored by the mean
    folds: int | None = None
    #: `study.fail_stale`'s memory: trial number -> (its heartbeat as last seen, when this process saw it)
    heartbeats_seen: dict[int, tuple[str, float]] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """Whether other processes may be running trials of this study at the same time."""
        return bool(self.storage_url) or self.join or self.workers > 1

    @property
    def invocation(self) -> dict[str, Any]:
        """What `hf-finetune tune report` needs to rebuild this search's outputs from its study alone."""
        return {
            "recipe": self.recipe_path,
            "overrides": self.overrides,
            "space": str(Path(self.space.path).resolve()),
            "trials": self.trials,
            "budget_minutes": self.budget_minutes,
            "seed": self.seed,
            "metric": self.metric,
            "direction": self.direction,
            "trial_seeds": self.trial_seeds,
            "folds": self.folds,
            "confirm_seeds": self.confirm_seeds,
            "keep_models": self.keep_models,
            "output_dir": str(self.output_dir.resolve()),
        }

    def base_value(self, name: str) -> Any:
        return recipe_value(self.base, name)

    def trial_recipe(self, values: dict[str, Any], extra: Sequence[str] = ()) -> Recipe:
        return load_recipe(self.recipe_path, [*self.overrides, *value_overrides(values), *extra])

    def start_values(self, start: Any) -> dict[str, Any]:
        """The field values of a `start_with` entry: `recipe` (the recipe's own) or a mapping."""
        return {f: self.base_value(f) for f in self.space.fields} if start == "recipe" else dict(start)

    @property
    def seeds(self) -> list[int | None]:
        """The seeds each trial trains with; [None]: once, with the recipe's own training.seed."""
        return list(self.trial_seeds) or [None]

    @property
    def runs(self) -> list[tuple[str, int | None, int | None]]:
        """The trainings of one trial: (run dir name in the trial's dir, seed, fold). One per fold with
        --folds, one per seed with --trial-seeds, else one ("", None, None) in the trial's dir itself."""
        if self.folds:
            return [(f"fold{i}", None, i) for i in range(self.folds)]
        return [("" if seed is None else f"seed{seed}", seed, None) for seed in self.seeds]

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What must match for a second run to continue the study in the same directory."""
        out = {
            "recipe": hashlib.sha1(Path(self.recipe_path).read_bytes()).hexdigest(),
            "overrides": self.overrides,
            "space": hashlib.sha1(self.space.text.encode()).hexdigest(),
            "metric": self.metric,
            "direction": self.direction,
            "seed": self.seed,
            # a recipe that leaves a training field out trains differently when hf-finetune's defaults change
            "training_defaults": table_key(),
        }
        if self.trial_seeds:  # absent when not given, so that searches made before the option still resume
            out["trial_seeds"] = list(self.trial_seeds)
        if self.folds:
            out["folds"] = self.folds
        return out


def prepare_tune(
    recipe_path: str,
    overrides: Sequence[str],
    space_path: str | Path,
    output_dir: str | Path | None = None,
    trials: int | None = None,
    budget_minutes: float | None = None,
    seed: int = 0,
    metric: str | None = None,
    direction: str | None = None,
    confirm_seeds: Sequence[int] = (),
    keep_models: bool = False,
    trial_seeds: Sequence[int] = (),
    report_to: Sequence[str] = (),
    storage_url: str | None = None,
    study_name: str | None = None,
    join: bool = False,
    workers: int = 1,
    devices: Sequence[str] = (),
    worker: int | None = None,
    folds: int | None = None,
) -> Tune:
    """Check everything before the first trial: the options, the storage (its driver, the database reached),
    the space against the recipe (every field, each end of every range, every choice, and the strategy each
    implies on a weightless model), the data."""
    from ..pipeline import meta_model, prepare, strategy_plan, with_peft

    if trials is None and budget_minutes is None:
        raise FinetuneError(
            "tune: give --trials N and/or --budget-minutes M (the search stops at the first)."
        )
    if trials is not None and trials < 1:
        raise FinetuneError(f"--trials: at least 1, got {trials}.")
    if budget_minutes is not None and not budget_minutes > 0:
        raise FinetuneError(f"--budget-minutes: a positive number of minutes, got {budget_minutes}.")
    if len(set(confirm_seeds)) != len(list(confirm_seeds)):
        raise FinetuneError(f"--confirm-seeds: repeats a seed: {list(confirm_seeds)}.")
    if len(set(trial_seeds)) != len(list(trial_seeds)):
        raise FinetuneError(f"--trial-seeds: repeats a seed: {list(trial_seeds)}.")
    trackers = tracking.check_report_to(list(report_to), "--report-to")
    devices = [d.strip() for d in devices if d.strip()]
    if workers < 1:
        raise FinetuneError(f"--workers: at least 1, got {workers}.")
    if len(set(devices)) != len(devices):
        raise FinetuneError(f"--devices: repeats a device: {devices}.")
    if devices and workers == 1:
        workers = len(devices)  # one worker per device
    if join and confirm_seeds:
        raise FinetuneError(
            "--confirm-seeds: the process that started the search confirms its winner; drop it with --join."
        )
    if folds is not None and folds < 2:
        raise FinetuneError(
            f"--folds: at least 2 (each fold is evaluated on by a model trained on the others), got {folds}; "
            "drop --folds to score trials on the evaluation split."
        )
    if folds is not None and trial_seeds:
        raise FinetuneError(
            "--folds and --trial-seeds: each averages a trial over several trainings; give one of the two."
        )
    if study_name is not None and not study_name.strip():
        raise FinetuneError("--study-name: give a name.")
    if storage_url is not None:
        from .storage import open_storage

        open_storage(storage_url)  # the driver and the database, before any data or weights load
    space = load_space(space_path)
    base = load_recipe(recipe_path, list(overrides))
    selected_on = list(trial_seeds) or [base.training.seed]
    shared = sorted(set(selected_on) & set(confirm_seeds))
    if shared:
        where = "--trial-seeds" if trial_seeds else "the recipe's training.seed (every trial's seed)"
        raise FinetuneError(
            f"--confirm-seeds: {shared} also in {where}: the confirmation would retrain runs the search "
            "selected on, and favour its winner; confirm with other seeds."
        )
    if direction is None:
        from ..tasks.base import lower_is_better

        direction = "minimize" if metric is not None and lower_is_better(metric) else "maximize"
    out = Path(output_dir) if output_dir else Path("runs") / "tune" / Path(recipe_path).stem
    tune = Tune(
        recipe_path=str(Path(recipe_path).resolve()),
        overrides=list(overrides),
        space=space,
        output_dir=out,
        trials=trials,
        budget_minutes=budget_minutes,
        seed=seed,
        metric=metric,
        direction=direction,
        confirm_seeds=list(confirm_seeds),
        keep_models=keep_models,
        trial_seeds=list(trial_seeds),
        base=base,
        report_to=trackers,
        storage_url=storage_url,
        study_name=study_name or STUDY_NAME,
        join=join,
        workers=workers,
        devices=devices,
        worker=worker,
        folds=folds,
    )
    if folds is not None and base.data.validation_size is not None:
        raise FinetuneError(
            f"--folds: the recipe carves its evaluation split out of the training split "
            f"(data.validation_size={base.data.validation_size}), so the folds would hold the rows the winner "
            "is then scored on; give the evaluation split as its own split or file, or drop --folds."
        )
    if folds is not None:  # every fold can be carved (a class with fewer rows than folds is an error)
        fold_recipe = load_recipe(recipe_path, [*overrides, *fold_overrides(folds, 0)])
        try:
            prepare(fold_recipe, stage="validate")
        except FinetuneError as exc:
            raise FinetuneError(f"--folds {folds}: {exc}") from None
    prepared = prepare(base, stage="validate")  # data, labels, tokenizer, config, the recipe's own strategy
    tune.layers = prepared.plan.num_layers
    meta = None
    for param in space.params:
        try:
            param.distribution(tune.layers)
        except ValueError as exc:
            raise FinetuneError(
                f"{space.path}: parameters.{param.field}: {exc} (`layers` is {tune.layers} for this model)."
            ) from None
        for key, accepted in param.when.items():
            for value in accepted:
                try:
                    load_recipe(recipe_path, [*overrides, f"{key}={json.dumps(value)}"])
                except FinetuneError as exc:
                    raise FinetuneError(f"{space.path}: parameters.{param.field}.when: {exc}") from None
        conditions = {k: v[0] for k, v in param.when.items()}
        for value in param.candidates(tune.layers):
            where = f"{space.path}: parameters.{param.field}={show(value)}"
            try:
                recipe = tune.trial_recipe({**conditions, param.field: value})
                if param.field.split(".")[0] in ("strategy", "peft") or any(
                    k.split(".")[0] in ("strategy", "peft") for k in conditions
                ):
                    if meta is None:
                        meta = prepared
                    strategy_plan(recipe, with_peft(recipe, meta_model(meta)))
            except FinetuneError as exc:
                raise FinetuneError(f"{where}: {exc}") from None
    for i, start in enumerate(space.start_with):
        space.fixed_params(
            tune.start_values(start), tune.base_value, tune.layers, f"start_with[{i}]", start == "recipe"
        )
    return tune


# ------------------------------------------------------------------------------------------------


def sqlite_url(output_dir: Path) -> str:
    """The default storage of a search: its tune dir's SQLite file."""
    return f"sqlite:///{(Path(output_dir) / STUDY_DB).resolve()}"


def trial_dir(tune: Tune, number: int) -> Path:
    """The run directory of trial ``number`` (its log and memory file beside it)."""
    return tune.output_dir / TRIALS_DIR / f"trial-{number:03d}"


def train_overrides(
    tune: Tune, values: dict[str, Any], run_dir: Path, seed: int | None = None, fold: int | None = None
) -> list[str]:
    """The overrides of one training of the search's recipe with ``values``, into ``run_dir`` (with ``seed``,
    else the recipe's own; on fold ``fold`` of --folds): the user's overrides, the values, then
    `run_overrides` and `fold_overrides`."""
    out = [*tune.overrides, *value_overrides(values), *run_overrides(tune.base, run_dir, seed=seed)]
    return out + ([] if fold is None else fold_overrides(tune.folds, fold))


def fold_overrides(folds: int, fold: int) -> list[str]:
    """A run on fold ``fold`` of ``folds``: trained on the other folds of the training split, evaluated on
    this one (the recipe's evaluation and test splits are not read)."""
    return [
        f"data.folds={folds}",
        f"data.fold={fold}",
        f"data.eval_split={FOLD_SPLIT}",
        "data.test_split=null",
    ]


def tracked(
    tune: Tune, run_dir: Path, seed: int | None, values: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str] | None]:
    """The overrides and the environment that send the run in ``run_dir`` to the search's trackers (--report-to):
    one store in <tune dir>/tracking, the search (the tune dir's name) as the project, a run per trial named
    trial-NNN (trial-NNN/seedS with --trial-seeds; confirm/ARM/seedS for confirmation runs), tagged with the
    trial, its seed and its values. ([], ``env``) without trackers."""
    if not tune.report_to:
        return [], env
    name = Path(run_dir).relative_to(tune.output_dir).as_posix().removeprefix(f"{TRIALS_DIR}/")
    tags = {"tune": tune.output_dir.name, "seed": tune.base.training.seed if seed is None else seed}
    trial = name.split("/")[0]
    if trial.startswith("trial-"):
        tags["trial"] = int(trial.removeprefix("trial-"))
        tags["group"] = trial  # trackio groups a trial's seeds
    tags.update({key: json.dumps(value) for key, value in values.items()})
    overrides = tracking.run_overrides(tune.report_to, tune.output_dir.name, name)
    return overrides, tracking.child_env(
        tune.report_to, tune.output_dir / tracking.STORE_DIR, name, tags, env
    )
