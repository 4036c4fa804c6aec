"""`hf-finetune tune`: choose a recipe's strategy and Trainer settings from its validation score (optuna).

    hf-finetune tune recipes/glue/rte.yaml --trials 12 [--space recipes/tune/default-space.yaml]
                     [--budget-minutes 30] [--output-dir runs/tune/rte] [--trial-seeds 42 43]
                     [--confirm-seeds 1 2 3] [overrides]

A search space file names recipe fields and their ranges::

    start_with: [recipe]                 # trial 0 trains the recipe as it is: the baseline on the leaderboard
    sampler: {n_startup_trials: 4}       # TPE: random trials before it models the results
    pruner: {n_startup_trials: 3, n_warmup_steps: 30}   # median rule; steps are % of a trial's schedule
    parameters:
      peft.method: {choices: [null, lora]}
      peft.r: {choices: [4, 8, 16], when: {peft.method: lora}}
      training.learning_rate:            # alternatives: the first whose `when` holds is used
        - {low: 1.0e-5, high: 3.0e-4, log: true, when: {peft.method: null}}
        - {low: 1.0e-4, high: 3.0e-3, log: true, when: {peft.method: lora}}
      strategy.freeze_layers: {low: 0, high: layers, when: {peft.method: null}}   # layers: the model's depth

Every trial is one `hf-finetune train` of the recipe with the trial's values laid over it, in its own
process: a fresh model, seeded (the recipe's training.seed) before its head is built, exactly as a plain run,
so `best_recipe.yaml` retrains to the best trial's score. The trial reports every evaluation to the study
(step = percent of its own schedule) and stops when the median rule prunes it.

With ``--trial-seeds 42 43`` a trial trains once per seed (in turn, each in its own process) and its score is
the mean: on a small dev set one seed's score can differ from the next by more than the settings do, and a
search that selects on a single seed picks a lucky seed as often as a better recipe. The first seed's run
reports to the pruner; a pruned trial does not train the other seeds.

The tune directory holds ``study.db`` (the optuna study in SQLite: a second run with the same recipe, space
and settings continues it), ``trials.jsonl``, ``leaderboard.md``, ``importance.png``, ``best_recipe.yaml``,
``trials/trial-NNN/`` (each trial's run directory, weights removed; with ``--trial-seeds``, one
``seedS/`` directory per seed in it) with its ``.log``, and with
``--confirm-seeds`` ``confirm.jsonl`` (the recipe as given and the best recipe retrained per seed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench import _CHILD, _last_error, _run_child, _sigterm_as_exit, default_metric, metric_key
from .config import SECTIONS, Recipe, load_recipe, parse_yaml
from .errors import FinetuneError, close_matches

logger = logging.getLogger("hf_finetune")

STUDY_DB = "study.db"
STUDY_NAME = "hf-finetune-tune"
TRIALS = "trials.jsonl"
LEADERBOARD = "leaderboard.md"
PLOT = "importance.png"
BEST_RECIPE = "best_recipe.yaml"
CONFIRM = "confirm.jsonl"
TRIALS_DIR = "trials"
CONFIRM_DIR = "confirm"
#: exit code of a trial process that the pruner stopped
EXIT_PRUNED = 3
#: the settings of `sampler:` and `pruner:` a space file may give (optuna's TPESampler / MedianPruner)
SAMPLER_FIELDS = {
    "n_startup_trials": "random trials before TPE models the results (default 4)",
    "n_ei_candidates": "candidates TPE scores per draw (default 24)",
    "multivariate": "model the parameters jointly (default false)",
}
PRUNER_FIELDS = {
    "n_startup_trials": "trials that finish before any is pruned (default 3)",
    "n_warmup_steps": "no pruning before this percent of a trial's schedule (default 0)",
    "n_min_trials": "finished trials with a score at or before that point, needed to prune there (default 1)",
}
#: settings that must be at least 1
_POSITIVE = ("n_ei_candidates", "n_min_trials")
#: a trial stopped (budget, signal) this many times in a row is recorded as failed instead of queued again
MAX_ATTEMPTS = 3
SPACE_KEYS = ("parameters", "start_with", "sampler", "pruner")
PARAM_KEYS = ("low", "high", "log", "step", "choices", "when")
#: trial statuses that count towards --trials; `interrupted` and `budget` trials run again
COUNTED = ("ok", "pruned", "failed")


# ------------------------------------------------------------------------------------------------
# The search space
# ------------------------------------------------------------------------------------------------
@dataclass
class Param:
    """One recipe field and its range (a field with alternatives has one Param per alternative)."""

    field: str
    name: str  # the optuna parameter name: the field, or `field|cond=value` for alternatives
    kind: str  # float, int or categorical
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: list[Any] | None = None
    when: dict[str, list[Any]] = field(default_factory=dict)

    def bounds(self, layers: int) -> tuple[Any, Any]:
        return (layers if self.low == "layers" else self.low, layers if self.high == "layers" else self.high)

    def distribution(self, layers: int):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(self.choices)
        low, high = self.bounds(layers)
        if self.kind == "int":
            return IntDistribution(low, high, log=self.log, step=self.step or 1)
        return FloatDistribution(low, high, log=self.log, step=self.step)

    def active(self, value_of: Callable[[str], Any]) -> bool:
        return all(value_of(name) in accepted for name, accepted in self.when.items())

    def contains(self, value: Any, layers: int) -> bool:
        if self.kind == "categorical":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        low, high = self.bounds(layers)
        return low <= value <= high

    def candidates(self, layers: int) -> list[Any]:
        """The values a preflight check tries: every choice, or both ends of the range."""
        return list(self.choices) if self.kind == "categorical" else list(self.bounds(layers))

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(_show(c) for c in self.choices)
        return f"{self.kind} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class Space:
    path: Path
    text: str
    params: list[Param]
    start_with: list[Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any] | None

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys(p.field for p in self.params))

    def sample(self, trial, base_value: Callable[[str], Any], layers: int) -> dict[str, Any]:
        """The trial's value of every active field (suggested through ``trial``), in file order."""
        values: dict[str, Any] = {}

        def value_of(name: str) -> Any:
            return values[name] if name in values else base_value(name)

        for param in self.params:
            if param.field in values or not param.active(value_of):
                continue
            dist = param.distribution(layers)
            if param.kind == "categorical":
                value = trial.suggest_categorical(param.name, param.choices)
            elif param.kind == "int":
                value = trial.suggest_int(param.name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                value = trial.suggest_float(param.name, dist.low, dist.high, step=dist.step, log=dist.log)
            values[param.field] = value
        return values

    def fixed_params(
        self, given: dict[str, Any], base_value, layers: int, where: str, whole_recipe: bool = False
    ) -> dict[str, Any]:
        """Optuna parameters for a trial that starts with the field values ``given`` (others are sampled).

        ``whole_recipe``: ``given`` is the recipe's value of every field, and fields whose `when` does not
        hold are simply not used; a mapping from the space file must give only fields that are used, and
        the fields their `when` depends on (else the sampler could pick another alternative for them).
        """
        out: dict[str, Any] = {}
        values: dict[str, Any] = {}

        def value_of(name: str) -> Any:
            return values[name] if name in values else base_value(name)

        for name in given:
            if name not in self.fields:
                raise FinetuneError(
                    f"{self.path}: {where}: {name!r} is not a parameter of this space{close_matches(name, self.fields)}."
                )
        for param in self.params:
            if param.field in values or not param.active(value_of):
                continue
            if param.field not in given:
                continue
            missing = [c for c in param.when if c in self.fields and c not in given]
            if missing and not whole_recipe:
                raise FinetuneError(
                    f"{self.path}: {where}: {param.field} depends on {', '.join(missing)} (its `when`); give "
                    f"{', '.join(missing)} too."
                )
            value = given[param.field]
            if not param.contains(value, layers):
                raise FinetuneError(
                    f"{self.path}: {where}: {param.field}={_show(value)} is outside the space "
                    f"({param.describe()}); widen the range, or start without it."
                )
            if param.kind == "int":
                value = int(value)
            values[param.field] = value
            out[param.name] = value
        unused = [name for name in given if name not in values]
        if unused and not whole_recipe:
            raise FinetuneError(
                f"{self.path}: {where}: {', '.join(unused)} would not be used: the `when` of "
                f"{'that parameter' if len(unused) == 1 else 'those parameters'} does not hold for these values."
            )
        return out


def load_space(path: str | Path) -> Space:
    """Read and check a search space file (its structure; the fields are checked against a recipe later)."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(
            f"--space: file not found: {path}. Give a search space YAML file, e.g. "
            "recipes/tune/default-space.yaml."
        )
    text = path.read_text(encoding="utf-8")
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict) or not isinstance(raw.get("parameters"), dict) or not raw["parameters"]:
        raise FinetuneError(
            f"{path}: a search space is a mapping with `parameters` (recipe field -> range), e.g. "
            "parameters: {training.learning_rate: {low: 1.0e-5, high: 3.0e-4, log: true}}."
        )
    for key in raw:
        if key not in SPACE_KEYS:
            raise FinetuneError(
                f"{path}: unknown key {key!r}{close_matches(str(key), SPACE_KEYS)}; "
                f"a space file has {', '.join(SPACE_KEYS)}."
            )
    params: list[Param] = []
    for name, spec in raw["parameters"].items():
        name = str(name)
        where = f"{path}: parameters.{name}"
        section = name.split(".")[0]
        if "." not in name or section not in SECTIONS:
            raise FinetuneError(
                f"{where}: name a recipe field as section.field (e.g. training.learning_rate); "
                f"sections: {', '.join(SECTIONS)}."
            )
        alternatives = spec if isinstance(spec, list) else [spec]
        if not alternatives:
            raise FinetuneError(f"{where}: is an empty list; give a range or a list of alternatives.")
        for i, alt in enumerate(alternatives):
            alt_where = where if len(alternatives) == 1 else f"{where}[{i}]"
            param = _read_param(alt_where, name, alt)
            if len(alternatives) > 1:
                if not param.when:
                    raise FinetuneError(
                        f"{alt_where}: alternatives each need a `when` (the first that holds is used)."
                    )
                param.name = name + "|" + ",".join(f"{k}={_show(v[0])}" for k, v in param.when.items())
            params.append(param)
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise FinetuneError(f"{path}: two alternatives of one field have the same `when`; make them differ.")
    for i, param in enumerate(params):
        for cond in param.when:
            later = [p for p in params[i:] if p.field == cond and p.field != param.field]
            if later:
                raise FinetuneError(
                    f"{path}: parameters.{param.field}: `when` uses {cond}, which the space sets further down; "
                    f"list {cond} first."
                )
    start_with = raw.get("start_with") or []
    if not isinstance(start_with, list) or not all(s == "recipe" or isinstance(s, dict) for s in start_with):
        raise FinetuneError(
            f"{path}: start_with: a list of `recipe` (the recipe's own values) or mappings of field values, "
            "e.g. [recipe, {training.learning_rate: 1.0e-4}]."
        )
    sampler = _settings(path, "sampler", raw.get("sampler"), SAMPLER_FIELDS)
    pruner_raw = raw.get("pruner", {})
    off = pruner_raw is None or pruner_raw is False or pruner_raw == "none"
    pruner = None if off else _settings(path, "pruner", pruner_raw, PRUNER_FIELDS)
    return Space(path, text, params, start_with, sampler, pruner)


def _read_param(where: str, name: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise FinetuneError(
            f"{where}: give {{low: .., high: .., log: true}} or {{choices: [..]}}, got {spec!r}."
        )
    for key in spec:
        if key not in PARAM_KEYS:
            raise FinetuneError(
                f"{where}: unknown key {key!r}{close_matches(str(key), PARAM_KEYS)}; keys: {', '.join(PARAM_KEYS)}."
            )
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise FinetuneError(
            f"{where}.when: a mapping of recipe fields to values, e.g. {{peft.method: lora}}."
        )
    when = {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in when.items()}
    for key in when:
        if "." not in key or key.split(".")[0] not in SECTIONS or key == name:
            raise FinetuneError(f"{where}.when: {key!r} is not another recipe field (section.field).")
    if "choices" in spec:
        choices = spec["choices"]
        extra = [k for k in ("low", "high", "log", "step") if k in spec]
        if extra:
            raise FinetuneError(
                f"{where}: give either `choices` or `low`/`high`, not both ({', '.join(extra)})."
            )
        if not isinstance(choices, list) or not choices:
            raise FinetuneError(f"{where}.choices: a non-empty list of values.")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise FinetuneError(f"{where}.choices: values must be numbers, text, true/false or null.")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise FinetuneError(f"{where}.choices: lists a value twice.")
        return Param(name, name, "categorical", choices=choices, when=when)
    if "low" not in spec or "high" not in spec:
        raise FinetuneError(f"{where}: give `low` and `high` (a range) or `choices` (a list).")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for key, value in (("low", low), ("high", high)):
        if value != "layers" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise FinetuneError(
                f"{where}.{key}: a number, or `layers` (the model's number of transformer layers); got {value!r}."
            )
    if not isinstance(log, bool):
        raise FinetuneError(f"{where}.log: true or false.")
    ints = all(v == "layers" or isinstance(v, int) for v in (low, high))
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise FinetuneError(f"{where}.step: a positive number.")
    kind = "int" if ints and (step is None or isinstance(step, int)) else "float"
    if kind == "float" and "layers" in (low, high):
        raise FinetuneError(f"{where}: `layers` is a whole number; give integer bounds.")
    if "layers" not in (low, high) and not low < high:
        raise FinetuneError(f"{where}: low ({low}) must be below high ({high}).")
    if log and (step is not None or (low != "layers" and low <= 0)):
        raise FinetuneError(f"{where}: a log range needs low > 0 and no step.")
    if kind == "float":
        low, high = float(low), float(high)
    return Param(name, name, kind, low=low, high=high, log=log, step=step, when=when)


def _settings(path: Path, key: str, raw: Any, known: dict[str, str]) -> dict[str, Any]:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise FinetuneError(f"{path}: {key}: a mapping of settings ({', '.join(known)}).")
    for name, value in raw.items():
        if name not in known:
            raise FinetuneError(
                f"{path}: {key}.{name}: unknown setting{close_matches(str(name), known)}; settings: "
                + "; ".join(f"{k} ({v})" for k, v in known.items())
            )
        if name == "multivariate":
            if not isinstance(value, bool):
                raise FinetuneError(f"{path}: {key}.{name}: true or false.")
        elif isinstance(value, bool) or not isinstance(value, int) or value < (1 if name in _POSITIVE else 0):
            floor = 1 if name in _POSITIVE else 0
            raise FinetuneError(f"{path}: {key}.{name}: a whole number >= {floor}, got {value!r}.")
    return dict(raw)


# ------------------------------------------------------------------------------------------------
# Recipes of trials
# ------------------------------------------------------------------------------------------------
def recipe_value(recipe: Recipe, name: str) -> Any:
    """The value of dotted field ``name`` in a resolved recipe (Trainer defaults included)."""
    from .config import _plain

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
    return _plain(node)


def value_overrides(values: dict[str, Any]) -> list[str]:
    return [f"{name}={json.dumps(value)}" for name, value in values.items()]


def result_overrides(recipe: Recipe) -> list[str]:
    """What trials change that changes the result, so `best_recipe.yaml` keeps it too: an evaluation every
    epoch if the recipe never evaluates (the pruner needs them; each evaluation also draws from the random
    stream the later dropout masks come from), and scoring the last model, not the best checkpoint."""
    out = []
    if str(recipe_value(recipe, "training.eval_strategy")) == "no":
        out.append("training.eval_strategy=epoch")
    if recipe_value(recipe, "training.load_best_model_at_end"):
        out.append("training.load_best_model_at_end=false")
    return out


def run_overrides(recipe: Recipe, output_dir: Path, seed: int | None = None) -> list[str]:
    """What every trial (and confirmation run) changes besides the searched values: its own output dir, no
    checkpoints, no Hub push, no progress bars, and `result_overrides`."""
    out = [
        f"training.output_dir={json.dumps(str(output_dir))}",
        "training.save_strategy=no",
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
    def fingerprint(self) -> dict[str, Any]:
        """What must match for a second run to continue the study in the same directory."""
        out = {
            "recipe": hashlib.sha1(Path(self.recipe_path).read_bytes()).hexdigest(),
            "overrides": self.overrides,
            "space": hashlib.sha1(self.space.text.encode()).hexdigest(),
            "metric": self.metric,
            "direction": self.direction,
            "seed": self.seed,
        }
        if self.trial_seeds:  # absent when not given, so that searches made before the option still resume
            out["trial_seeds"] = list(self.trial_seeds)
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
) -> Tune:
    """Check everything before the first trial: the options, the space against the recipe (every field, each
    end of every range, every choice, and the strategy each implies on a weightless model), the data."""
    from .pipeline import _meta_model, _with_peft, prepare, strategy_plan

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
        lower_better = metric is not None and any(
            w in metric.lower() for w in ("loss", "mse", "mae", "error")
        )
        direction = "minimize" if lower_better else "maximize"
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
    )
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
            where = f"{space.path}: parameters.{param.field}={_show(value)}"
            try:
                recipe = tune.trial_recipe({**conditions, param.field: value})
                if param.field.split(".")[0] in ("strategy", "peft") or any(
                    k.split(".")[0] in ("strategy", "peft") for k in conditions
                ):
                    if meta is None:
                        meta = prepared
                    strategy_plan(recipe, _with_peft(recipe, _meta_model(meta)))
            except FinetuneError as exc:
                raise FinetuneError(f"{where}: {exc}") from None
    for i, start in enumerate(space.start_with):
        space.fixed_params(
            tune.start_values(start), tune.base_value, tune.layers, f"start_with[{i}]", start == "recipe"
        )
    return tune


# ------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------
def _storage(tune: Tune):
    import optuna

    url = f"sqlite:///{(tune.output_dir / STUDY_DB).resolve()}"
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def _pruner(settings: dict[str, Any] | None):
    """The median stopping rule at the same point of each trial's own schedule (percent of its steps)."""
    import optuna

    if settings is None:
        return optuna.pruners.NopPruner()
    return _median_at_progress()(
        n_startup_trials=settings.get("n_startup_trials", 3),
        n_warmup_steps=settings.get("n_warmup_steps", 0),
        n_min_trials=settings.get("n_min_trials", 1),
    )


def _median_at_progress():
    import optuna
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    class MedianAtProgressPruner(optuna.pruners.BasePruner):
        """Prune when the trial's best score so far is worse than the median, over the finished trials, of
        each one's latest score at or before the same percent of its schedule.

        optuna's MedianPruner compares trials only at the very same step; trials of 2 and 8 epochs evaluate
        at 50% / 100% and at 12.5% steps, so they would meet only at 100%, when there is nothing to save.
        Never prunes at 100% (the trial has finished training).
        """

        def __init__(self, n_startup_trials: int, n_warmup_steps: int, n_min_trials: int) -> None:
            self.n_startup_trials = n_startup_trials
            self.n_warmup_steps = n_warmup_steps
            self.n_min_trials = n_min_trials

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None or step < self.n_warmup_steps or step >= 100:
                return False
            finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if len(finished) < self.n_startup_trials:
                return False
            others = []
            for other in finished:
                earlier = [s for s in other.intermediate_values if s <= step]
                if earlier and math.isfinite(other.intermediate_values[max(earlier)]):
                    others.append(other.intermediate_values[max(earlier)])
            if len(others) < self.n_min_trials:
                return False
            mine = [v for s, v in trial.intermediate_values.items() if s <= step and math.isfinite(v)]
            if not mine:
                return True  # nothing but NaN so far
            median = statistics.median(others)
            if study.direction == StudyDirection.MAXIMIZE:
                return max(mine) < median
            return min(mine) > median

    return MedianAtProgressPruner


LOCK = ".lock"


def open_study(tune: Tune):
    """Create the study, or continue the one in the tune dir (which must be of the same search)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune.output_dir.mkdir(parents=True, exist_ok=True)
    storage = tune.storage = _storage(tune)
    exists = STUDY_NAME in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if not exists and any(p for p in tune.output_dir.iterdir() if p.name not in (STUDY_DB, LOCK)):
        raise FinetuneError(
            f"--output-dir {tune.output_dir}: is not empty and holds no search; give a new or empty directory."
        )
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction=tune.direction,
        pruner=_pruner(tune.space.pruner),
        load_if_exists=True,
    )
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        study.set_user_attr("fingerprint", tune.fingerprint)
        study.set_user_attr("pruner", tune.space.pruner)
        study.set_user_attr("metric", tune.metric)
        for i, start in enumerate(tune.space.start_with):
            params = tune.space.fixed_params(
                tune.start_values(start), tune.base_value, tune.layers, f"start_with[{i}]", start == "recipe"
            )
            study.enqueue_trial(params, user_attrs={"start": "recipe" if start == "recipe" else "given"})
    elif saved != tune.fingerprint:
        now = tune.fingerprint
        changed = [k for k in {**saved, **now} if saved.get(k) != now.get(k)]
        raise FinetuneError(
            f"--output-dir {tune.output_dir}: holds a search with another {', '.join(changed)}; continue it with "
            "the same recipe, overrides, space and options, or give a new --output-dir."
        )
    # a resumed search draws on from another seed: the sampler's RNG restarts, and must not repeat draws
    multivariate = tune.space.sampler.get("multivariate", False)
    study.sampler = optuna.samplers.TPESampler(
        seed=tune.seed + len(study.trials),
        n_startup_trials=tune.space.sampler.get("n_startup_trials", 4),
        n_ei_candidates=tune.space.sampler.get("n_ei_candidates", 24),
        multivariate=multivariate,
        group=multivariate,  # conditional parameters: modelled jointly within each group
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # left running by a search that was killed (the lock says no other search is using the directory)
        logger.info("trial %d did not finish (its search was stopped); it runs again", trial.number)
        _stop(tune, study, trial.number, "interrupted", "its search was stopped (killed)")
    return study


def _lock(tune: Tune):
    """An exclusive lock on the tune dir for this run: a second search there would corrupt the first."""
    import fcntl

    tune.output_dir.mkdir(parents=True, exist_ok=True)
    handle = (tune.output_dir / LOCK).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise FinetuneError(
            f"--output-dir {tune.output_dir}: another `hf-finetune tune` is running on it; wait for it to "
            "end, or give another --output-dir."
        ) from None
    return handle


def _set_attr(tune: Tune, study, number: int, key: str, value: Any) -> None:
    """Set a user attribute of trial ``number``, which another (maybe dead) process may have created."""
    import optuna

    storage = tune.storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number
    )
    optuna.trial.Trial(study, trial_id).set_user_attr(key, value)


def _stop(tune: Tune, study, number: int, status: str, error: str) -> str:
    """End running trial ``number`` as FAIL without a verdict on its values (`budget`, `interrupted`): they
    are queued to run again first, unless this was their MAX_ATTEMPTS-th stop, which makes it `failed`."""
    from optuna.trial import TrialState

    frozen = study.get_trials(deepcopy=False)[number]
    attempt = frozen.user_attrs.get("attempt", 1)
    if attempt >= MAX_ATTEMPTS:
        status, error = "failed", f"{error}; stopped {attempt} times in a row, so not queued again"
    _set_attr(tune, study, number, "status", status)
    _set_attr(tune, study, number, "error", error)
    study.tell(number, state=TrialState.FAIL)
    _drop_weights(_trial_dir(tune, number), tune.keep_models)
    if status != "failed":
        again = {"retry_of": number, "attempt": attempt + 1}
        if "start" in frozen.user_attrs:  # the baseline stays the baseline
            again["start"] = frozen.user_attrs["start"]
        study.enqueue_trial(dict(frozen.params), user_attrs=again)
    return status


def status_of(trial) -> str:
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE:
        return "ok"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("status", "failed")
    return trial.state.name.lower()


def counted(study) -> int:
    return sum(status_of(t) in COUNTED for t in study.get_trials(deepcopy=False))


def run_tune(tune: Tune, progress: bool = True) -> dict[str, Any]:
    """Run trials until --trials count or the budget is spent; write the outputs after each trial."""
    lock = _lock(tune)
    try:
        return _run_tune(tune, progress)
    finally:
        lock.close()


def _run_tune(tune: Tune, progress: bool) -> dict[str, Any]:
    from optuna.trial import TrialState

    started = time.time()
    deadline = started + 60 * tune.budget_minutes if tune.budget_minutes else None
    study = open_study(tune)
    bar = _progress(tune.trials, counted(study), progress)
    restore = _sigterm_as_exit()
    ran = 0
    stopped_by = "trials"
    try:
        write_outputs(tune, study)
        while tune.trials is None or counted(study) < tune.trials:
            if deadline is not None and not _time_for_a_trial(study, deadline):
                stopped_by = "budget"
                break
            trial = study.ask()
            values = tune.space.sample(trial, tune.base_value, tune.layers)
            bar.set_postfix_str(_postfix(tune, study, trial.number), refresh=True)
            outcome = run_trial(tune, study, trial, values, deadline)
            ran += 1
            bar.write(_trial_line(trial.number, outcome, values))
            if outcome["status"] in COUNTED:
                bar.update(1)
            write_outputs(tune, study)
            if outcome["status"] == "budget":
                stopped_by = "budget"
                break
    except (KeyboardInterrupt, SystemExit):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _stop(
                tune, study, t.number, "interrupted", "stopped by Ctrl-C or SIGTERM"
            )  # runs again next time
        write_outputs(tune, study)
        raise
    except Exception as exc:  # a bug, not the trial's values: recorded, not queued again
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _set_attr(tune, study, t.number, "status", "failed")
            _set_attr(tune, study, t.number, "error", f"the search failed: {type(exc).__name__}: {exc}")
            study.tell(t.number, state=TrialState.FAIL)
        write_outputs(tune, study)
        raise
    finally:
        bar.close()
        restore()
    best = best_row(tune, trial_rows(study))
    confirmed = None
    if tune.confirm_seeds and best is not None:  # after the search, outside its budget
        confirmed = confirm(tune, study, best, progress)
        write_outputs(tune, study)
    return {
        "ran": ran,
        "counted": counted(study),
        "stopped_by": stopped_by,
        "best_trial": best["trial"] if best else None,
        "best_score": best["score"] if best else None,
        "output_dir": str(tune.output_dir),
        "confirm": confirmed,
    }


def _time_for_a_trial(study, deadline: float) -> bool:
    """Whether another trial can start before the deadline: some time is left, and no less than the median
    time of the trials that ended so far (a trial that cannot finish would only be stopped and queued)."""
    left = deadline - time.time()
    times = [
        t.user_attrs["time_s"] for t in study.get_trials(deepcopy=False) if status_of(t) in ("ok", "pruned")
    ]
    needed = statistics.median(times) if times else 0.0
    if left <= 0 or left < needed:
        if left > 0:
            logger.info(
                "not starting another trial: %.1f min of the budget left, trials take %.1f min (median)",
                left / 60,
                needed / 60,
            )
        return False
    return True


def _trial_dir(tune: Tune, number: int) -> Path:
    return tune.output_dir / TRIALS_DIR / f"trial-{number:03d}"


def run_trial(tune: Tune, study, trial, values: dict[str, Any], deadline: float | None) -> dict[str, Any]:
    """One trial: a process per seed of `tune.seeds`, in turn; tells the study how it ended (the mean score
    over the seeds). Returns the trial's outcome."""
    from optuna.trial import TrialState

    run_dir = _trial_dir(tune, trial.number)
    trial.set_user_attr("values", values)
    trial.set_user_attr("output_dir", str(run_dir))
    try:
        recipe = tune.trial_recipe(values, run_overrides(tune.base, run_dir))
    except FinetuneError as exc:  # a combination the recipe refuses (checked before any weights load)
        return _fail(study, trial, str(exc), 0.0)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    wall = 0.0
    peaks: list[float] = []
    scores: dict[str, float] = {}
    runtime = 0.0
    for index, seed in enumerate(tune.seeds):
        seed_dir = run_dir if seed is None else run_dir / f"seed{seed}"
        which = "" if seed is None else f"seed {seed}: "
        timeout = None if deadline is None else max(deadline - time.time(), 1.0)
        reports = trial.number if index == 0 else None  # only the first seed's run reports to the pruner
        code, seconds, peak, log_file = _train_process(tune, values, seed_dir, seed, timeout, reports)
        wall = round(wall + seconds, 2)
        trial.set_user_attr("time_s", wall)
        if peak is not None:
            peaks.append(peak)
            trial.set_user_attr("peak_memory_mb", max(peaks))
        _drop_weights(seed_dir, tune.keep_models)
        if code is None:
            status = _stop(
                tune,
                study,
                trial.number,
                "budget",
                f"{which}stopped at the end of --budget-minutes={tune.budget_minutes:g}",
            )
            return {
                "status": status,
                "error": f"--budget-minutes={tune.budget_minutes:g} ran out",
                "time_s": wall,
            }
        if code == EXIT_PRUNED:  # only the first seed reports, so only it is pruned
            trial.set_user_attr("status", "pruned")
            study.tell(trial, state=TrialState.PRUNED)
            reported = study.get_trials(deepcopy=False)[trial.number].intermediate_values
            step = max(reported) if reported else None
            return {"status": "pruned", "score": reported.get(step), "step": step, "time_s": wall}
        results_file = seed_dir / "all_results.json"
        if code in (130, 143, -2, -15):  # SIGINT / SIGTERM from outside the search (not the budget: ours)
            status = _stop(
                tune,
                study,
                trial.number,
                "interrupted",
                f"{which}the trial process was stopped (exit {code})",
            )
            return {"status": status, "error": f"stopped (exit {code})", "time_s": wall}
        if code != 0 or not results_file.is_file():
            error = "killed by SIGKILL (out of memory?)" if code == -9 else _last_error(log_file, code)
            return _fail(study, trial, which + error, wall)
        results = json.loads(results_file.read_text())
        key = metric_key(recipe, tune.metric or default_metric(recipe, results))
        score = results.get(key)
        if score is None or not math.isfinite(score):
            return _fail(study, trial, f"{which}{key} is {score} in {results_file}", wall)
        scores[str(seed)] = score
        runtime += results.get("train_runtime") or 0.0
        if seed is not None:
            trial.set_user_attr("seed_scores", scores)
        trial.set_user_attr("trainable_params", results.get("trainable_params"))
    score = statistics.fmean(scores.values())
    trial.set_user_attr("status", "ok")
    trial.set_user_attr("metric", key.removeprefix("eval_"))
    trial.set_user_attr("train_runtime", round(runtime, 4))
    study.tell(trial, score)
    return {
        "status": "ok",
        "score": score,
        "time_s": wall,
        "seed_scores": scores if tune.trial_seeds else None,
    }


def _train_process(
    tune: Tune,
    values: dict[str, Any],
    run_dir: Path,
    seed: int | None,
    timeout: float | None,
    trial_number: int | None = None,
) -> tuple[int | None, float, float | None, Path]:
    """Train the recipe with ``values`` once, into ``run_dir`` (with ``seed``, else the recipe's), in its own
    process; given ``trial_number``, the process reports its evaluations to that trial and the pruner may
    stop it. Returns (exit code, None when ``timeout`` stopped it; wall seconds; peak RSS in MB; log file)."""
    overrides = [*tune.overrides, *value_overrides(values), *run_overrides(tune.base, run_dir, seed=seed)]
    log_file = run_dir.with_name(run_dir.name + ".log")
    memory_file = run_dir.with_name(run_dir.name + ".memory.json")
    memory_file.unlink(missing_ok=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if trial_number is None:
        cmd = [sys.executable, "-c", _CHILD, str(memory_file), "train", tune.recipe_path, *overrides]
    else:
        cmd = [sys.executable, "-m", "hf_finetune.tune", "trial", str(memory_file), str(tune.storage.url)]
        cmd += [str(trial_number), tune.metric or "", tune.recipe_path, *overrides]
    started = time.time()
    with log_file.open("w", encoding="utf-8") as log:
        log.write("$ hf-finetune train " + " ".join([tune.recipe_path, *overrides]) + "\n")
        log.flush()
        code = _run_child(cmd, log, timeout)
    return code, time.time() - started, _peak_memory(memory_file), log_file


def _peak_memory(memory_file: Path) -> float | None:
    try:
        return round(json.loads(memory_file.read_text())["max_rss_mb"], 1)
    except (OSError, ValueError, KeyError):
        return None


def _fail(study, trial, error: str, wall: float) -> dict[str, Any]:
    """A verdict on the trial's values (an error, a refused combination): recorded, counted, not rerun."""
    from optuna.trial import TrialState

    trial.set_user_attr("status", "failed")
    trial.set_user_attr("error", error)
    study.tell(trial, state=TrialState.FAIL)
    return {"status": "failed", "error": error, "time_s": wall}


def _drop_weights(run_dir: Path, keep: bool) -> None:
    """Remove checkpoints (and, unless ``keep``, the weights) from a run dir and its per-seed run dirs."""
    for directory in (run_dir, *sorted(run_dir.glob("seed*/"))):
        for checkpoint in directory.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
        if keep:
            continue
        for pattern in ("*.safetensors", "*.bin", "*.pt"):
            for weights in directory.glob(pattern):
                weights.unlink()


# ------------------------------------------------------------------------------------------------
# A trial's own process
# ------------------------------------------------------------------------------------------------
def _report_callback(trial, recipe: Recipe, metric: str | None):
    """A TrainerCallback: each evaluation during training goes to the study at step = percent of the
    schedule done; when the pruner says so, training stops by raising optuna.TrialPruned."""
    import optuna
    from transformers import TrainerCallback

    class ReportToStudy(TrainerCallback):
        finished = False
        last_step = -1

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self.finished or not metrics:
                return
            key = metric_key(recipe, metric or default_metric(recipe, metrics))
            if key not in metrics:  # another eval split (MNLI mismatched): the first split decides
                return
            step = round(100 * state.global_step / max(state.max_steps, 1))
            if step <= self.last_step:  # two evaluations in one percent: the first one stands
                return
            self.last_step = step
            trial.report(float(metrics[key]), step)
            if state.global_step < state.max_steps and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {step}% of its schedule ({key} {metrics[key]:.4f})")

        def on_train_end(self, args, state, control, **kwargs):
            self.finished = True  # the final evaluation after training is the score, not a report

    return ReportToStudy()


def trial_main(argv: list[str]) -> int:
    """`python -m hf_finetune.tune trial MEMORY_FILE STORAGE_URL NUMBER METRIC RECIPE [overrides]`."""
    import resource

    from .bench import die_with_parent

    die_with_parent()
    memory_file, url, number, metric, recipe_path, *overrides = argv
    code = 1
    try:
        code = _train_trial(url, int(number), metric or None, recipe_path, overrides)
    finally:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        Path(memory_file).write_text(
            json.dumps({"max_rss_mb": rss / (2**20 if sys.platform == "darwin" else 1024)})
        )
    return code


def _train_trial(url: str, number: int, metric: str | None, recipe_path: str, overrides: list[str]) -> int:
    import optuna

    from .logs import setup_logging
    from .pipeline import train

    setup_logging(False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    summary = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    study = optuna.load_study(
        study_name=STUDY_NAME, storage=storage, pruner=_pruner(summary.user_attrs.get("pruner"))
    )
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(STUDY_NAME), number
    )
    trial = optuna.trial.Trial(study, trial_id)
    try:
        recipe = load_recipe(recipe_path, overrides)
        train(recipe, callbacks=[_report_callback(trial, recipe, metric)])
    except optuna.TrialPruned as exc:
        print(f"hf-finetune: trial {number} {exc}", file=sys.stderr)
        return EXIT_PRUNED
    except FinetuneError as exc:
        print(f"hf-finetune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


# ------------------------------------------------------------------------------------------------
# Confirmation: the recipe as given and the best recipe, retrained per seed
# ------------------------------------------------------------------------------------------------
def confirm(tune: Tune, study, best: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Train the recipe as given and the best recipe (trial row ``best``) once per --confirm-seeds seed, each
    in its own process; runs already in confirm.jsonl for the same best trial are kept. Returns the summary."""
    path = tune.output_dir / CONFIRM
    records = _read_jsonl(path)
    done = {(r["recipe"], r["seed"], r.get("best_trial")) for r in records if r.get("status") == "ok"}
    arms = {"recipe": {}, "best": best["params"]}
    if not changed_values(tune, best):  # the recipe as given won: one set of runs answers for both
        del arms["best"]
    todo = [
        (arm, seed)
        for seed in tune.confirm_seeds
        for arm in arms
        if (arm, seed, best["trial"] if arm == "best" else None) not in done
    ]
    total = len(tune.confirm_seeds) * len(arms)
    bar = _progress(total, total - len(todo), progress, "confirm runs")
    restore = _sigterm_as_exit()
    try:
        for arm, seed in todo:
            run_dir = tune.output_dir / CONFIRM_DIR / arm / f"seed{seed}"
            record = _confirm_run(tune, arms[arm], run_dir, seed)
            record.update(
                {"recipe": arm, "seed": seed, "best_trial": best["trial"] if arm == "best" else None}
            )
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            bar.write(
                f"confirm {arm} seed {seed}: "
                + (f"{record['score']:.4f}" if record["status"] == "ok" else f"failed: {record.get('error')}")
            )
            bar.update(1)
    finally:
        bar.close()
        restore()
    return confirmation(tune, best)


def _confirm_run(tune: Tune, values: dict[str, Any], run_dir: Path, seed: int) -> dict[str, Any]:
    recipe = tune.trial_recipe(values, run_overrides(tune.base, run_dir, seed=seed))
    shutil.rmtree(run_dir, ignore_errors=True)
    code, seconds, _, log_file = _train_process(tune, values, run_dir, seed, None)
    wall = round(seconds, 2)
    _drop_weights(run_dir, tune.keep_models)
    results_file = run_dir / "all_results.json"
    if code != 0 or not results_file.is_file():
        return {"status": "failed", "error": _last_error(log_file, code), "time_s": wall}
    results = json.loads(results_file.read_text())
    key = metric_key(recipe, tune.metric or default_metric(recipe, results))
    score = results.get(key)
    if score is None or not math.isfinite(score):
        return {"status": "failed", "error": f"{key} is {score} in {results_file}", "time_s": wall}
    return {"status": "ok", "metric": key.removeprefix("eval_"), "score": score, "time_s": wall}


def confirmation(tune: Tune, best: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per arm (the recipe as given, the best recipe): the scores per seed, mean and sample std."""
    if not tune.confirm_seeds or best is None:
        return None
    same = not changed_values(tune, best)
    best = best["trial"]
    records = [r for r in _read_jsonl(tune.output_dir / CONFIRM) if r.get("status") == "ok"]
    out: dict[str, Any] = {"best_trial": best, "seeds": tune.confirm_seeds}
    for arm in ("recipe", "best"):
        scores = {
            r["seed"]: r["score"]
            for r in records
            if r["recipe"] == arm
            and r["seed"] in tune.confirm_seeds
            and (arm == "recipe" or r["best_trial"] == best)
        }
        values = [scores[s] for s in tune.confirm_seeds if s in scores]
        out[arm] = {
            "scores": scores,
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
        }
    if same:
        out["best"] = out["recipe"]
        out["same_as_recipe"] = True
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
    return rows


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------
def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial that ended (numbers in order): what trials.jsonl holds."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        status = status_of(t)
        intermediate = {str(k): v for k, v in sorted(t.intermediate_values.items())}
        row = {
            "trial": t.number,
            "status": status,
            "score": t.value if status == "ok" else None,
            "metric": t.user_attrs.get("metric"),
            "params": t.user_attrs.get("values", {}),
            "time_s": t.user_attrs.get("time_s"),
            "train_runtime": t.user_attrs.get("train_runtime"),
            "peak_memory_mb": t.user_attrs.get("peak_memory_mb"),
            "trainable_params": t.user_attrs.get("trainable_params"),
            "intermediate": intermediate,
            "output_dir": t.user_attrs.get("output_dir"),
        }
        if status == "pruned" and t.intermediate_values:
            step = max(t.intermediate_values)
            row["pruned_at_percent"] = step
            row["last_score"] = t.intermediate_values[step]
        for key in ("seed_scores", "error", "start", "retry_of", "attempt"):
            if key in t.user_attrs:
                row[key] = t.user_attrs[key]
        rows.append(row)
    return rows


def write_outputs(tune: Tune, study) -> None:
    """trials.jsonl, leaderboard.md, best_recipe.yaml and importance.png, each replaced whole."""
    rows = trial_rows(study)
    _write(tune.output_dir / TRIALS, "".join(json.dumps(r) + "\n" for r in rows))
    best = best_row(tune, rows)
    if best is not None:
        _write_best_recipe(tune, best, rows)
    importances = param_importances(study)
    _write(
        tune.output_dir / LEADERBOARD, format_leaderboard(tune, rows, importances, confirmation(tune, best))
    )
    try:
        plot_importance(tune, rows, importances, tune.output_dir / PLOT)
    except Exception as exc:  # a plot must not stop a search
        logger.warning("could not draw %s: %s", tune.output_dir / PLOT, exc)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def best_row(tune: Tune, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best finished trial (ties: the earliest), the one rule for best_recipe, leaderboard and confirm."""
    return next((r for r in sorted(rows, key=lambda r: _rank_key(tune, r)) if r["status"] == "ok"), None)


def baseline_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished trial of the recipe as given (`start_with: [recipe]`, or its rerun)."""
    return next((r for r in rows if r.get("start") == "recipe" and r["status"] == "ok"), None)


def _rank_key(tune: Tune, row: dict[str, Any]) -> tuple:
    order = {"ok": 0, "pruned": 1}.get(row["status"], 2)
    score = row["score"] if row["status"] == "ok" else row.get("last_score")
    if score is None:
        return (order, 0.0, row["trial"])
    return (order, -score if tune.direction == "maximize" else score, row["trial"])


def _write_best_recipe(tune: Tune, best: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path = tune.output_dir / BEST_RECIPE
    kept = result_overrides(tune.base)  # as in the trial, so that the recipe retrains to its score
    seeded = [f"training.seed={tune.trial_seeds[0]}"] if tune.trial_seeds else []
    recipe = tune.trial_recipe(
        best["params"], [*kept, *seeded, f"training.output_dir={json.dumps(str(tune.output_dir / 'best'))}"]
    )
    changed = changed_values(tune, best)
    baseline = baseline_row(rows)
    metric = best.get("metric") or "score"
    lines = [
        f"# The best recipe of `hf-finetune tune {_rel(tune.recipe_path)}` (space {_rel(tune.space.path)}):",
        f"# trial {best['trial']}, {metric} {best['score']:.4f} on the validation data"
        + (
            " (the mean over seeds "
            + ", ".join(f"{s}: {v:.4f}" for s, v in best.get("seed_scores", {}).items())
            + f"; this file trains seed {tune.trial_seeds[0]})"
            if tune.trial_seeds
            else ""
        )
        + (
            f"; the recipe as given (trial {baseline['trial']}): {baseline['score']:.4f}."
            if baseline
            else "."
        ),
        "# Changed from that recipe: "
        + (", ".join(f"{k}={_show(v)}" for k, v in changed.items()) if changed else "nothing")
        + (f" (and the overrides {' '.join(tune.overrides)})" if tune.overrides else "")
        + (f"; as in every trial: {' '.join(kept)}" if kept else ""),
        f"# Launch:  hf-finetune train {path}",
    ]
    tmp = path.with_name(path.name + ".partial")
    recipe.save(tmp, header="\n".join(lines) + "\n")
    os.replace(tmp, path)


def changed_values(tune: Tune, row: dict[str, Any]) -> dict[str, Any]:
    """The trial's values that differ from the recipe's own."""
    return {k: v for k, v in row["params"].items() if not _equal(v, tune.base_value(k))}


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _rel(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def param_importances(study) -> dict[str, float] | None:
    """PED-ANOVA importance of each parameter over the finished trials, or None with too few of them."""
    import optuna
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 3:
        return None
    try:
        from optuna.importance import PedAnovaImportanceEvaluator

        return optuna.importance.get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    except Exception as exc:  # too few or too uniform trials for the estimator: no table, not a failure
        logger.debug("parameter importance not computed: %s", exc)
        return None


def _fields_by_importance(
    tune: Tune, rows: list[dict[str, Any]], importances: dict[str, float] | None
) -> list[str]:
    """The space's fields, most important first (an alternative's importance goes to its field)."""
    score: dict[str, float] = {}
    for name, value in (importances or {}).items():
        field_name = name.split("|")[0]
        score[field_name] = score.get(field_name, 0.0) + value
    varied = [f for f in tune.space.fields if len({json.dumps(r["params"].get(f)) for r in rows}) > 1]
    return sorted(varied, key=lambda f: -score.get(f, -1.0))


def format_leaderboard(
    tune: Tune, rows: list[dict[str, Any]], importances: dict[str, float] | None, confirmed: dict | None
) -> str:
    metric = next((r["metric"] for r in rows if r.get("metric")), tune.metric or "score")
    fields = tune.space.fields
    by_status = {
        s: sum(r["status"] == s for r in rows) for s in ("ok", "pruned", "failed", "interrupted", "budget")
    }
    minutes = sum(r["time_s"] or 0 for r in rows) / 60
    ranked = sorted(rows, key=lambda r: _rank_key(tune, r))
    best = best_row(tune, rows)
    baseline = baseline_row(rows)
    lines = [
        f"# Tune: {Path(tune.recipe_path).stem}",
        "",
        f"Recipe `{_rel(tune.recipe_path)}`"
        + (f" with {' '.join(f'`{o}`' for o in tune.overrides)}" if tune.overrides else "")
        + f"; space `{_rel(tune.space.path)}`; {metric} on the validation data ({tune.direction}); "
        f"TPE sampler (seed {tune.seed}), "
        + ("median pruning" if tune.space.pruner is not None else "no pruning")
        + f". {len(rows)} trials: {by_status['ok']} finished, {by_status['pruned']} pruned, "
        f"{by_status['failed']} failed"
        + (
            f", {by_status['interrupted'] + by_status['budget']} stopped and run again"
            if by_status["interrupted"] + by_status["budget"]
            else ""
        )
        + f"; {minutes:.1f} min of trials."
        + (
            f" Each trial trains once per seed ({', '.join(map(str, tune.trial_seeds))}); its {metric} is the "
            "mean, and the first seed's run is the one the pruner watches."
            if tune.trial_seeds
            else ""
        ),
        "",
    ]
    if best is not None:
        lines.append(
            f"Best: trial {best['trial']}, {metric} **{best['score']:.4f}**"
            + (
                f"; the recipe as given (trial {baseline['trial']}): {baseline['score']:.4f}"
                if baseline
                else ""
            )
            + f". `hf-finetune train {_rel(tune.output_dir / BEST_RECIPE)}` trains it."
        )
        lines.append("")
    per_seed = ["per seed"] if tune.trial_seeds else []
    header = ["rank", "trial", metric, *per_seed, "status", "min", *fields]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, r in enumerate(ranked, 1):
        if r["status"] == "ok":
            score = f"{r['score']:.4f}"
        elif r["status"] == "pruned" and r.get("last_score") is not None:
            score = f"{r['last_score']:.4f} at {r['pruned_at_percent']}%"
        else:
            score = "-"
        status = r["status"] + (" (recipe)" if r.get("start") == "recipe" else "")
        cells = [
            str(rank) if r["status"] in ("ok", "pruned") else "-",
            str(r["trial"]),
            score,
            *([" / ".join(f"{v:.4f}" for v in r.get("seed_scores", {}).values())] if per_seed else []),
            status,
            f"{(r['time_s'] or 0) / 60:.1f}",
            *[_show(r["params"][f]) if f in r["params"] else "" for f in fields],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if r["status"] not in ("ok", "pruned")]
    if errors:
        lines += ["", "Not finished:", ""]
        rerun = {r["retry_of"]: r["trial"] for r in rows if "retry_of" in r}
        for r in errors:
            line = f"- trial {r['trial']} ({r['status']}): {r.get('error') or 'no reason recorded'}"
            if r["trial"] in rerun:
                line += f"; run again as trial {rerun[r['trial']]}"
            lines.append(line)
    if importances:
        lines += [
            "",
            "Parameter importance (PED-ANOVA over the finished trials): "
            + ", ".join(f"{name} {value:.2f}" for name, value in importances.items())
            + ".",
        ]
    if confirmed:
        seeds = ", ".join(map(str, confirmed["seeds"]))
        lines += [
            "",
            f"## Confirmation: retrained with seeds {seeds}",
            "",
            f"| recipe | {metric} mean ± std | " + " | ".join(f"seed {s}" for s in confirmed["seeds"]) + " |",
            "|---|---|" + "---|" * len(confirmed["seeds"]),
        ]
        arms = [("recipe", "the recipe as given"), ("best", f"best (trial {confirmed['best_trial']})")]
        if confirmed.get("same_as_recipe"):
            arms = [("recipe", f"the recipe as given = best (trial {confirmed['best_trial']})")]
        for arm, label in arms:
            data = confirmed[arm]
            mean = "-" if data["mean"] is None else f"{data['mean']:.4f}"
            if data["std"] is not None:
                mean += f" ± {data['std']:.4f}"
            per_seed = [
                f"{data['scores'][s]:.4f}" if s in data["scores"] else "-" for s in confirmed["seeds"]
            ]
            lines.append(f"| {label} | {mean} | " + " | ".join(per_seed) + " |")
    return "\n".join(lines) + "\n"


def plot_importance(
    tune: Tune, rows: list[dict[str, Any]], importances: dict[str, float] | None, path: Path
) -> None:
    """Left: parameter importance; right: the score over the two most important parameters (finished
    trials coloured by score, pruned ones as crosses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next((r["metric"] for r in rows if r.get("metric")), tune.metric or "score")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    if importances:
        names = list(importances)[::-1]
        left.barh(names, [importances[n] for n in names], color="tab:blue")
        left.set_xlabel("importance (PED-ANOVA)")
        left.tick_params(axis="y", labelsize=7)
    else:
        left.text(0.5, 0.5, "too few finished trials\nfor importances", ha="center", va="center")
        left.set_axis_off()
    left.set_title("parameter importance")
    top = _fields_by_importance(tune, rows, importances)[:2]
    finished = [r for r in rows if r["status"] == "ok"]
    pruned = [r for r in rows if r["status"] == "pruned"]
    if top and finished:
        axes_fields = top if len(top) == 2 else [top[0], None]

        def coords(r):
            return [_axis_value(tune, f, r["params"].get(f)) if f else r["score"] for f in axes_fields]

        points = [coords(r) for r in finished]
        scatter = right.scatter(
            [p[0] for p in points],
            [p[1] for p in points],
            c=[r["score"] for r in finished],
            cmap="viridis",
            s=60,
            edgecolors="black",
        )
        fig.colorbar(scatter, ax=right, label=metric)
        if pruned and axes_fields[1] is not None:
            pts = [coords(r) for r in pruned]
            right.scatter([p[0] for p in pts], [p[1] for p in pts], marker="x", color="gray", label="pruned")
            right.legend(fontsize=8, loc="best")
        for r, p in zip(finished, points):
            right.annotate(str(r["trial"]), p, fontsize=7, xytext=(3, 3), textcoords="offset points")
        for axis, name in zip(("x", "y"), axes_fields):
            _label_axis(tune, right, axis, name, metric, rows)
    else:
        right.text(0.5, 0.5, "no finished trials yet", ha="center", va="center")
        right.set_axis_off()
    right.set_title(
        "score over the two most important parameters" if importances else "score over two of the parameters"
    )
    fig.suptitle(f"hf-finetune tune: {Path(tune.recipe_path).stem}")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _param_for(tune: Tune, name: str) -> Param:
    return next(p for p in tune.space.params if p.field == name)


def _axis_value(tune: Tune, name: str, value: Any) -> float:
    param = _param_for(tune, name)
    if param.kind == "categorical":
        return float(next((i for i, c in enumerate(param.choices) if _same(c, value)), -1))
    return float("nan") if value is None else float(value)


def _label_axis(tune: Tune, ax, axis: str, name: str | None, metric: str, rows: list[dict[str, Any]]) -> None:
    set_label = ax.set_xlabel if axis == "x" else ax.set_ylabel
    if name is None:
        set_label(metric)
        return
    set_label(name)
    param = _param_for(tune, name)
    if param.kind == "categorical":
        ticks = list(range(len(param.choices)))
        labels = [_show(c) for c in param.choices]
        if any(name not in r["params"] for r in rows):  # trials whose `when` left it out
            ticks, labels = [-1, *ticks], ["(unset)", *labels]
        (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, labels)
    else:
        if any(name not in r["params"] for r in rows):
            set_label(f"{name} (trials without it not shown)")
        if param.log:
            (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


# ------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------
def _progress(total: int | None, initial: int, enabled: bool, desc: str = "tune trials"):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="trial", disable=not enabled, dynamic_ncols=True
    )


def _postfix(tune: Tune, study, running: int) -> str:
    best = best_row(tune, trial_rows(study))
    if best is None:
        return f"running trial {running}"
    return f"best {best['score']:.4f} (trial {best['trial']}) | running trial {running}"


def _trial_line(number: int, outcome: dict[str, Any], values: dict[str, Any]) -> str:
    shown = ", ".join(f"{k.split('.')[-1]}={_show(v)}" for k, v in values.items())
    minutes = f"{outcome['time_s'] / 60:.1f} min"
    if outcome["status"] == "ok":
        seeds = outcome.get("seed_scores")
        each = f" (seeds {', '.join(f'{s} {v:.4f}' for s, v in seeds.items())})" if seeds else ""
        return f"trial {number}: {outcome['score']:.4f}{each} in {minutes} ({shown})"
    if outcome["status"] == "pruned":
        last = outcome.get("score")
        at = f" at {outcome['step']}% ({last:.4f})" if last is not None else ""
        return f"trial {number}: pruned{at} after {minutes} ({shown})"
    return f"trial {number}: {outcome['status']}: {outcome.get('error')} ({shown})"


if __name__ == "__main__":
    if sys.argv[1:2] == ["trial"]:
        sys.exit(trial_main(sys.argv[2:]))
    sys.exit(
        "usage: python -m hf_finetune.tune trial MEMORY_FILE STORAGE_URL NUMBER METRIC RECIPE [overrides]"
    )
