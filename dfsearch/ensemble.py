"""Greedy ensemble selection (Caruana et al. 2004) on the prediction store.

The pipeline, one function each:

``align(preds) -> Pool``
    Long contract frame (see ``dfsearch.store``) -> per split a dense matrix ``P[split]`` of shape
    (n_candidates, n_samples), labels ``y[split]`` and ``sample_ids[split]``. Candidates and samples
    are sorted by name, so the same store always gives the same matrices.
``select(P_val, y_val, top_k=..., rounds=..., metric=...) -> Selection``
    Forward greedy selection *with replacement* on val: each round adds the candidate whose
    addition gives the best ensemble score. At most ``top_k`` distinct members; the returned
    weights are those of the best prefix of the trajectory, not of the last round.
``evaluate(pool, selection, top_k) -> dict``
    Val and test metrics of the ensemble, the best single candidate and the naive average of the
    top-k candidates. Only val is ever used to choose; test is only reported.
``run_ensemble(predictions_dir, ..., out_dir) -> dict``
    All of the above on a store folder; writes ``ensemble.json`` and three PNG plots.

Probabilities that are NaN or infinite are kept in the pool but count as 0.5 wherever a score is
computed, and a candidate with any non-finite val probability is never selected.
Probabilities outside [0, 1] are clipped into it for scoring.

Speed: every round scores all allowed candidates at once, in chunks of candidates to bound memory
(no Python loop over samples or, within a chunk, over candidates). The val matrix is reordered once
(fake samples first, then real ones, each block padded to a multiple of 64 columns) and signed
(+p for fakes, -p for reals). Accuracy is then one comparison per element against a per-sample
threshold derived from the running sum, bit-packed and pop-counted; log loss is one add, one clip,
and one log per four elements. 500 candidates x 40k samples x 50 rounds: ~0.1-0.3 s for accuracy
on 2 cores (bench/bench_ensemble.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dfsearch.errors import DfsearchError
from dfsearch.metrics import EPS, binary_metrics
from dfsearch.metrics import accuracy as _accuracy
from dfsearch.metrics import log_loss as _log_loss
from dfsearch.metrics import roc_auc as _roc_auc
from dfsearch.store import SPLITS, read_candidates, read_predictions

METRICS = ("accuracy", "log_loss", "roc_auc")
THRESHOLD = 0.5
CHUNK_ELEMENTS = 1 << 21  # candidates x samples scored at once (~8 MB of float32)
_SHOW = 3  # how many names / ids an error message lists


def _names(items, limit: int = _SHOW) -> str:
    items = list(items)
    shown = ", ".join(repr(str(x)) for x in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------
# align


@dataclass
class Pool:
    """Dense, aligned predictions. ``P[split][i, j]`` = probability of fake that candidate
    ``candidates[i]`` gives sample ``sample_ids[split][j]``; ``y[split][j]`` its label (1 = fake)."""

    candidates: list[str]
    P: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    sample_ids: dict[str, np.ndarray]

    def subset(self, indices) -> "Pool":
        """The pool restricted to ``indices`` (kept in candidate-name order)."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))
        return Pool(
            candidates=[self.candidates[i] for i in idx],
            P={s: self.P[s][idx] for s in self.P},
            y=dict(self.y),
            sample_ids=dict(self.sample_ids),
        )


def _sorted_codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, uniques) with uniques sorted; hash-based, so fast on millions of strings."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object).astype(str).astype(object)


