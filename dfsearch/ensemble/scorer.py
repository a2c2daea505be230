"""Score every candidate of one greedy round at once: the inner loop of ``selection.select``.

``Scorer(P_val, y_val, metric)`` keeps the val matrix in a layout built once: fake samples first,
then real ones, each block padded to a multiple of 64 columns, and signed (+p for fakes, -p for
reals). After ``t`` rounds with running sum ``S``, the ensemble with candidate c is
``(S + p_c) / (t + 1)``, and for all candidates of a chunk at once (chunks of ``CHUNK_ELEMENTS``
bound memory; there is no Python loop over samples or, within a chunk, over candidates):

* accuracy is one comparison per element against a per-sample threshold derived from ``S``,
  bit-packed and pop-counted;
* log loss is one add, one clip and one log per four elements;
* ROC-AUC is a rank sum (``scipy.stats.rankdata``, ties averaged).

Probabilities that are NaN or infinite count as 0.5, and all are clipped into [0, 1]
(``sanitize``); ``Scorer.finite`` says which candidates had only finite val probabilities.
"""

from __future__ import annotations

import math

import numpy as np

from dfsearch.metrics import EPS

THRESHOLD = 0.5  # P(fake) >= THRESHOLD predicts fake, as in dfsearch.metrics.accuracy
CHUNK_ELEMENTS = 1 << 21  # candidates x samples scored at once (~8 MB of float32)


def sanitize(P: np.ndarray) -> np.ndarray:
    """float32 copy with non-finite values -> 0.5 and everything clipped into [0, 1]."""
    X = np.array(P, dtype=np.float32, copy=True)
    X[~np.isfinite(X)] = 0.5
    np.clip(X, 0.0, 1.0, out=X)
    return X


