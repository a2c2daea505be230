"""Calibrated probabilities and a decision threshold for the ensemble's blend, fitted on val.

``fit_platt(labels, probs) -> (slope, intercept)``
    Platt scaling (Platt 1999, "Probabilistic outputs for support vector machines"; on neural
    networks' logits, Guo, Pleiss, Sun & Weinberger 2017): ``p' = sigmoid(slope * logit(p) +
    intercept)``, the one-feature logistic regression of the labels on the blend's logit, fitted on
    val. The slope alone is temperature scaling (slope = 1 / T: an average of
    members is under-confident, one over-trained member over-confident); the intercept undoes a
    shift, the case of a detector that ranks well but whose probabilities all sit on one side of
    0.5. A positive slope keeps the ranking (ROC-AUC unchanged).
``calibrate(probs, slope, intercept) -> probs``
    The same map, for any split and for ``dfsearch predict``.
``choose_threshold(labels, probs, target_fpr=None) -> t``
    The decision threshold, on val: one that maximises accuracy (0.5 when it is one; else the
    middle of the interval of best thresholds nearest 0.5), or, with ``target_fpr``, the lowest
    whose false-positive rate (real images called fake) is at most ``target_fpr``. Accuracy at a
    fixed 0.5 is what a blend that moves the threshold games; a threshold chosen on val and
    reported on test is not (Wang et al. 2020: AP 98.5 but accuracy 73.4 % at 0.5 for one
    detector: the threshold, not the ranking, was off).

``fit_candidates(P_val, y_val)`` / ``apply_candidates(P, maps)``
    The same scaling for every candidate before selection (each its own map, fitted on val);
    ``dfsearch predict`` applies each member's map before the weighted average.

ECE, what calibration is judged by, is ``dfsearch.metrics.ece``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit: a 0 or 1 stays finite


def _logits(probs) -> np.ndarray:
    return logit(np.clip(np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5), EPS, 1 - EPS))


def calibrate(probs, slope: float, intercept: float = 0.0) -> np.ndarray:
    """``sigmoid(slope * logit(probs) + intercept)``, float64."""
    return expit(slope * _logits(probs) + intercept)


def fit_platt(labels, probs) -> tuple[float, float]:
    """``(slope, intercept)`` of Platt's fit of ``labels`` on ``logit(probs)``: maximum likelihood
    against his smoothed targets, (n_fake + 1) / (n_fake + 2) for a fake and 1 / (n_real + 2) for a
    real image, which keeps the fit finite when val is perfectly separated (sklearn's private
    ``_SigmoidCalibration`` does the same). ``(1.0, 0.0)``, the identity, for one class only."""
    y = np.asarray(labels).astype(int)
    n_fake = int(y.sum())
    n_real = len(y) - n_fake
    if n_fake == 0 or n_real == 0:
        return 1.0, 0.0
    z = _logits(probs)
    t = np.where(y == 1, (n_fake + 1) / (n_fake + 2), 1 / (n_real + 2))

    def nll_and_grad(ab):
        s = ab[0] * z + ab[1]
        r = expit(s) - t  # d(mean cross-entropy)/ds
        return float(np.mean(np.logaddexp(0.0, s) - t * s)), np.array([np.mean(r * z), np.mean(r)])

    a, b = minimize(nll_and_grad, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B").x
    return float(a), float(b)


def choose_threshold(labels, probs, target_fpr: float | None = None) -> float:
    """See the module docstring. 0.5 when only one class is present."""
    y = np.asarray(labels).astype(int)
    p = np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.5)
    if len(np.unique(y)) < 2:
        return 0.5
    cuts = np.unique(np.concatenate([p, [0.5, np.nextafter(p.max(), np.inf)]]))  # "p >= cut" is fake
    order = np.argsort(p, kind="stable")
    below = np.searchsorted(p[order], cuts, side="left")  # how many are called real at each cut
    fakes_below = np.concatenate([[0], np.cumsum(y[order])])[below]
    n_fake = int(y.sum())
    n_real = len(y) - n_fake
    real_below = below - fakes_below                        # true negatives
    if target_fpr is not None:
        fpr = (n_real - real_below) / n_real                # falls as the cut rises
        return float(cuts[np.flatnonzero(fpr <= target_fpr)[0]])
    acc = (n_fake - fakes_below + real_below) / len(y)
    # a threshold t in (cuts[i-1], cuts[i]] calls the same images fake as cuts[i]: a run of tied best
    # cuts is an interval of equally good thresholds; take 0.5 if one holds it, else the middle of
    # the one nearest 0.5 (its edge would sit on a val image: no margin on new data)
    best = np.flatnonzero(acc == acc.max())
    intervals = [(cuts[r[0] - 1] if r[0] > 0 else 0.0, cuts[r[-1]])
                 for r in np.split(best, np.flatnonzero(np.diff(best) != 1) + 1)]
    if any(lo < 0.5 <= hi for lo, hi in intervals):
        return 0.5
    lo, hi = min(intervals, key=lambda iv: min(abs(iv[0] - 0.5), abs(iv[1] - 0.5)))
    return float((lo + hi) / 2)


def fit_candidates(P_val: np.ndarray, y_val) -> list[tuple[float, float]]:
    """One Platt map per candidate row of ``P_val`` (candidates x val samples), fitted on val.

    Selection then averages calibrated candidates: a candidate whose probabilities all sit on one
    side of 0.5 no longer wins a place by moving the blend's threshold (its own map undoes the
    shift), so what greedy selection can still gain from a member is what it adds to the ranking."""
    return [fit_platt(y_val, row) for row in P_val]


def apply_candidates(P: np.ndarray, maps: list[tuple[float, float]]) -> np.ndarray:
    """Each row of ``P`` through its candidate's map (float32, as the store keeps probabilities)."""
    out = np.stack([calibrate(row, a, b) for row, (a, b) in zip(P, maps)]).astype(np.float32)
    out[~np.isfinite(P)] = np.nan  # a non-finite prediction stays one: selection reports and excludes it
    return out


def calibrate_pool(pool):
    """``(pool with every candidate through its own val-fitted map, maps, summary)``; the summary
    gives the candidates' median val ECE before and after (``dfsearch.metrics.ece``)."""
    from dfsearch.ensemble.alignment import Pool
    from dfsearch.metrics import ece

    maps = fit_candidates(pool.P["val"], pool.y["val"])
    calibrated = Pool(pool.candidates, {s: apply_candidates(P, maps) for s, P in pool.P.items()}, pool.y,
                      pool.sample_ids)
    before = float(np.median([ece(pool.y["val"], row) for row in pool.P["val"]]))
    after = float(np.median([ece(pool.y["val"], row) for row in calibrated.P["val"]]))
    return calibrated, maps, {"method": "platt", "val_ece_median_before": before, "val_ece_median_after": after}