def align(preds: pd.DataFrame) -> Pool:
    """Build the dense :class:`Pool` from a contract-shaped predictions frame.

    Raises DfsearchError for: an empty frame, a missing ``val`` or ``test`` split, candidates that
    appear in one split but not the other, candidates whose sample_id sets differ within a split,
    duplicated (candidate, split, sample_id) rows, and candidates that disagree on a label.
    """
    need = ["candidate", "split", "sample_id", "label", "prob_fake"]
    missing_cols = [c for c in need if c not in preds.columns]
    if missing_cols:
        raise DfsearchError(f"predictions frame lacks column(s) {missing_cols}; the contract needs {need}")
    if len(preds) == 0:
        raise DfsearchError("empty pool: the predictions contain no rows; need at least one candidate "
                            "with val and test predictions")
    present = set(preds["split"].unique())
    bad = sorted(map(str, present - set(SPLITS)))
    if bad:
        raise DfsearchError(f"split values {bad} are not accepted; use {list(SPLITS)}")
    for split in SPLITS:
        if split not in present:
            raise DfsearchError(f"missing {split!r} split: no predictions have split == {split!r}; the "
                                f"ensembler needs both 'val' (to select) and 'test' (to report)")
    per_split = {s: set(preds.loc[preds["split"] == s, "candidate"].unique()) for s in SPLITS}
    for a, b in (("val", "test"), ("test", "val")):
        only = sorted(map(str, per_split[a] - per_split[b]))
        if only:
            raise DfsearchError(f"candidate(s) {_names(only)} have {a!r} predictions but no {b!r} "
                                f"predictions; every candidate needs both splits")
    candidates = sorted(map(str, per_split["val"]))
    cand_index = {c: i for i, c in enumerate(candidates)}
    C = len(candidates)

    P, y, ids = {}, {}, {}
    for split in SPLITS:
        df = preds[preds["split"] == split]
        cc, cu = _sorted_codes(df["candidate"])
        ci = np.array([cand_index[str(c)] for c in cu], dtype=np.int64)[cc]
        si, uniq = _sorted_codes(df["sample_id"])
        n = len(uniq)
        flat = ci * n + si
        seen = np.zeros(C * n, dtype=bool)
        seen[flat] = True
        if int(seen.sum()) != len(flat):
            order = np.argsort(flat, kind="stable")
            dup = order[np.flatnonzero(np.diff(flat[order]) == 0)[0] + 1]
            raise DfsearchError(f"split {split!r}: candidate {candidates[ci[dup]]!r} has sample "
                                f"{uniq[si[dup]]!r} twice; each (candidate, split, sample_id) must "
                                f"appear once")
        seen = seen.reshape(C, n)
        lacking = np.flatnonzero(~seen.all(axis=1))
        if len(lacking):
            parts = []
            for i in lacking[:_SHOW]:
                miss = uniq[~seen[i]]
                parts.append(f"candidate {candidates[i]!r} lacks {len(miss)} sample_id(s) "
                             f"e.g. {_names(miss)}")
            more = f"; {len(lacking) - _SHOW} more candidate(s) too" if len(lacking) > _SHOW else ""
            raise DfsearchError(f"split {split!r}: candidates do not predict the same sample_ids: "
                                + "; ".join(parts) + more
                                + f". Every candidate must predict every {split} sample "
                                  f"({n} distinct sample_ids in this split)")
        labels = np.empty((C, n), dtype=np.int8)
        labels[ci, si] = df["label"].to_numpy(dtype=np.int8)
        bad_labels = sorted(set(np.unique(labels).tolist()) - {0, 1})
        if bad_labels:
            raise DfsearchError(f"split {split!r}: label values {bad_labels} are not accepted; use 0 "
                                f"(real) or 1 (fake)")
        disagree = np.flatnonzero((labels != labels[0]).any(axis=0))
        if len(disagree):
            j = disagree[0]
            says = {}
            for i in range(C):
                says.setdefault(int(labels[i, j]), []).append(candidates[i])
            detail = "; ".join(f"{_names(v)} say{'s' if len(v) == 1 else ''} {k}" for k, v in sorted(says.items()))
            raise DfsearchError(f"split {split!r}: candidates disagree on the label of sample "
                                f"{uniq[j]!r} ({detail}); {len(disagree)} sample(s) affected. "
                                f"Labels must be identical across candidates")
        probs = np.empty((C, n), dtype=np.float32)
        probs[ci, si] = df["prob_fake"].to_numpy(dtype=np.float32)
        P[split], y[split], ids[split] = probs, labels[0].copy(), uniq
    return Pool(candidates=candidates, P=P, y=y, sample_ids=ids)


# --------------------------------------------------------------------------------------------
# select


