"""A search's outputs, each replaced whole after every trial: trials.jsonl (a row per trial that ended),
leaderboard.md (ranked trials, parameter importance, the confirmation table), best_recipe.yaml (the best
trial's complete recipe, ready to train) and importance.png.
"""

from __future__ import annotations

import io
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from ..errors import FinetuneError
from ..outputs import atomic_write_bytes, atomic_write_text, read_jsonl
from .setup import BEST_RECIPE, CONFIRM, LEADERBOARD, PLOT, TRIALS, Tune, result_overrides
from .space import Param, same, show
from .study import SURPLUS, status_of

logger = logging.getLogger("hf_finetune")


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial that ended (numbers in order): what trials.jsonl holds."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        status = status_of(t)
        if status == SURPLUS:  # never ran: another worker's trial made up the count
            continue
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
        if status == "ok" and t.user_attrs.get("stopped_early"):  # by its recipe's early stopping: finished
            row["stopped_early"] = True
            row["stopped_at_step"] = t.user_attrs.get("stopped_at_step")
            row["stopped_at_percent"] = t.user_attrs.get("stopped_at_percent")
        for key in (
            "seed_scores",
            "fold_scores",
            "seeds_stopped_early",
            "error",
            "start",
            "retry_of",
            "attempt",
        ):
            if key in t.user_attrs:
                row[key] = t.user_attrs[key]
        rows.append(row)
    return rows


def report_from_study(url: str | None, study_name: str | None, output_dir: str | Path | None) -> Tune:
    """`hf-finetune tune report`: the outputs of the search in study ``study_name`` at ``url`` (default: the
    SQLite study in ``output_dir``), written to ``output_dir`` (default: the tune dir of the process that
    started it). The search is rebuilt from what its starter recorded in the study (recipe, overrides, space,
    options), checked as `tune` checks it; the study is read, not changed."""
    import optuna

    from .setup import STUDY_DB, STUDY_NAME, prepare_tune, sqlite_url
    from .storage import open_storage, shown_url

    if url is None:
        if output_dir is None:
            raise FinetuneError(
                "tune report: give --storage URL (or --output-dir of a search on this machine)."
            )
        url = sqlite_url(Path(output_dir))
        if not (Path(output_dir) / STUDY_DB).is_file():
            raise FinetuneError(
                f"--output-dir {output_dir}: holds no search ({STUDY_DB}); give --storage URL."
            )
    name = study_name or STUDY_NAME
    storage = open_storage(url)
    if name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise FinetuneError(
            f"tune report: {shown_url(url)} holds no study named {name!r}; give --study-name."
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    search = study.user_attrs.get("search")
    if not search:
        raise FinetuneError(
            f"tune report: study {name!r} at {shown_url(url)} does not record its search (started by an "
            "hf-finetune before `tune report`); write its outputs by running the search's command again."
        )
    if not Path(search["recipe"]).is_file():
        raise FinetuneError(
            f"tune report: the search's recipe {search['recipe']} is not on this machine; run the report where "
            "it is (the same path), or on the machine that started the search."
        )
    tune = prepare_tune(
        search["recipe"],
        search["overrides"],
        search["space"],
        output_dir=output_dir or search["output_dir"],
        trials=search["trials"],
        budget_minutes=search["budget_minutes"],
        seed=search["seed"],
        metric=search["metric"],
        direction=search["direction"],
        confirm_seeds=search["confirm_seeds"],
        keep_models=search["keep_models"],
        trial_seeds=search["trial_seeds"],
        folds=search.get("folds"),
        storage_url=None if url.startswith("sqlite") and output_dir else url,
        study_name=name,
    )
    if study.user_attrs.get("fingerprint") != tune.fingerprint:
        raise FinetuneError(
            f"tune report: the recipe or space files of study {name!r} have changed since its search started; "
            "restore them to write its outputs."
        )
    tune.storage = storage
    tune.output_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(tune, study)
    return tune


def write_outputs(tune: Tune, study) -> None:
    """trials.jsonl, leaderboard.md, best_recipe.yaml and importance.png, each replaced whole."""
    rows = trial_rows(study)
    atomic_write_text(tune.output_dir / TRIALS, "".join(json.dumps(r) + "\n" for r in rows))
    best = best_row(tune, rows)
    if best is not None:
        _write_best_recipe(tune, best, rows)
    importances = param_importances(study)
    atomic_write_text(
        tune.output_dir / LEADERBOARD, format_leaderboard(tune, rows, importances, confirmation(tune, best))
    )
    try:
        plot_importance(tune, rows, importances, tune.output_dir / PLOT)
    except Exception as exc:  # a plot must not stop a search
        logger.warning("could not draw %s: %s", tune.output_dir / PLOT, exc)


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
        + (", ".join(f"{k}={show(v)}" for k, v in changed.items()) if changed else "nothing")
        + (f" (and the overrides {' '.join(tune.overrides)})" if tune.overrides else "")
        + (f"; as in every trial: {' '.join(kept)}" if kept else ""),
        f"# Launch:  hf-finetune train {path}",
    ]
    atomic_write_text(path, "\n".join(lines) + "\n" + recipe.to_yaml())


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
    early = sum(bool(r.get("stopped_early")) for r in rows)
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
        + f". {len(rows)} trials: {by_status['ok']} finished"
        + (f" ({early} stopped early by the recipe's early stopping)" if early else "")
        + f", {by_status['pruned']} pruned, "
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
        )
        + (
            f" Each trial trains {tune.folds} times, once per fold of the training split (stratified for "
            f"classification), evaluated on the fold it did not train on; its {metric} is the mean over the "
            "folds, and the pruner watches the running mean. The evaluation split is not read by the search."
            if tune.folds
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
    per_seed = ["per seed"] if tune.trial_seeds else ["per fold"] if tune.folds else []
    each = "fold_scores" if tune.folds else "seed_scores"
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
        if r.get("stopped_early"):  # finished by its recipe's early stopping, unlike a pruned trial
            status += f" (stopped early at {r.get('stopped_at_percent')}%)"
        cells = [
            str(rank) if r["status"] in ("ok", "pruned") else "-",
            str(r["trial"]),
            score,
            *([" / ".join(f"{v:.4f}" for v in r.get(each, {}).values())] if per_seed else []),
            status,
            f"{(r['time_s'] or 0) / 60:.1f}",
            *[show(r["params"][f]) if f in r["params"] else "" for f in fields],
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
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())


def _param_for(tune: Tune, name: str) -> Param:
    return next(p for p in tune.space.params if p.field == name)


def _axis_value(tune: Tune, name: str, value: Any) -> float:
    param = _param_for(tune, name)
    if param.kind == "categorical":
        return float(next((i for i, c in enumerate(param.choices) if same(c, value)), -1))
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
        labels = [show(c) for c in param.choices]
        if any(name not in r["params"] for r in rows):  # trials whose `when` left it out
            ticks, labels = [-1, *ticks], ["(unset)", *labels]
        (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, labels)
    else:
        if any(name not in r["params"] for r in rows):
            set_label(f"{name} (trials without it not shown)")
        if param.log:
            (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def confirmation(tune: Tune, best: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per arm (the recipe as given, the best recipe): the scores per seed, mean and sample std."""
    if not tune.confirm_seeds or best is None:
        return None
    same = not changed_values(tune, best)
    best = best["trial"]
    records = [r for r in read_jsonl(tune.output_dir / CONFIRM) if r.get("status") == "ok"]
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
