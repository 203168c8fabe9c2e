"""Classification metrics from predictions: accuracy, top-k, confusion, precision/recall/F1."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """``cm[i, j]`` = images of true class i predicted as j."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def classification_report(y_true: np.ndarray, scores: np.ndarray, classes: list[str],
                          top_k: int = 5) -> dict[str, Any]:
    """Accuracy, top-k accuracy and per-class precision/recall/F1 from class scores."""
    k = len(classes)
    pred = scores.argmax(axis=1)
    cm = confusion_matrix(y_true, pred, k)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    kk = min(top_k, k)
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    topk_acc = float((top == y_true[:, None]).any(axis=1).mean())
    return {
        "accuracy": float((pred == y_true).mean()),
        f"top{kk}_accuracy": topk_acc,
        "top_k": kk,
        "confusion_matrix": cm.tolist(),
        "per_class": [
            {"class": c, "precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, actual)
        ],
        "macro_f1": float(f1.mean()),
    }
