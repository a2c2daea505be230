"""Binary classification metrics on plain arrays (labels 1 = fake, probabilities of fake).

One function, one place: trials, the ensembler and reports all call ``binary_metrics``.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

EPS = 1e-7


def log_loss(labels, probs) -> float:
    """Mean binary cross-entropy (sklearn's); probabilities clipped to [EPS, 1-EPS] first, so a
    confidently wrong float32 probability costs -log(EPS), not infinity (NaN-safe: NaN -> 0.5)."""
    y = np.asarray(labels)
    if not len(y):
        return float("nan")
    p = np.clip(np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5), EPS, 1 - EPS)
    return float(skm.log_loss(y, p, labels=[0, 1]))


def accuracy(labels, probs, threshold: float = 0.5) -> float:
    y = np.asarray(labels)
    if not len(y):
        return float("nan")
    return float(skm.accuracy_score(y == 1, np.asarray(probs) >= threshold))


def roc_auc(labels, probs) -> float:
    """ROC-AUC, or NaN when only one class is present."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(skm.roc_auc_score(y, np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5)))


def equal_error_rate(labels, probs) -> float:
    """The point on the ROC curve where false-positive rate equals false-negative rate."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = skm.roc_curve(y, np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5))
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def binary_metrics(labels, probs, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC, average precision, EER, log loss, confusion matrix.

    ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]`` with real = 0 as the first row.
    """
    y = np.asarray(labels).astype(int)
    p = np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5)
    pred = (p >= threshold).astype(int)
    two = len(np.unique(y)) == 2
    return {
        "n": int(len(y)),
        "accuracy": accuracy(y, p, threshold),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": roc_auc(y, p),
        "average_precision": float(skm.average_precision_score(y, p)) if two else float("nan"),
        "eer": equal_error_rate(y, p),
        "log_loss": log_loss(y, p),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(),
    }
