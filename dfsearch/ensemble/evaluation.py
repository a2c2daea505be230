"""Report a selection against two baselines, on val and test.

``evaluate(pool, selection, top_k)`` gives ``dfsearch.metrics.binary_metrics`` of the selected
ensemble, of the best single candidate and of the plain average of the ``top_k`` best candidates
(both baselines chosen by individual val score). Only val is ever used to choose; test is only
reported. ``blend`` is the weighted average of candidate rows that all three use.

``calibrate_blend(pool, weights, target_fpr)`` fits the ensemble blend's Platt scaling and decision
threshold on val (``calibration``) and reports the calibrated blend at that threshold on val and
test, with the uncalibrated blend's ECE beside it.
"""

from __future__ import annotations

import numpy as np

from dfsearch.ensemble.alignment import Pool
from dfsearch.ensemble.calibration import apply_candidates, calibrate, choose_threshold, fit_platt
from dfsearch.ensemble.scorer import sanitize
from dfsearch.ensemble.selection import Selection, rank_candidates
from dfsearch.metrics import binary_metrics, ece
from dfsearch.store import SPLITS


def blend(P: np.ndarray, weights: dict[int, float]) -> np.ndarray:
    """Weighted average of candidate rows (non-finite -> 0.5, clipped to [0, 1]), float64."""
    out = np.zeros(P.shape[1], dtype=np.float64)
    total = sum(weights.values())
    for i, w in sorted(weights.items()):
        out += w * sanitize(P[i]).astype(np.float64)
    return out / total


