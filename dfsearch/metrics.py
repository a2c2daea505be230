"""Binary classification metrics on plain arrays (labels 1 = fake, probabilities of fake).

One function, one place: trials, the ensembler and reports all call ``binary_metrics``.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

EPS = 1e-7


# log_loss and accuracy are numpy, not sklearn.metrics.log_loss / accuracy_score: greedy selection
# (dfsearch.ensemble.selection) calls both once per round on the whole val set, where sklearn's input
# checks and one-hot encoding cost ~6 ms per round on 40k samples against 0.2 ms here. Measured side
# by side (bench/bench_ensemble.py, BENCHMARKS.md section 4), select on 500 candidates x 40k x 50
# rounds, accuracy: top_k 4 0.32 s with sklearn vs 0.11 s, top_k 50 0.58 s vs 0.34 s (target 1 s,
# which load on the 2-core machine can inflate by ~1.4x). Same values as sklearn's to 1e-12
# (tests/test_ensemble.py checks it).


def log_loss(labels, probs) -> float:
    """Mean binary cross-entropy, = sklearn's ``log_loss(labels, clip(probs), labels=[0, 1])``;
    probabilities are clipped to [EPS, 1-EPS] first, so a confidently wrong float32 probability
    costs -log(EPS), not infinity (NaN-safe: NaN -> 0.5). NaN for no samples."""
    y = np.asarray(labels, dtype=np.float64)
    if not len(y):
        return float("nan")
    p = np.clip(np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(labels, probs, threshold: float = 0.5) -> float:
    """Share of samples where ``probs >= threshold`` matches ``labels == 1`` (= sklearn's
    ``accuracy_score``); NaN for no samples."""
    y = np.asarray(labels)
    if not len(y):
        return float("nan")
    return float(np.mean((np.asarray(probs) >= threshold) == (y == 1)))


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


def ece(labels, probs, bins: int = 15) -> float:
    """Expected calibration error of P(fake): the mean |fraction of fakes - mean P(fake)| over
    ``bins`` equal-width probability bins, weighted by their counts (Naeini, Cooper & Hauskrecht
    2015; Guo et al. 2017). 0 for probabilities that mean what they say; NaN for no samples."""
    y = np.asarray(labels, dtype=np.float64)
    if not len(y):
        return float("nan")
    p = np.clip(np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5), 0.0, 1.0)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins))
    return float(gap.sum() / len(y))


def binary_metrics(labels, probs, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC, average precision, EER, log loss, ECE, confusion
    matrix; the thresholded ones at ``threshold``.

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
        "ece": ece(y, p),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(),
    }