def _pad64(n: int) -> int:
    return -(-n // 64) * 64


class Scorer:
    """Val matrix in the fast layout and the vectorised per-round scores.

    Columns: the n1 fake samples, padding up to a multiple of 64, the n0 real samples, padding.
    ``Z`` holds the probabilities signed by class: ``+p`` for fakes, ``-p`` for reals, 0 in padding.
    ``S`` (same layout, unsigned) is the running sum of the selected candidates; after ``t`` rounds
    the next ensemble with candidate c is ``(S + p_c) / (t + 1)``. With the sign trick both
    "is the prediction right" and "probability of the true class" are a single elementwise op.
    """

    def __init__(self, P_val: np.ndarray, y_val: np.ndarray, metric: str):
        pos, neg = np.flatnonzero(y_val == 1), np.flatnonzero(y_val == 0)
        self.n1, self.n0, self.n = len(pos), len(neg), len(y_val)
        self.off = _pad64(self.n1)  # first real column
        self.width = self.off + _pad64(self.n0)
        self.fake = slice(0, self.n1)
        self.real = slice(self.off, self.off + self.n0)
        C = P_val.shape[0]
        self.finite = np.isfinite(P_val).all(axis=1)
        Z = np.zeros((C, self.width), dtype=np.float32)
        Z[:, self.fake] = P_val[:, pos]
        Z[:, self.real] = P_val[:, neg]
        Z[~np.isfinite(Z)] = 0.5
        np.clip(Z, 0.0, 1.0, out=Z)
        Z[:, self.real] *= -1
        self.Z = Z
        self.rows = max(1, CHUNK_ELEMENTS // self.width)
        self.metric = metric

    def probs(self, i: int) -> np.ndarray:
        """Sanitised probabilities of candidate i in the layout (unsigned, padding 0)."""
        return np.abs(self.Z[i])

    def valid(self, v: np.ndarray) -> np.ndarray:
        """Drop the padding columns (last axis): fakes first, then reals."""
        return np.concatenate([v[..., self.fake], v[..., self.real]], axis=-1)

    def labels(self) -> np.ndarray:
        """The val labels in the order of :meth:`valid`: n1 ones, then n0 zeros."""
        return np.r_[np.ones(self.n1, np.int8), np.zeros(self.n0, np.int8)]

    def _blocks(self, idx: np.ndarray):
        """(a, b, rows of Z for idx[a:b]); slices (no copy) when idx is every candidate."""
        every = len(idx) == self.Z.shape[0]
        for a in range(0, len(idx), self.rows):
            b = min(len(idx), a + self.rows)
            yield a, b, (self.Z[a:b] if every else self.Z[idx[a:b]])

    # -- scores of the ensemble (S + p_c) / (t + 1) for every c in idx
    def accuracy(self, S: np.ndarray, t: int, idx: np.ndarray) -> np.ndarray:
        """Fake right iff S + p >= thr (t+1), i.e. Z >= thr (t+1) - S; real right iff
        S + p < thr (t+1), i.e. Z = -p > S - thr (t+1) (>= its next float up). Bits are
        packed 64 samples a word and pop-counted."""
        cut = np.float32(THRESHOLD * (t + 1))
        v = np.full(self.width, np.inf, dtype=np.float32)  # padding never counts
        v[self.fake] = cut - S[self.fake]
        v[self.real] = np.nextafter(S[self.real] - cut, np.float32(np.inf))
        correct = np.empty(len(idx), dtype=np.int64)
        buf = np.empty((self.rows, self.width), dtype=bool)
        for a, b, block in self._blocks(idx):
            right = np.greater_equal(block, v, out=buf[: b - a])
            if hasattr(np, "bitwise_count"):
                ones = np.bitwise_count(np.packbits(right, axis=1).view(np.uint64))
                correct[a:b] = ones.sum(axis=1, dtype=np.int64)
            else:  # numpy < 2.0
                correct[a:b] = np.count_nonzero(right, axis=1)
        return correct / self.n

    def log_loss(self, S: np.ndarray, t: int, idx: np.ndarray) -> np.ndarray:
        """Mean cross-entropy. (t+1) x probability of the true class is Z + shift with shift = S
        for fakes and t + 1 - S for reals; it is clipped below at EPS (t+1) like metrics.log_loss
        (the upper clip, worth < 1e-7, is skipped) and four values are multiplied before one log
        (each factor is in [EPS, 1] x (t+1): no under/overflow in float32)."""
        shift = np.ones(self.width, dtype=np.float32)  # padding: Z = 0 -> factor 1
        shift[self.fake] = S[self.fake]
        shift[self.real] = (t + 1) - S[self.real]
        lo = np.float32(EPS * (t + 1))
        half, quarter = self.width // 2, self.width // 4
        buf = np.empty((self.rows, self.width), dtype=np.float32)
        out = np.empty(len(idx), dtype=np.float64)
        for a, b, block in self._blocks(idx):
            g = np.add(block, shift, out=buf[: b - a])
            np.maximum(g, lo, out=g)
            np.multiply(g[:, :half], g[:, half:], out=g[:, :half])
            h = np.multiply(g[:, :quarter], g[:, quarter:half], out=g[:, :quarter])
            np.log(h, out=h)
            out[a:b] = h.sum(axis=1)
        return math.log(t + 1) - out / self.n

    def roc_auc(self, S: np.ndarray, t: int, idx: np.ndarray) -> np.ndarray:
        """Rank-based AUC: (sum of the fakes' ranks - n1 (n1 + 1) / 2) / (n1 n0), ties averaged."""
        from scipy.stats import rankdata

        out = np.empty(len(idx), dtype=np.float64)
        for a, b, block in self._blocks(idx):
            q = np.abs(block) + S
            r = rankdata(self.valid(q), axis=1)  # fakes are the first n1 columns
            out[a:b] = (r[:, : self.n1].sum(axis=1) - self.n1 * (self.n1 + 1) / 2) / (self.n1 * self.n0)
        return out

    def scores(self, S, t, idx) -> np.ndarray:
        """Higher is better (log loss is negated)."""
        if self.metric == "accuracy":
            return self.accuracy(S, t, idx)
        if self.metric == "log_loss":
            return -self.log_loss(S, t, idx)
        return self.roc_auc(S, t, idx)

    def pick(self, S, t, idx: np.ndarray, chosen: np.ndarray) -> int:
        """Best candidate of ``idx`` (ascending): best score, then lower log loss, then already in
        the ensemble (``chosen`` mask), then lowest index."""
        sc = self.scores(S, t, idx)
        tied = idx[sc == sc.max()]
        if len(tied) > 1 and self.metric != "log_loss":
            ll = self.log_loss(S, t, tied)
            tied = tied[ll == ll.min()]
        inside = tied[chosen[tied]]
        return int(inside[0] if len(inside) else tied[0])