def ensemble_probs(P: np.ndarray, members: list[dict], calibration: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(calibrated, raw, per_member)`` of an ensemble.json's ``members`` (rows of ``P``, in that
    order, their stored probabilities) and ``calibration``, computed as the ensemble command
    computed them: each row through its member's Platt map (``apply_candidates``: a non-finite
    prediction stays one), the weighted ``blend`` (a non-finite one counts 0.5), the blend's Platt
    map. ``per_member``: the rows after their maps. An ensemble.json from before calibration: no
    maps, the raw blend."""
    maps = [((m.get("calibration") or {}).get("slope", 1.0), (m.get("calibration") or {}).get("intercept", 0.0))
            for m in members]
    Pc = apply_candidates(P, maps) if any(m.get("calibration") for m in members) else np.asarray(P, np.float32)
    raw = blend(Pc, {i: float(m["weight"]) for i, m in enumerate(members)})
    cal = calibration or {"slope": 1.0, "intercept": 0.0}
    return calibrate(raw, cal["slope"], cal["intercept"]), raw, Pc


def evaluate(pool: Pool, selection: Selection, top_k: int) -> dict:
    """Val and test ``binary_metrics`` of (a) the selected ensemble, (b) the best single candidate
    by individual val score of ``selection.metric`` and (c) the plain average of the ``top_k``
    best candidates by that score. Only val informs (b) and (c); test is only reported.

    Returns ``{"ensemble": {"val", "test"}, "best_single": {"index", "candidate", "val", "test"},
    "naive_top_k": {"indices", "candidates", "val", "test"}}``.
    """
    order = rank_candidates(pool.P["val"], pool.y["val"], selection.metric)
    k = max(1, min(int(top_k), len(order)))
    best, top = int(order[0]), sorted(int(i) for i in order[:k])

    def both(weights):
        return {s: binary_metrics(pool.y[s], blend(pool.P[s], weights)) for s in SPLITS}

    return {
        "ensemble": both(selection.weights),
        "best_single": {"index": best, "candidate": pool.candidates[best], **both({best: 1.0})},
        "naive_top_k": {"indices": top, "candidates": [pool.candidates[i] for i in top],
                        **both({i: 1.0 / k for i in top})},
    }


def calibrate_blend(pool: Pool, weights: dict[int, float], target_fpr: float | None = None) -> dict:
    """``{"method", "slope", "intercept", "threshold", "target_fpr", "val": {...}, "test": {...}}``:
    the Platt map and the threshold are fitted on val only; each split's ``binary_metrics`` of the
    calibrated blend at that threshold, plus ``ece_uncalibrated`` (the raw blend's)."""
    raw = {s: blend(pool.P[s], weights) for s in SPLITS}
    slope, intercept = fit_platt(pool.y["val"], raw["val"])
    cal = {s: calibrate(raw[s], slope, intercept) for s in SPLITS}
    threshold = choose_threshold(pool.y["val"], cal["val"], target_fpr)
    return {"method": "platt", "slope": slope, "intercept": intercept, "threshold": threshold,
            "target_fpr": target_fpr,
            **{s: {**binary_metrics(pool.y[s], cal[s], threshold), "ece_uncalibrated": ece(pool.y[s], raw[s])}
               for s in SPLITS}}


def compare(pool: Pool, ev: dict, weights: dict[int, float], calibration: dict, target_fpr: float | None = None,
            n_boot: int = 1000, seed: int = 0) -> dict:
    """The test split, side by side and each on equal terms: the ensemble, the best single candidate
    and the naive top-k average, each Platt-calibrated on val at its own val-chosen threshold (so the
    ensemble is not credited with a threshold the best single could have had too), with 95 %
    bootstrap intervals on accuracy / ROC-AUC, the ensemble's gain over the best single with a
    paired interval, and per fake source (``fake/<generator>/`` folders: the benchmark's families)
    each against all the real test images.

    ``calibration`` is ``calibrate_blend(pool, weights, target_fpr)`` (the ensemble's, computed
    once by the caller). Returns ``{"rows": {name: {"threshold", "test", "ci"}}, "gain": ...,
    "per_source": {source: {name: {"accuracy", "roc_auc", "roc_auc_ci", "n_fake", "detected"}}}}``.
    """
    from dfsearch.data.discover import fake_source
    from dfsearch.metrics import auc_interval, bootstrap_intervals, paired_difference, roc_auc

    best = {ev["best_single"]["index"]: 1.0}
    naive = {i: 1.0 / len(ev["naive_top_k"]["indices"]) for i in ev["naive_top_k"]["indices"]}
    entries = {"ensemble": (weights, calibration), "best_single": (best, calibrate_blend(pool, best, target_fpr)),
               "naive_top_k": (naive, calibrate_blend(pool, naive, target_fpr))}
    y = pool.y["test"]
    probs, rows = {}, {}
    for name, (w, cal) in entries.items():
        p = calibrate(blend(pool.P["test"], w), cal["slope"], cal["intercept"])
        probs[name] = (p, cal["threshold"])
        ci = bootstrap_intervals(y, p, cal["threshold"], n_boot, seed) if n_boot else {}
        rows[name] = {"threshold": cal["threshold"], "test": cal["test"],
                      "ci": {k: ci[k] for k in ("accuracy", "roc_auc") if k in ci}}
    gain = paired_difference(y, *probs["ensemble"], *probs["best_single"], n=n_boot, seed=seed)
    sources = np.array([fake_source(str(s)) if lab == 1 else None for s, lab in zip(pool.sample_ids["test"], y)],
                       dtype=object)
    per_source = {}
    for src in sorted({s for s in sources if s is not None}):
        keep = (y == 0) | (sources == src)
        per_source[src] = {name: {"accuracy": float(np.mean((p[keep] >= thr) == (y[keep] == 1))),
                                  "roc_auc": roc_auc(y[keep], p[keep]),
                                  "roc_auc_ci": auc_interval(y[keep], p[keep], n_boot, seed),
                                  "n_fake": int((sources == src).sum()),
                                  "detected": float(np.mean(p[sources == src] >= thr))}
                           for name, (p, thr) in probs.items()}
    return {"rows": rows, "gain": gain, "per_source": per_source}
