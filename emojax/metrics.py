"""Classification scores: accuracy, support-weighted F1, per-class scores, confusion matrix.

All functions take integer label and prediction arrays ``(n,)`` and return plain Python / NumPy
values, so they serve evaluation loops, notebooks and reports alike.
"""
from __future__ import annotations

import io
import pathlib
from typing import Optional, Sequence

import numpy as np

from emojax.files import write_bytes_if_changed

# The headline scores of a split, each in [0, 1]: what a run's history keeps and may select on.
HEADLINE_SCORES = ("accuracy", "weighted_f1", "macro_f1")


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` counts; rows are true classes, columns predictions."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def scores_from_confusion(matrix: np.ndarray) -> dict:
    """Accuracy, weighted F1 (``sklearn``'s ``average='weighted'``), macro F1, per-class scores."""
    matrix = np.asarray(matrix, dtype=np.float64)
    total = matrix.sum()
    true_positive = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(support > 0, true_positive / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    accuracy = float(true_positive.sum() / total) if total else 0.0
    weighted_f1 = float((f1 * support).sum() / support.sum()) if support.sum() else 0.0
    present = support > 0
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    return {
        "accuracy": accuracy,
        "weighted_f1": weighted_f1,
        "macro_f1": macro_f1,
        "per_class_accuracy": recall.tolist(),  # accuracy within a true class = its recall
        "per_class_f1": f1.tolist(),
        "support": support.astype(int).tolist(),
        "confusion": matrix.astype(int).tolist(),
        "count": int(total),
    }


def classification_scores(labels, predictions, num_classes: int) -> dict:
    return scores_from_confusion(confusion_matrix(labels, predictions, num_classes))


def format_table(scores: dict, class_names: Sequence[str], title: str = "") -> str:
    """Markdown table of per-class accuracy / F1 / support and the totals."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| class | accuracy | F1 | support |", "|---|---:|---:|---:|"]
    for name, acc, f1, n in zip(class_names, scores["per_class_accuracy"], scores["per_class_f1"],
                                scores["support"]):
        lines.append(f"| {name} | {100 * acc:.2f} | {100 * f1:.2f} | {n} |")
    lines.append(f"| **all** | **{100 * scores['accuracy']:.2f}** | "
                 f"**{100 * scores['weighted_f1']:.2f}** (weighted) | {scores['count']} |")
    return "\n".join(lines)


def format_confusion(matrix, class_names: Sequence[str]) -> str:
    """Markdown confusion matrix (rows: true class, columns: predicted class)."""
    short = [name[:8] for name in class_names]
    lines = ["| true \\ pred | " + " | ".join(short) + " |", "|---|" + "---:|" * len(short)]
    for name, row in zip(class_names, np.asarray(matrix)):
        lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |")
    return "\n".join(lines)


def confusion_figure(matrix, class_names: Sequence[str], title: str = ""):
    """A row-normalised confusion matrix heat map with counts, as a ``matplotlib.figure.Figure``.

    Built without pyplot, so it never changes the process's backend: a notebook shows it inline
    (``display(fig)`` or as a cell's last value), a script saves it (``fig.savefig``)."""
    # Import cost: matplotlib takes seconds, and scoring (emojax.training.evaluation) imports this module.
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 1.2 + 0.75 * len(class_names)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                    color="white" if normalised[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def save_png(fig, path: str | pathlib.Path) -> pathlib.Path:
    """``fig`` as a PNG at ``path``, written atomically (a full disk leaves the old picture), and
    not rewritten when the file already holds the same picture."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    path = pathlib.Path(path)
    write_bytes_if_changed(path, buffer.getvalue())
    return path


def plot_confusion(matrix, class_names: Sequence[str], path: str | pathlib.Path, title: str = "") -> pathlib.Path:
    """Save :func:`confusion_figure` as a PNG."""
    return save_png(confusion_figure(matrix, class_names, title), path)


def history_figure(history: Sequence[dict], metric: str = "weighted_f1", *, label: str = "",
                   best_epoch: Optional[int] = None):
    """Training loss (and dev loss, where the rows have it) and dev ``metric`` in percent per
    epoch, as a ``matplotlib.figure.Figure`` (built without pyplot, as :func:`confusion_figure`):
    every curve with markers (one epoch shows as points), whole-number epoch ticks, one legend
    for both axes, the selected epoch ``best_epoch`` marked, and ``label`` (the run's) as the title."""
    from matplotlib.figure import Figure  # import cost, as above
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(7, 4))
    ax_loss = fig.subplots()
    ax_loss.plot(epochs, [row["train_loss"] for row in history], color="tab:red", marker="o", label="train loss")
    if history and all("dev_loss" in row for row in history):
        ax_loss.plot(epochs, [row["dev_loss"] for row in history], color="tab:orange", marker="s",
                     linestyle="--", label="dev loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_dev = ax_loss.twinx()
    ax_dev.plot(epochs, [100 * row["dev"][metric] for row in history], color="tab:blue", marker="o",
                label=f"dev {metric} (%)")
    ax_dev.set_ylabel(f"dev {metric} (%)", color="tab:blue")
    selected = next((row for row in history if row["epoch"] == best_epoch), None)
    if selected is not None:
        ax_dev.axvline(best_epoch, color="tab:green", linestyle=":", linewidth=1)
        ax_dev.plot([best_epoch], [100 * selected["dev"][metric]], color="tab:green", marker="*", markersize=14,
                    linestyle="none", label=f"selected: epoch {best_epoch}")
    if len(epochs) == 1:  # one point: an axis of its own width around it
        ax_loss.set_xlim(epochs[0] - 1, epochs[0] + 1)
    lines = ax_loss.get_lines() + [line for line in ax_dev.get_lines() if not line.get_label().startswith("_")]
    ax_dev.legend(lines, [line.get_label() for line in lines], loc="best", fontsize=8)
    if label:
        ax_loss.set_title(label, fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[dict], path: str | pathlib.Path, metric: str = "weighted_f1", *,
                 label: str = "", best_epoch: Optional[int] = None) -> pathlib.Path:
    """Save :func:`history_figure` as a PNG."""
    return save_png(history_figure(history, metric, label=label, best_epoch=best_epoch), path)
