"""A search space file, read and checked: recipe fields, their ranges or choices, conditions, the TPE
sampler's and the pruner's settings.

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

A parameter's keys, the sampler and the pruner are dataclasses read through the recipes' own coercion
(`hf_finetune.config.build_section`), so their errors name the field as a recipe's do. The fields are
checked against the recipe later (`hf_finetune.tune.setup.prepare_tune`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SECTIONS, build_section, field_help, parse_yaml
from ..errors import FinetuneError, RecipeError, close_matches

SPACE_KEYS = ("parameters", "start_with", "sampler", "pruner")


def _whole(section: str, name: str, value: int, floor: int) -> None:
    if value < floor:
        raise RecipeError(f"{section}.{name}", f"a whole number >= {floor}, got {value!r}.")


@dataclass
class SamplerSettings:
    """`sampler:` optuna's TPESampler, seeded by --seed."""

    n_startup_trials: int = field_help("random trials before TPE models the results", 4)
    n_ei_candidates: int = field_help("candidates TPE scores per draw", 24)
    multivariate: bool = field_help(
        "model the parameters jointly (grouped by which parameters are sampled together)", False
    )

    def __post_init__(self) -> None:
        _whole("sampler", "n_startup_trials", self.n_startup_trials, 0)
        _whole("sampler", "n_ei_candidates", self.n_ei_candidates, 1)


@dataclass
class PrunerSettings:
    """`pruner:` the median rule at the same percent of each trial's schedule (`none` turns it off)."""

    n_startup_trials: int = field_help("trials that finish before any is pruned", 3)
    n_warmup_steps: int = field_help("no pruning before this percent of a trial's schedule", 0)
    n_min_trials: int = field_help(
        "finished trials with a score at or before that point, needed to prune there", 1
    )

    def __post_init__(self) -> None:
        _whole("pruner", "n_startup_trials", self.n_startup_trials, 0)
        _whole("pruner", "n_warmup_steps", self.n_warmup_steps, 0)
        _whole("pruner", "n_min_trials", self.n_min_trials, 1)

    @classmethod
    def from_dict(cls, saved: dict[str, Any] | None) -> PrunerSettings | None:
        """The settings a study stored (None: no pruning)."""
        return None if saved is None else cls(**saved)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ParamSpec:
    """One parameter of `parameters:` (or one alternative of it), as written."""

    low: Any = field_help(
        "lower end of a range: a number, or `layers` (the model's number of transformer layers); a range "
        "whose ends are both integers samples integers",
        None,
    )
    high: Any = field_help("upper end of a range: a number, or `layers`", None)
    log: bool = field_help("sample the range on a log scale (needs low > 0 and no step)", False)
    step: Any = field_help("sample the range in steps of this size", None)
    choices: list[Any] | None = field_help("the values to choose from, instead of a range", None)
    when: dict[str, Any] | None = field_help(
        "sample this parameter only while other recipe fields have these values, e.g. {peft.method: lora}",
        None,
    )


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
            return any(same(value, c) for c in self.choices)
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
            return "one of " + ", ".join(show(c) for c in self.choices)
        return f"{self.kind} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")


def same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def show(value: Any) -> str:
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
    sampler: SamplerSettings
    pruner: PrunerSettings | None

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
                    f"{self.path}: {where}: {param.field}={show(value)} is outside the space "
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
            alt_field = f"parameters.{name}" + ("" if len(alternatives) == 1 else f"[{i}]")
            param = _read_param(path, alt_field, name, alt)
            if len(alternatives) > 1:
                if not param.when:
                    raise FinetuneError(
                        f"{path}: {alt_field}: alternatives each need a `when` (the first that holds is used)."
                    )
                param.name = name + "|" + ",".join(f"{k}={show(v[0])}" for k, v in param.when.items())
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
    pruner_raw = raw.get("pruner", {})
    off = pruner_raw is None or pruner_raw is False or pruner_raw == "none"
    try:
        sampler = build_section(SamplerSettings, raw.get("sampler"), "sampler")
        pruner = None if off else build_section(PrunerSettings, pruner_raw, "pruner")
    except RecipeError as exc:
        raise FinetuneError(f"{path}: {exc}") from None
    return Space(path, text, params, start_with, sampler, pruner)


def _read_param(path: Path, where: str, name: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise FinetuneError(
            f"{path}: {where}: give {{low: .., high: .., log: true}} or {{choices: [..]}}, got {spec!r}."
        )
    try:
        read = build_section(ParamSpec, spec, where)
    except RecipeError as exc:
        raise FinetuneError(f"{path}: {exc}") from None
    where = f"{path}: {where}"
    when = {str(k): (list(v) if isinstance(v, list) else [v]) for k, v in (read.when or {}).items()}
    for key in when:
        if "." not in key or key.split(".")[0] not in SECTIONS or key == name:
            raise FinetuneError(f"{where}.when: {key!r} is not another recipe field (section.field).")
    if "choices" in spec:
        choices = read.choices
        extra = [k for k in ("low", "high", "log", "step") if k in spec]
        if extra:
            raise FinetuneError(
                f"{where}: give either `choices` or `low`/`high`, not both ({', '.join(extra)})."
            )
        if not choices:
            raise FinetuneError(f"{where}.choices: a non-empty list of values.")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise FinetuneError(f"{where}.choices: values must be numbers, text, true/false or null.")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise FinetuneError(f"{where}.choices: lists a value twice.")
        return Param(name, name, "categorical", choices=choices, when=when)
    if "low" not in spec or "high" not in spec:
        raise FinetuneError(f"{where}: give `low` and `high` (a range) or `choices` (a list).")
    low, high, log, step = read.low, read.high, read.log, read.step
    for key, value in (("low", low), ("high", high)):
        if value != "layers" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise FinetuneError(
                f"{where}.{key}: a number, or `layers` (the model's number of transformer layers); got {value!r}."
            )
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
