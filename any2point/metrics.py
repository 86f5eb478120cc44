"""Classification metrics (torchmetrics): overall accuracy, mean class accuracy, per class, confusion."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

__all__ = ["ClassificationResult", "classification_metrics"]


@dataclass(frozen=True)
class ClassificationResult:
    oa: float  # overall accuracy, percent
    macc: float  # mean of the per-class accuracies over classes present in the targets, percent
    per_class: list[float | None]  # percent; None for a class with no sample
    support: list[int]
    confusion: np.ndarray  # (C, C), rows = true class, columns = predicted
    samples: int

    def per_class_rows(self, class_names: list[str]) -> list[dict]:
        return [{"class": name, "accuracy": acc, "support": n}
                for name, acc, n in zip(class_names, self.per_class, self.support)]


def classification_metrics(preds: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                           num_classes: int) -> ClassificationResult:
    """Metrics of predicted class indices against targets (both (n,) integer)."""
    preds = torch.as_tensor(np.asarray(preds), dtype=torch.long)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    if preds.shape != targets.shape or preds.ndim != 1:
        raise ValueError(f"predictions {tuple(preds.shape)} and targets {tuple(targets.shape)} must be equal 1-D")
    if len(targets) == 0:
        raise ValueError("no samples to evaluate")
    oa = multiclass_accuracy(preds, targets, num_classes=num_classes, average="micro").item()
    macc = multiclass_accuracy(preds, targets, num_classes=num_classes, average="macro").item()
    per = multiclass_accuracy(preds, targets, num_classes=num_classes, average="none")
    support = torch.bincount(targets, minlength=num_classes)
    confusion = multiclass_confusion_matrix(preds, targets, num_classes=num_classes).numpy()
    return ClassificationResult(
        oa=100.0 * oa, macc=100.0 * macc,
        per_class=[100.0 * float(a) if n > 0 else None for a, n in zip(per.tolist(), support.tolist())],
        support=support.tolist(), confusion=confusion, samples=len(targets))