@dataclass
class Selection:
    """Result of :func:`select`.

    ``weights``: candidate index -> weight (selection count / ``best_round``; sums to 1).
    ``counts``: candidate index -> how often it was added within the best prefix.
    ``trajectory``: one dict per round: ``round`` (1-based), ``candidate`` (index added),
    ``val_score`` (the chosen metric of the ensemble after that round), ``val_log_loss``.
    ``best_round``: length of the kept prefix (best val score; ties -> the shortest prefix).
    """

    weights: dict[int, float]
    counts: dict[int, int]
    trajectory: list[dict]
    best_round: int
    metric: str
    top_k: int
    excluded: list[int] = field(default_factory=list)  # candidates with non-finite val probabilities


def _check_args(top_k, rounds, metric) -> None:
    if metric not in METRICS:
        raise DfsearchError(f"metric {metric!r} is not supported; use one of {list(METRICS)}")
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise DfsearchError(f"top_k must be an integer >= 1 (the most distinct members), got {top_k!r}")
    if not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise DfsearchError(f"rounds must be an integer >= 1 (greedy selection steps), got {rounds!r}")


def _sanitize(P: np.ndarray) -> np.ndarray:
    """float32 copy with non-finite values -> 0.5 and everything clipped into [0, 1]."""
    X = np.array(P, dtype=np.float32, copy=True)
    X[~np.isfinite(X)] = 0.5
    np.clip(X, 0.0, 1.0, out=X)
    return X


