"""Per-class scores of a classifier: precision, recall, F1 and support of each label, as metric keys
(``<label>_precision``, ``<label>_recall``, ``<label>_f1``, ``<label>_support``), a markdown report and,
for single-label classification, a confusion-matrix plot.

Label names become metric keys through :func:`label_keys`: lowercased, each run of characters other than
``a-z0-9`` replaced by ``_``; a name that would start with ``eval``/``test``/``train`` (the Trainer's key
prefixes) is prefixed ``label_``, an empty one becomes ``label_<id>``, and a repeated one gets ``_<id>``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..outputs import atomic_write_bytes, atomic_write_text
from . import functional as F

#: above this many labels the per-label keys are left out of the metrics (the report file keeps them all)
MAX_LABEL_METRICS = 50
#: the per-label scores, as the suffixes of their metric keys
SCORES = ("precision", "recall", "f1", "support")
_RESERVED = ("eval", "test", "train")
_UNSAFE = re.compile(r"[^a-z0-9]+")


def label_keys(names: list[str]) -> list[str]:
    """A safe, unique metric-key stem for each label name (see the module docstring)."""
    keys: list[str] = []
    for i, name in enumerate(names):
        key = _UNSAFE.sub("_", str(name).lower()).strip("_")
        if not key:
            key = f"label_{i}"
        elif key.split("_")[0] in _RESERVED:
            key = f"label_{key}"
        if key in keys:
            key = f"{key}_{i}"
        keys.append(key)
    return keys


@dataclass
class ClassReport:
    """Per-label precision, recall, F1 and support; ``confusion`` (rows true, columns predicted) for
    single-label classification, None for multi-label."""

    names: list[str]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    multi_label: bool = False
    confusion: np.ndarray | None = None
    #: single-label: accuracy; multi-label: micro-averaged (precision, recall, F1) over all label slots
    accuracy: float | None = None
    micro: tuple[float, float, float] | None = None

    @classmethod
    def from_ids(cls, predictions, references, names: list[str]) -> ClassReport:
        """From class ids (predictions: the argmax, references: the labels)."""
        confusion = F.confusion_matrix(predictions, references, len(names))
        tp = np.diag(confusion)
        precision, recall, f1 = F.per_class(tp, confusion.sum(axis=0), confusion.sum(axis=1))
        total = confusion.sum()
        accuracy = float(tp.sum() / total) if total else 0.0
        return cls(list(names), precision, recall, f1, confusion.sum(axis=1), False, confusion, accuracy)

    @classmethod
    def from_multi_hot(cls, predictions, references, names: list[str]) -> ClassReport:
        """From multi-hot 0/1 matrices (examples x labels)."""
        p, r = np.asarray(predictions).astype(bool), np.asarray(references).astype(bool)
        tp, pred, true = (p & r).sum(axis=0), p.sum(axis=0), r.sum(axis=0)
        precision, recall, f1 = F.per_class(tp, pred, true)
        micro = tuple(float(x[0]) for x in F.per_class([tp.sum()], [pred.sum()], [true.sum()]))
        return cls(list(names), precision, recall, f1, true, True, None, None, micro)

    def metrics(self) -> dict[str, float]:
        """``<label>_precision/_recall/_f1/_support`` for each label; {} above :data:`MAX_LABEL_METRICS`."""
        if len(self.names) > MAX_LABEL_METRICS:
            return {}
        out: dict[str, float] = {}
        for i, key in enumerate(label_keys(self.names)):
            out[f"{key}_precision"] = float(self.precision[i])
            out[f"{key}_recall"] = float(self.recall[i])
            out[f"{key}_f1"] = float(self.f1[i])
            out[f"{key}_support"] = int(self.support[i])
        return out

    def averages(self) -> dict[str, tuple[float, float, float]]:
        """Macro (unweighted mean over all labels) and weighted (by support) precision, recall and F1."""
        scores = np.stack([self.precision, self.recall, self.f1])
        macro = tuple(float(x) for x in scores.mean(axis=1)) if len(self.names) else (0.0, 0.0, 0.0)
        total = self.support.sum()
        weighted = tuple(float(x) for x in scores @ self.support / total) if total else (0.0, 0.0, 0.0)
        out = {"macro avg": macro, "weighted avg": weighted}
        if self.micro is not None:
            out = {"micro avg": self.micro, **out}
        return out

    def markdown(self, title: str = "Classification report") -> str:
        """The report as markdown: one row per label, then the averages (and accuracy)."""
        total = int(self.support.sum())
        kind = "multi-label: each label scored as its own yes/no" if self.multi_label else "single-label"
        lines = [
            f"# {title}",
            "",
            f"{len(self.names)} labels, {kind}; support is the number of examples with the label"
            + (f" ({total} in all)." if not self.multi_label else "."),
            "",
            "| Label | Precision | Recall | F1 | Support |",
            "|---|---:|---:|---:|---:|",
        ]
        for i, name in enumerate(self.names):
            cells = (self.precision[i], self.recall[i], self.f1[i])
            lines.append(
                f"| {_cell(name)} | " + " | ".join(f"{v:.4f}" for v in cells) + f" | {self.support[i]} |"
            )
        if self.accuracy is not None:
            lines.append(f"| **accuracy** | | | {self.accuracy:.4f} | {total} |")
        for name, values in self.averages().items():
            lines.append(f"| **{name}** | " + " | ".join(f"{v:.4f}" for v in values) + f" | {total} |")
        return "\n".join(lines) + "\n"

    def plot_confusion(self, title: str = "") -> bytes | None:
        """The confusion matrix as PNG bytes (rows true, columns predicted; counts annotated, colour the
        share of each true label's examples); None for multi-label."""
        if self.confusion is None:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        counts = self.confusion
        n = len(self.names)
        rows = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        side = min(max(4.5, 0.55 * n + 2.5), 40)
        fig, ax = plt.subplots(figsize=(side + 1, side))
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true label")
        names = [_short(name) for name in self.names]
        font = 10 if n <= 20 else 7
        ax.set_xticks(
            range(n), names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=font
        )
        ax.set_yticks(range(n), names, fontsize=font)
        ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=font)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")  # whole tick labels
        plt.close(fig)
        return buffer.getvalue()

    def write(self, report_path: str | Path, plot_path: str | Path | None, split: str = "") -> list[Path]:
        """The markdown report and (single-label) the confusion-matrix PNG, written atomically; ``split``
        names the data in their titles."""
        where = f": {split} split" if split else ""
        written = [atomic_write_text(report_path, self.markdown(f"Classification report{where}"))]
        png = self.plot_confusion(f"Confusion matrix{where}") if plot_path is not None else None
        if png is not None:
            written.append(atomic_write_bytes(plot_path, png))
        return written


def _cell(name: str) -> str:
    """A label name safe in a markdown table cell."""
    return str(name).replace("|", "\\|").replace("\n", " ")


def _short(name: str, limit: int = 24) -> str:
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "…"
