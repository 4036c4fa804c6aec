"""Calibrated scores for single-label classification: temperature scaling, expected calibration error (ECE)
and the reliability diagram.

Temperature scaling divides every logit by one number T > 0 before the softmax: the argmax (so the predicted
label and the accuracy) is unchanged, only the confidence moves (T > 1 softens overconfident scores, T < 1
sharpens underconfident ones). T minimises the mean negative log-likelihood (NLL) of the true labels under
``softmax(logits / T)``; it is searched on ``log T`` by golden-section search within
[:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`], in float64. The NLL is a convex function of ``1 / T``, so
of ``log T`` it has one minimum and the search finds it, deterministically.

ECE (top-label, equal-width bins): each example's confidence is its largest probability and it is correct
when that label is the true one. The confidences are put into :data:`BINS` bins of equal width over [0, 1]
(bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 goes to the first bin), and

    ECE = sum over bins of (n_b / N) * |accuracy_b - mean confidence_b|

(empty bins count zero): the average gap between how sure the model is and how often it is right, weighted
by how many examples fall at each confidence. 0 is perfectly calibrated.

Everything here is a pure function of arrays, except :meth:`Calibration.write` (the output-dir files) and
:func:`read_temperature` (reads them back).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FinetuneError
from ..outputs import CALIBRATION_FILE, RELIABILITY_FILE, atomic_write_bytes, atomic_write_text

#: equal-width confidence bins of the ECE and the reliability diagram
BINS = 15
#: the range the temperature is searched in
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


# ------------------------------------------------------------------------------------------------
# The arithmetic
# ------------------------------------------------------------------------------------------------
def _as_arrays(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """Logits as float64 (examples x classes) and labels as int64, without ignored rows (label < 0)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"logits of shape {z.shape} do not match {y.shape[0]} labels")
    keep = y >= 0
    return z[keep], y[keep]


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z, y = _as_arrays(logits, labels)
    if not len(y):
        return float("nan")
    z = z / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits, labels, tolerance: float = 1e-7) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises :func:`nll` (golden-section search on
    log T to ``tolerance``); 1.0 for no examples."""
    z, y = _as_arrays(logits, labels)
    if not len(y):
        return 1.0
    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)

    def loss(log_t: float) -> float:
        return nll(z, y, math.exp(log_t))

    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tolerance:
        if fa <= fb:  # the minimum is in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    best = (lo + hi) / 2.0
    # the search never evaluates the ends: compare them, so a minimum at a bound is found exactly
    candidates = [(loss(math.log(t)), t) for t in (MIN_TEMPERATURE, math.exp(best), MAX_TEMPERATURE)]
    return float(min(candidates)[1])


def top_label(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) of each example: its largest probability, and whether that label is the true one."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    return p.max(axis=1), p.argmax(axis=1) == y


def reliability_bins(confidence, correct, bins: int = BINS) -> list[dict[str, float]]:
    """Per equal-width bin: its bounds, example count, mean confidence and accuracy (0 for empty bins)."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct, dtype=np.float64).reshape(-1)
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)  # (b/B, (b+1)/B] -> b
    out = []
    for b in range(bins):
        member = index == b
        count = int(member.sum())
        out.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": count,
                "confidence": float(conf[member].mean()) if count else 0.0,
                "accuracy": float(hit[member].mean()) if count else 0.0,
            }
        )
    return out


def expected_calibration_error(confidence, correct, bins: int = BINS) -> float:
    """ECE (see the module docstring) of examples with these confidences and correctness."""
    table = reliability_bins(confidence, correct, bins)
    total = sum(row["count"] for row in table)
    if not total:
        return float("nan")
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in table))


def ece(logits, labels, temperature: float = 1.0, bins: int = BINS) -> float:
    """The top-label ECE of ``softmax(logits / temperature)`` against ``labels``."""
    z, y = _as_arrays(logits, labels)
    return expected_calibration_error(*top_label(softmax(z, temperature), y), bins)


