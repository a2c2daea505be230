"""Report a selection against two baselines, on val and test.

``evaluate(pool, selection, top_k)`` gives ``dfsearch.metrics.binary_metrics`` of the selected
ensemble, of the best single candidate and of the plain average of the ``top_k`` best candidates
(both baselines chosen by individual val score). Only val is ever used to choose; test is only
reported. ``blend`` is the weighted average of candidate rows that all three use.
"""

from __future__ import annotations

import numpy as np

from dfsearch.ensemble.alignment import Pool
from dfsearch.ensemble.scorer import sanitize
from dfsearch.ensemble.selection import Selection, rank_candidates
from dfsearch.metrics import binary_metrics
from dfsearch.store import SPLITS


def blend(P: np.ndarray, weights: dict[int, float]) -> np.ndarray:
    """Weighted average of candidate rows (non-finite -> 0.5, clipped to [0, 1]), float64."""
    out = np.zeros(P.shape[1], dtype=np.float64)
    total = sum(weights.values())
    for i, w in sorted(weights.items()):
        out += w * sanitize(P[i]).astype(np.float64)
    return out / total


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
