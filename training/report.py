"""Table 1 of the paper (CSV and Markdown) and the plots a person should look at."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np

from training.metrics import METRIC_NAMES, Confusion, binary_metrics, reliability

COLUMNS = ("fold", *METRIC_NAMES, "auc", "tp", "fn", "fp", "tn")


@dataclass(frozen=True)
class Row:
    """One line of the table: a fold (or "Overlapped") with its counts and AUC."""

    name: str
    counts: Confusion
    auc: float

    def values(self) -> dict[str, float]:
        """Metric name to value, AUC included."""
        return {**binary_metrics(self.counts), "auc": self.auc}


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def write_metrics_csv(path: Path, rows: Sequence[Row]) -> None:
    """One row per fold plus the summed ("Overlapped") row; NaN written as ``nan``."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            values = row.values()
            c = row.counts
            writer.writerow([row.name, *(f"{values[m]:.6f}" for m in (*METRIC_NAMES, "auc")),
                             c.tp, c.fn, c.fp, c.tn])


def markdown_table(rows: Sequence[Row]) -> str:
    """The paper's Table 1 layout, plus AUC and the confusion counts."""
    header = ("| Fold | Sensitivity | Specificity | Precision | F1-score | Accuracy | AUC "
              "| TP/FN/FP/TN |")
    lines = [header, "|" + "---|" * 8]
    for row in rows:
        v = row.values()
        c = row.counts
        cells = [_fmt(v[m]) for m in (*METRIC_NAMES, "auc")]
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {c.tp}/{c.fn}/{c.fp}/{c.tn} |")
    return "\n".join(lines)


def _draw_confusion(ax: plt.Axes, counts: Confusion, title: str, classes: Sequence[str]) -> None:
    matrix = counts.as_matrix()
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    for (i, j), value in np.ndenumerate(matrix):
        share = value / max(int(matrix[i].sum()), 1)
        colour = "white" if value > matrix.max() / 2 else "black"
        ax.text(j, i, f"{value}\n{share:.0%}", ha="center", va="center", color=colour, fontsize=9)
    ax.set_xticks([0, 1], labels=list(classes))
    ax.set_yticks([0, 1], labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)


def plot_confusions(path: Path, rows: Sequence[Row], classes: Sequence[str]) -> None:
    """A grid with every fold's confusion matrix and the summed one last (highlighted)."""
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.1 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        acc = binary_metrics(row.counts)["accuracy"]
        _draw_confusion(ax, row.counts, f"{row.name} (acc {_fmt(acc)})", classes)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle("Confusion matrices (rows: true class; % of the true class)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(path: Path, histories: Sequence[Sequence[dict[str, float]]]) -> None:
    """Loss and accuracy per epoch, training (solid) and held-out fold (dashed), per fold."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("tab10")
    for index, history in enumerate(histories):
        epochs = [h["epoch"] for h in history]
        colour = cmap(index % 10)
        loss_ax.plot(epochs, [h["train_loss"] for h in history], color=colour,
                     marker=".", label=f"fold {index + 1}")
        loss_ax.plot(epochs, [h["val_loss"] for h in history], color=colour, ls="--", marker=".")
        acc_ax.plot(epochs, [h["train_accuracy"] for h in history], color=colour)
        acc_ax.plot(epochs, [h["val_accuracy"] for h in history], color=colour, ls="--")
    loss_ax.set(title="Loss (solid: training, dashed: held-out fold)", xlabel="epoch",
                ylabel="cross-entropy")
    acc_ax.set(title="Accuracy (solid: training, dashed: held-out fold)", xlabel="epoch",
               ylabel="accuracy", ylim=(0.0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(path: Path, curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]],
             operating_point: tuple[float, float, str] | None = None,
             faint: Sequence[tuple[np.ndarray, np.ndarray]] = (), faint_label: str = "",
             title: str = "ROC") -> None:
    """ROC curves ``(label, fpr, tpr, auc)``; optional marked point ``(fpr, tpr, label)``.

    ``faint`` curves (e.g. the single folds behind an ensemble) are drawn thin and grey
    under one legend entry, so ten of them don't bury the curve that matters.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for k, (fpr, tpr) in enumerate(faint):
        ax.plot(fpr, tpr, lw=0.8, color="grey", alpha=0.6, label=faint_label if k == 0 else None)
    for label, fpr, tpr, area in curves:
        ax.plot(fpr, tpr, lw=2, label=f"{label} (AUC {_fmt(area)})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="chance")
    if operating_point is not None:
        fpr_pt, tpr_pt, text = operating_point
        ax.plot([fpr_pt], [tpr_pt], "o", color="crimson", label=text)
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity",
           title=title, xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(path: Path, y_true: np.ndarray, scores: np.ndarray, brier: float,
                     label: str = "ensemble", title: str = "Reliability") -> None:
    """Reliability diagram: observed covid frequency per predicted-probability bin."""
    mean_pred, observed, counts = reliability(y_true, scores)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfect calibration")
    filled = counts > 0
    ax.plot(mean_pred[filled], observed[filled], "o-", label=f"{label} (Brier {brier:.4f})")
    ax.set(ylabel="observed covid fraction", title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    hist.bar(np.linspace(0.05, 0.95, len(counts)), counts, width=0.09, color="steelblue")
    hist.set(xlabel="predicted covid probability", ylabel="images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
