"""Scores of a trained classifier on data it never saw, and k-fold cross-validation.

>>> import numpy as np
>>> m = classification_metrics(["a", "b", "b", "a"], ["a", "b", "a", "a"], classes=["a", "b"])
>>> m["accuracy"], m["confusion_matrix"].tolist(), round(m["per_class"]["b"]["recall"], 2)
(0.75, [[2, 0], [1, 1]], 0.5)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pakit_stream.training.config import TrainingConfig

__all__ = ["ModelEvaluator", "classification_metrics", "hit_ratio_at"]


def classification_metrics(y_true: Sequence[Any], y_pred: Sequence[Any],
                           classes: Sequence[Any] | None = None) -> dict[str, Any]:
    """Accuracy, macro precision / recall / F1, confusion matrix (rows: truth) and per class."""
    classes = list(classes) if classes is not None else sorted(set(y_true) | set(y_pred), key=str)
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    per_class = {}
    for c, i in index.items():
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i].sum() if cm[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[str(c)] = {"precision": float(precision), "recall": float(recall),
                             "f1": float(f1), "support": int(cm[i].sum())}
    present = [v for v in per_class.values() if v["support"]] or list(per_class.values())
    n = len(y_true)
    return {
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "precision": float(np.mean([v["precision"] for v in present])) if present else 0.0,
        "recall": float(np.mean([v["recall"] for v in present])) if present else 0.0,
        "f1": float(np.mean([v["f1"] for v in present])) if present else 0.0,
        "confusion_matrix": cm,
        "classes": [str(c) for c in classes],
        "per_class": per_class,
        "samples": n,
    }


def hit_ratio_at(predict: Callable[[list[str], int], Sequence[str]],
                 sequences: Sequence[Sequence[str]], k: int = 5, context: int = 8) -> float:
    """Share of transitions whose next block is among ``predict(recent, k)``, where ``recent``
    is at most ``context`` blocks before it: hit ratio at k (precision at k is a k-th of it).

    >>> hit_ratio_at(lambda recent, k: [recent[-1] + "'"], [["a", "a'", "b"]], k=1)
    0.5
    """
    hits = total = 0
    for seq in sequences:
        for t in range(1, len(seq)):
            total += 1
            hits += seq[t] in predict(list(seq[max(0, t - context):t]), k)
    return hits / total if total else 0.0


class ModelEvaluator:
    def __init__(self, training_config: TrainingConfig | None = None) -> None:
        self.training_config = training_config or TrainingConfig(num_epochs=30)

    def evaluate(self, model, test_data) -> dict[str, Any]:
        samples = list(test_data)
        y_pred = model.predict_labels([f for f, _ in samples])
        return classification_metrics([str(label) for _, label in samples], y_pred,
                                      classes=model.classes)

    def cross_validate(self, model_class, dataset, k_folds: int = 5, seed: int = 0,
                       model_config=None) -> dict[str, Any]:
        """Train a fresh ``model_class`` on k-1 folds and score it on the held-out one, k times.
        Early stopping watches a slice of the training folds, never the held-out fold."""
        from pakit_stream.training.trainer import ModelTrainer

        scores = []
        for train, held_out in dataset.folds(k_folds, seed=seed):
            fit, val, _ = train.split(0.85, 0.15, 0.0, seed=seed)
            model = model_class(model_config)
            ModelTrainer(self.training_config).train(model, fit, val)
            scores.append(self.evaluate(model, held_out))
        acc = np.array([s["accuracy"] for s in scores])
        f1 = np.array([s["f1"] for s in scores])
        return {"mean_accuracy": float(acc.mean()), "std_accuracy": float(acc.std()),
                "mean_f1": float(f1.mean()), "std_f1": float(f1.std()),
                "folds": [{"accuracy": s["accuracy"], "f1": s["f1"]} for s in scores]}
