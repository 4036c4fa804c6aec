"""A bench's report: results.md (mean ± std over seeds per task x strategy, the machine and precision the
cells ran on, the failed cells) and results.png (score against training time), from results.jsonl."""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path
from typing import Any

from ..outputs import atomic_write_bytes, atomic_write_text, read_jsonl
from .spec import PLOT, REPORT, RESULTS, Bench


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of results.jsonl; a torn last line (a killed bench) is skipped."""
    return read_jsonl(path)


def latest_records(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """The last record of each cell (task, strategy, seed)."""
    latest = {}
    for record in records:
        latest[(record["task"], record["strategy"], record["seed"])] = record
    return latest


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
        stopping = [r for r in ok if r.get("early_stopping")]
        row["early_stopping"] = len(stopping)  # seeds whose recipe stops early (the others: 0)
        row["stopped_early"] = sum(bool(r.get("stopped_early")) for r in stopping)
        row["trainable_params"] = ok[0].get("trainable_params") if ok else None
        row["total_params"] = ok[0].get("total_params") if ok else None
        rows.append(row)
    return rows


def machines(records: list[dict[str, Any]]) -> list[str]:
    """'MACHINE (device, dtype)' of the finished cells, each once: what the table's times were measured on
    (the precision is the one the cells trained in, as their processes reported it)."""
    seen = []
    for r in latest_records(records).values():
        if r.get("status") == "ok" and r.get("machine"):
            seen.append(f"{r['machine']} ({r.get('device') or '?'}, {r.get('dtype') or '?'})")
    return list(dict.fromkeys(seen))


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
        steps = _fmt(row["train_steps"], ".0f")
        if row["early_stopping"]:
            steps += f" (stopped early: {row['stopped_early']}/{row['early_stopping']})"
        lines.append(
            f"| {row['task']} | {row['strategy']} | {row['metric']} | {score} | {seeds_cell} | "
            f"{steps} | "
            f"{_fmt(row['train_runtime'], '.1f')} | {_fmt(row['train_samples_per_second'], '.1f')} | "
            f"{_fmt(row['train_tokens_per_second'], ',.0f')} | {_fmt(row['peak_memory_mb'], ',.0f')} | "
            + (f"{_fmt(row['cuda_peak_memory_mb'], ',.0f')} | " if cuda else "")
            + f"{trainable} | {_fmt(None if row['mfu'] is None else row['mfu'] * 100, '.1f')}{'%' if row['mfu'] is not None else ''} |"
        )
    if any(row["early_stopping"] for row in rows):
        lines[2] += (
            " Cells with `training.early_stopping` keep their recipe's evaluations: their steps are the steps "
            "trained (`stopped early: k/n`: k of the n seeds stopped before their schedule's end; each record "
            "in results.jsonl has `stopped_at_step` and `best_step`), their score the best evaluation's model, "
            "and their train time includes the evaluations during training."
        )
    if hidden:
        lines[2] += (
            f" Not shown: {hidden} record(s) in {RESULTS} from cells or settings this bench no longer has."
        )
    ran_on = machines(records)
    if ran_on:
        lines[2] += " Ran on " + "; ".join(ran_on) + "."
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
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())


def write_report(bench: Bench, fingerprints: dict[tuple, str]) -> None:
    """results.md and results.png from the records of this bench's cells at their current settings
    (``fingerprints``: cell key -> fingerprint); older records stay in results.jsonl, out of the report."""
    latest = latest_records(read_results(bench.output_dir / RESULTS))
    records = [r for key, r in latest.items() if fingerprints.get(key) == r.get("fingerprint")]
    hidden = len(latest) - len(records)
    atomic_write_text(bench.output_dir / REPORT, format_markdown(bench, records, hidden))
    plot_results(
        records, bench.output_dir / PLOT, f"{bench.path.stem}: score vs training time", list(bench.tasks)
    )
