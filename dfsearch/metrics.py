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


# ----------------------------------------------------------------------------- intervals

HEADLINE = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "average_precision", "eer")


def headline(labels, probs, threshold: float = 0.5) -> dict:
    """The ``HEADLINE`` metrics, as ``binary_metrics`` computes them, without its other work (a
    bootstrap calls this a thousand times). Balanced accuracy is the mean of the two per-class
    recalls; it, ROC-AUC, AP and EER are NaN where a class is missing."""
    y = np.asarray(labels).astype(int)
    p = np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5)
    pred = p >= threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    fn, tn = int((~pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    both = tp + fn > 0 and tn + fp > 0
    return dict(accuracy=accuracy(y, p, threshold),
                balanced_accuracy=(tp / (tp + fn) + tn / (tn + fp)) / 2 if both else float("nan"),
                f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                roc_auc=roc_auc(y, p), eer=equal_error_rate(y, p),
                average_precision=float(skm.average_precision_score(y, p)) if both else float("nan"))


def resample_weights(n: int, draws: int, seed: int = 0) -> np.ndarray:
    """(draws, n) bootstrap counts: how often each of ``n`` samples is in each resample (Efron &
    Tibshirani 1993), for scoring every resample at once."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def weighted_scores(labels, probs, threshold: float, W: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, F1 and ROC-AUC of every resample (rows of counts ``W``) at once.
    AUC is the Mann-Whitney statistic with ties counted half, summed over groups of equal
    probability: one sort for all resamples. NaN where a resample lost a class."""
    y = np.asarray(labels).astype(int)
    p = np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5)
    pos, pred = y == 1, p >= threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        n_pos, n_neg = W[:, pos].sum(1), W[:, ~pos].sum(1)
        tp, fp = W[:, pos & pred].sum(1), W[:, ~pos & pred].sum(1)
        fn, tn = n_pos - tp, n_neg - fp
        order = np.argsort(p, kind="stable")
        starts = np.r_[0, np.flatnonzero(np.diff(p[order])) + 1]
        g_pos = np.add.reduceat(W[:, order] * pos[order], starts, axis=1)
        g_neg = np.add.reduceat(W[:, order] * ~pos[order], starts, axis=1)
        below = np.cumsum(g_neg, axis=1) - g_neg  # negatives strictly below each group
        auc = (g_pos * (below + 0.5 * g_neg)).sum(1) / (n_pos * n_neg)
        both = (n_pos > 0) & (n_neg > 0)
        return dict(accuracy=(tp + tn) / W.sum(1),
                    balanced_accuracy=np.where(both, (tp / n_pos + tn / n_neg) / 2, np.nan),
                    f1=np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
                    roc_auc=np.where(both, auc, np.nan))


def _interval(values, level: float):
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    a = (1 - level) / 2
    return [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))] if len(v) else None


def bootstrap_intervals(labels, probs, threshold: float = 0.5, n: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, list[float]]:
    """``{metric: [lo, hi]}``: percentile bootstrap intervals (Efron & Tibshirani 1993) of the
    ``HEADLINE`` metrics over ``n`` resamples of the samples; a resample that lost a class counts for
    no metric that needs both. Accuracy, balanced accuracy, F1 and AUC are scored for all resamples
    at once (``weighted_scores``), AP and EER one resample at a time (sklearn). Empty for ``n`` 0."""
    y, p = np.asarray(labels).astype(int), np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5)
    if n <= 0 or not len(y):
        return {}
    W = resample_weights(len(y), n, seed)
    draws = weighted_scores(y, p, threshold, W)
    if len(np.unique(y)) == 2:
        idx = [np.repeat(np.arange(len(y)), w.astype(int)) for w in W]
        two = [i for i in idx if 0 < y[i].sum() < len(i)]
        draws["average_precision"] = [skm.average_precision_score(y[i], p[i]) for i in two]
        draws["eer"] = [equal_error_rate(y[i], p[i]) for i in two]
    out = {k: _interval(draws[k], level) for k in HEADLINE if k in draws}
    return {k: v for k, v in out.items() if v is not None}


def auc_interval(labels, probs, n: int = 1000, seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of ROC-AUC alone (``weighted_scores``: every resample at once),
    for the many small tables (a row per fake source and entry) where ``bootstrap_intervals``'s
    one-resample-at-a-time AP and EER would cost seconds each. None for ``n`` 0 or one class."""
    y = np.asarray(labels).astype(int)
    if n <= 0 or len(np.unique(y)) < 2:
        return None
    return _interval(weighted_scores(y, probs, 0.5, resample_weights(len(y), n, seed))["roc_auc"], level)


def paired_difference(labels, probs_a, threshold_a: float, probs_b, threshold_b: float, n: int = 1000,
                      seed: int = 0, level: float = 0.95) -> dict:
    """``{"accuracy" | "roc_auc": {"diff", "ci": [lo, hi] | None}}``: metric(a) - metric(b) on the
    same samples, with a paired percentile bootstrap interval (both scored on each resample): much
    narrower than two separate intervals when a and b err on the same images. An interval that
    holds 0 says the difference is inside the noise of this many samples."""
    y = np.asarray(labels).astype(int)
    full = [headline(y, probs_a, threshold_a), headline(y, probs_b, threshold_b)]
    out = {k: {"diff": full[0][k] - full[1][k], "ci": None} for k in ("accuracy", "roc_auc")}
    if n > 0 and len(y):
        W = resample_weights(len(y), n, seed)
        a, b = weighted_scores(y, probs_a, threshold_a, W), weighted_scores(y, probs_b, threshold_b, W)
        for k in out:
            out[k]["ci"] = _interval(a[k] - b[k], level)
    return out