def _pad64(n: int) -> int:
    return -(-n // 64) * 64


class _Scorer:
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


def _metric_value(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    return {"accuracy": _accuracy, "log_loss": _log_loss, "roc_auc": _roc_auc}[metric](y, p)


def _check_matrix(P_val, y_val) -> tuple[np.ndarray, np.ndarray]:
    P = np.asarray(P_val)
    y = np.asarray(y_val)
    if P.ndim != 2 or P.shape[0] == 0:
        raise DfsearchError(f"empty pool: need a (n_candidates >= 1, n_samples) matrix of val "
                            f"probabilities, got shape {P.shape}")
    if P.shape[1] == 0 or y.shape != (P.shape[1],):
        raise DfsearchError(f"val labels have shape {y.shape} but the probabilities have {P.shape[1]} "
                            f"samples; need one 0/1 label per sample (and at least one sample)")
    if not np.isin(y, (0, 1)).all():
        raise DfsearchError(f"val labels {sorted(set(np.unique(y).tolist()) - {0, 1})} are not "
                            f"accepted; use 0 (real) or 1 (fake)")
    return P, y.astype(np.int8)


def select(P_val, y_val, *, top_k: int, rounds: int = 50, metric: str = "accuracy") -> Selection:
    """Caruana-style forward greedy ensemble selection with replacement, on val only.

    Each round adds the candidate c maximising the score of ``(running_sum + P_val[c]) / (t + 1)``
    (``metric``: "accuracy" or "roc_auc" maximised, "log_loss" minimised). Ties: lower log loss,
    then a candidate already in the ensemble, then the lowest index. Once ``top_k`` distinct
    candidates are in, only they can be added again. Candidates with any non-finite val probability
    are never added. The returned weights are those of the best prefix of the ``rounds`` steps.
    """
    _check_args(top_k, rounds, metric)
    P, y = _check_matrix(P_val, y_val)
    if metric == "roc_auc" and len(np.unique(y)) < 2:
        raise DfsearchError("metric 'roc_auc' needs both classes (0 and 1) in the val labels; use "
                            "'accuracy' or 'log_loss'")
    scorer = _Scorer(P, y, metric)
    eligible = np.flatnonzero(scorer.finite)
    if len(eligible) == 0:
        raise DfsearchError(f"no candidate can be selected: all {P.shape[0]} have NaN or infinite "
                            f"val probabilities; need at least one with finite probabilities")
    C = P.shape[0]
    y_v = np.r_[np.ones(scorer.n1, np.int8), np.zeros(scorer.n0, np.int8)]  # labels, layout order
    S = np.zeros(scorer.width, dtype=np.float32)  # running sum, fast (float32) path
    S64 = np.zeros(scorer.n, dtype=np.float64)  # running sum, exact path for the trajectory
    counts = np.zeros(C, dtype=np.int64)
    trajectory = []
    for t in range(rounds):
        chosen = counts > 0
        allowed = np.flatnonzero(chosen) if chosen.sum() >= top_k else eligible
        c = scorer.pick(S, t, allowed, chosen)
        counts[c] += 1
        p_c = scorer.probs(c)
        S += p_c
        S64 += scorer.valid(p_c)
        p = S64 / (t + 1)
        trajectory.append({
            "round": t + 1,
            "candidate": c,
            "val_score": _metric_value(metric, y_v, p),
            "val_log_loss": _log_loss(y_v, p),
        })
    vals = np.array([r["val_score"] for r in trajectory])
    best = int(np.argmin(vals) if metric == "log_loss" else np.argmax(vals))  # first = shortest
    best_counts: dict[int, int] = {}
    for r in trajectory[: best + 1]:
        best_counts[r["candidate"]] = best_counts.get(r["candidate"], 0) + 1
    n_rounds = best + 1
    return Selection(
        weights={i: k / n_rounds for i, k in sorted(best_counts.items())},
        counts=dict(sorted(best_counts.items())),
        trajectory=trajectory,
        best_round=n_rounds,
        metric=metric,
        top_k=int(top_k),
        excluded=np.flatnonzero(~scorer.finite).tolist(),
    )


# --------------------------------------------------------------------------------------------
# evaluate


def rank_candidates(P_val, y_val, metric: str = "accuracy") -> np.ndarray:
    """Candidate indices, best individual val score first (ties: lower log loss, lower index).
    Candidates with non-finite val probabilities come last."""
    if metric not in METRICS:
        raise DfsearchError(f"metric {metric!r} is not supported; use one of {list(METRICS)}")
    P, y = _check_matrix(P_val, y_val)
    scorer = _Scorer(P, y, "accuracy" if metric == "roc_auc" and len(np.unique(y)) < 2 else metric)
    idx = np.arange(P.shape[0])
    S = np.zeros(scorer.width, dtype=np.float32)
    score = scorer.scores(S, 0, idx)
    loss = -score if metric == "log_loss" else scorer.log_loss(S, 0, idx)
    return np.lexsort((idx, loss, -score, ~scorer.finite))


def blend(P: np.ndarray, weights: dict[int, float]) -> np.ndarray:
    """Weighted average of candidate rows (non-finite -> 0.5, clipped to [0, 1]), float64."""
    out = np.zeros(P.shape[1], dtype=np.float64)
    total = sum(weights.values())
    for i, w in sorted(weights.items()):
        out += w * _sanitize(P[i]).astype(np.float64)
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


# --------------------------------------------------------------------------------------------
# run_ensemble


def _jsonable(x):
    """NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _plots(out_dir: Path, pool: Pool, selection: Selection, result: dict) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, renders with Agg
    from sklearn.metrics import roc_curve

    y = pool.y["test"]
    # ROC on test: ensemble vs each member
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    if len(np.unique(y)) == 2:
        for i in selection.weights:
            fpr, tpr, _ = roc_curve(y, blend(pool.P["test"], {i: 1.0}))
            ax.plot(fpr, tpr, lw=1, alpha=0.7, label=f"{pool.candidates[i]} (w={selection.weights[i]:.2f})")
        fpr, tpr, _ = roc_curve(y, blend(pool.P["test"], selection.weights))
        auc = result["ensemble"]["test"]["roc_auc"]
        ax.plot(fpr, tpr, lw=2.5, color="black", label=f"ensemble (AUC {auc:.3f})")
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.text(0.5, 0.5, "test has one class only: no ROC", ha="center")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on test")
    fig.tight_layout()
    fig.savefig(out_dir / "roc.png", dpi=110)

    # confusion matrix of the ensemble on test
    cm = np.asarray(result["ensemble"]["test"]["confusion_matrix"])
    fig = Figure(figsize=(4, 3.6))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"],
           xlabel="predicted", ylabel="true", title="ensemble, test")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png", dpi=110)

    # val score per round, best prefix marked
    traj = selection.trajectory
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    ax.plot([r["round"] for r in traj], [r["val_score"] for r in traj], marker=".")
    ax.axvline(selection.best_round, color="red", ls="--", label=f"best prefix: {selection.best_round}")
    ax.set(xlabel="round", ylabel=f"val {selection.metric}", title="greedy selection trajectory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "trajectory.png", dpi=110)


def run_ensemble(predictions_dir, *, top_k: int = 4, rounds: int = 50, metric: str = "accuracy",
                 nbest: int | None = None, out_dir) -> dict:
    """Select an ensemble from the store in ``predictions_dir`` and report it.

    ``nbest`` limits the pool to the N best candidates by individual val score first (like
    auto-sklearn's ``ensemble_nbest``). Writes ``out_dir/ensemble.json`` (the returned dict),
    ``roc.png``, ``confusion.png`` and ``trajectory.png``.
    """
    _check_args(top_k, rounds, metric)
    if nbest is not None and (not isinstance(nbest, (int, np.integer)) or nbest < 1):
        raise DfsearchError(f"nbest must be an integer >= 1 (pool size limit) or None, got {nbest!r}")
    pool = align(read_predictions(predictions_dir))
    if nbest is not None and nbest < len(pool.candidates):
        pool = pool.subset(rank_candidates(pool.P["val"], pool.y["val"], metric)[:nbest])
    selection = select(pool.P["val"], pool.y["val"], top_k=top_k, rounds=rounds, metric=metric)
    ev = evaluate(pool, selection, top_k)

    info = {}
    cands = read_candidates(predictions_dir)
    if cands is not None:
        for row in cands.itertuples(index=False):
            info[str(row.candidate)] = {"arch": row.arch, "checkpoint": row.checkpoint}
    members = [
        {"candidate": pool.candidates[i],
         "arch": info.get(pool.candidates[i], {}).get("arch"),
         "checkpoint": info.get(pool.candidates[i], {}).get("checkpoint"),
         "weight": w}
        for i, w in sorted(selection.weights.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    result = {
        "members": members,
        "metric": metric,
        "top_k": int(top_k),
        "rounds": int(rounds),
        "best_round": selection.best_round,
        "nbest": nbest,
        "pool_size": len(pool.candidates),
        "excluded_non_finite": [pool.candidates[i] for i in selection.excluded],
        "trajectory": [{**r, "candidate": pool.candidates[r["candidate"]]} for r in selection.trajectory],
        "ensemble": ev["ensemble"],
        "best_single": {k: v for k, v in ev["best_single"].items() if k != "index"},
        "naive_top_k": {k: v for k, v in ev["naive_top_k"].items() if k != "indices"},
        "source": str(predictions_dir),
    }
    result = _jsonable(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "ensemble.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "ensemble.json")
    _plots(out, pool, selection, result)
    return result


def format_summary(result: dict) -> str:
    """A short terminal summary of a :func:`run_ensemble` result."""
    lines = [f"ensemble: {len(result['members'])} member(s), metric {result['metric']}, "
             f"top_k {result['top_k']}, best prefix {result.get('best_round', '?')}/{result['rounds']} rounds"]
    for m in result["members"]:
        arch = f"  [{m['arch']}]" if m.get("arch") else ""
        lines.append(f"  {m['weight']:6.3f}  {m['candidate']}{arch}")

    def fmt(v):
        return "   n/a" if v is None else f"{v:6.4f}"

    lines.append(f"{'test':<28}{'accuracy':>10}{'roc_auc':>10}{'log_loss':>10}")
    rows = [("ensemble", result["ensemble"]["test"]),
            (f"best single ({result['best_single']['candidate']})", result["best_single"]["test"]),
            (f"naive top-{len(result['naive_top_k']['candidates'])} average", result["naive_top_k"]["test"])]
    for name, m in rows:
        name = name if len(name) <= 27 else name[:24] + "..."
        lines.append(f"{name:<28}{fmt(m['accuracy']):>10}{fmt(m['roc_auc']):>10}{fmt(m['log_loss']):>10}")
    return "\n".join(lines)