# ------------------------------------------------------------------------------------------------
# A fitted calibration: what is stored with the model
# ------------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """A temperature fitted on one split's logits, with the figures before and after it."""

    temperature: float
    split: str
    examples: int
    ece: float
    ece_calibrated: float
    nll: float
    nll_calibrated: float
    accuracy: float
    bins: int = BINS
    method: str = "temperature"
    #: reliability_bins before ("uncalibrated") and after ("calibrated") the temperature
    reliability: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """``<prefix>_temperature``, ``<prefix>_ece`` and ``<prefix>_ece_calibrated``."""
        return {
            f"{prefix}_temperature": round(self.temperature, 6),
            f"{prefix}_ece": round(self.ece, 6),
            f"{prefix}_ece_calibrated": round(self.ece_calibrated, 6),
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["note"] = (
            f"T minimises the NLL of softmax(logits / T) on the {self.split} split; ece_calibrated is measured "
            "on that same split (in-sample). predict divides the logits by T."
        )
        return out

    def plot(self) -> bytes:
        """The reliability diagram (PNG bytes): accuracy against confidence per bin, before and after."""
        return plot_reliability(
            self.reliability["uncalibrated"],
            self.reliability["calibrated"],
            self.temperature,
            self.ece,
            self.ece_calibrated,
            title=f"Reliability on the {self.split} split ({self.examples} examples, {self.bins} bins)",
        )

    def write(self, output_dir: str | Path) -> list[Path]:
        """calibration.json and reliability_diagram.png in ``output_dir``, each written atomically."""
        output_dir = Path(output_dir)
        written = [
            atomic_write_text(output_dir / CALIBRATION_FILE, json.dumps(self.to_dict(), indent=2) + "\n")
        ]
        written.append(atomic_write_bytes(output_dir / RELIABILITY_FILE, self.plot()))
        return written


def calibrate(logits, labels, split: str, bins: int = BINS) -> Calibration:
    """Fit a temperature on ``logits`` (examples x classes) and their true ``labels``, and measure NLL, ECE and
    the reliability bins before and after it."""
    z, y = _as_arrays(logits, labels)
    if not len(y):
        raise ValueError("no labelled examples to fit a temperature on")
    temperature = fit_temperature(z, y)
    before, after = softmax(z), softmax(z, temperature)
    conf_before, correct = top_label(before, y)
    conf_after, _ = top_label(after, y)
    return Calibration(
        temperature=temperature,
        split=split,
        examples=int(len(y)),
        ece=expected_calibration_error(conf_before, correct, bins),
        ece_calibrated=expected_calibration_error(conf_after, correct, bins),
        nll=nll(z, y),
        nll_calibrated=nll(z, y, temperature),
        accuracy=float(correct.mean()),
        bins=bins,
        reliability={
            "uncalibrated": reliability_bins(conf_before, correct, bins),
            "calibrated": reliability_bins(conf_after, correct, bins),
        },
    )


def held_out(logits, labels, temperature: float, prefix: str, bins: int = BINS) -> dict[str, float]:
    """``<prefix>_ece`` and ``<prefix>_ece_calibrated`` of other data (a test split) under a temperature
    fitted elsewhere: the honest figure of how well it carries over."""
    return {
        f"{prefix}_ece": round(ece(logits, labels, 1.0, bins), 6),
        f"{prefix}_ece_calibrated": round(ece(logits, labels, temperature, bins), 6),
    }


def read_temperature(output_dir: str | Path) -> float | None:
    """The temperature stored with the model in ``output_dir`` (calibration.json), or None when there is none
    (a run from before calibration, or one with `task.calibration: none`). A file that is there but unusable
    is an error that names it."""
    path = Path(output_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        data, problem = None, f"is not readable JSON ({type(exc).__name__})"
    else:
        problem = "has no positive, finite `temperature`"
    value = data.get("temperature") if isinstance(data, dict) else None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise FinetuneError(
            f"{path}: {problem}. Delete the file to use the model's raw scores (or pass `predict "
            "--uncalibrated`), or train again to fit a new one."
        )
    return float(value)


# ------------------------------------------------------------------------------------------------
# The reliability diagram
# ------------------------------------------------------------------------------------------------
def plot_reliability(
    before: list[dict[str, float]],
    after: list[dict[str, float]],
    temperature: float,
    ece_before: float,
    ece_after: float,
    title: str = "",
) -> bytes:
    """Two panels, before and after the temperature: per bin the accuracy (bars), the mean confidence (the
    gap to it shaded), the diagonal of perfect calibration, and below, the number of examples per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, 2, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    panels = (
        (before, f"uncalibrated (T = 1): ECE {ece_before:.4f}"),
        (after, f"temperature-scaled (T = {temperature:.3g}): ECE {ece_after:.4f}"),
    )
    for column, (table, heading) in enumerate(panels):
        top, bottom = axes[0, column], axes[1, column]
        width = table[0]["upper"] - table[0]["lower"]
        centres = [(row["lower"] + row["upper"]) / 2 for row in table]
        filled = [i for i, row in enumerate(table) if row["count"]]
        top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        top.bar(
            [centres[i] for i in filled],
            [table[i]["accuracy"] for i in filled],
            width=width,
            color="tab:blue",
            edgecolor="black",
            label="accuracy",
        )
        top.bar(
            [centres[i] for i in filled],
            [table[i]["confidence"] - table[i]["accuracy"] for i in filled],
            bottom=[table[i]["accuracy"] for i in filled],
            width=width,
            color="tab:red",
            alpha=0.3,
            edgecolor="tab:red",
            hatch="//",
            label="gap to mean confidence",
        )
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=heading)
        top.grid(alpha=0.3)
        top.legend(loc="upper left", fontsize=8)
        counts = [row["count"] for row in table]
        bottom.bar(centres, counts, width=width, color="tab:grey", edgecolor="black")
        for x, count in zip(centres, counts, strict=True):
            if count:
                bottom.text(x, count, str(count), ha="center", va="bottom", fontsize=7)
        bottom.set(xlim=(0, 1), ylim=(0, max(counts + [1]) * 1.3), xlabel="confidence", ylabel="examples")
        bottom.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
