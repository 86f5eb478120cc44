"""Figures of a run (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_confusion_matrix"]


def plot_confusion_matrix(confusion: np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no backend or display involved

    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    n = len(class_names)
    size = min(max(4.0, 0.32 * n + 2.5), 24.0)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=max(4, 10 - n // 10))
    ax.set_yticks(range(n), labels=class_names, fontsize=max(4, 10 - n // 10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
