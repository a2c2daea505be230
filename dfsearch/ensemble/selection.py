"""Greedy ensemble selection on val: Caruana, Niculescu-Mizil, Crew and Ksikes, "Ensemble selection
from libraries of models", ICML 2004.

``select(P_val, y_val, top_k=..., rounds=..., metric=...) -> Selection``
    Forward selection *with replacement*: each round adds the candidate whose addition gives the
    best ensemble score (``scorer.Scorer`` scores all allowed candidates at once). At most
    ``top_k`` distinct members; the returned weights are those of the best prefix of the
    trajectory, not of the last round. A candidate with any non-finite val probability is never
    selected.
``rank_candidates(P_val, y_val, metric) -> indices``
    Candidates by their own val score, best first (the pool limit ``nbest`` and the baselines).

Each round's trajectory entry (the chosen metric and the log loss of the ensemble so far) is
computed in float64 with ``dfsearch.metrics`` (whose log_loss / accuracy are numpy, for speed
here; the reason is at their definition). Speed, 500 candidates x 40k val samples x 50 rounds on
2 cores: 0.11 s (accuracy, top_k 4) to 0.84 s (log_loss, top_k 50); BENCHMARKS.md section 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dfsearch import metrics as M
from dfsearch.ensemble import METRICS
from dfsearch.ensemble.scorer import Scorer
from dfsearch.errors import DfsearchError


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


def check_args(top_k, rounds, metric) -> None:
    """DfsearchError unless ``metric`` is one of METRICS and ``top_k``, ``rounds`` are ints >= 1."""
    if metric not in METRICS:
        raise DfsearchError(f"metric {metric!r} is not supported; use one of {list(METRICS)}")
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise DfsearchError(f"top_k must be an integer >= 1 (the most distinct members), got {top_k!r}")
    if not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise DfsearchError(f"rounds must be an integer >= 1 (greedy selection steps), got {rounds!r}")


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


def _round_scores(metric: str, y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(val score of ``metric``, val log loss) of one ensemble's probabilities ``p``."""
    loss = M.log_loss(y, p)
    if metric == "log_loss":
        return loss, loss
    return (M.accuracy(y, p) if metric == "accuracy" else M.roc_auc(y, p)), loss


def select(P_val, y_val, *, top_k: int, rounds: int = 50, metric: str = "accuracy") -> Selection:
    """Caruana-style forward greedy ensemble selection with replacement, on val only.

    Each round adds the candidate c maximising the score of ``(running_sum + P_val[c]) / (t + 1)``
    (``metric``: "accuracy" or "roc_auc" maximised, "log_loss" minimised). Ties: lower log loss,
    then a candidate already in the ensemble, then the lowest index. Once ``top_k`` distinct
    candidates are in, only they can be added again. Candidates with any non-finite val probability
    are never added. The returned weights are those of the best prefix of the ``rounds`` steps.
    """
    check_args(top_k, rounds, metric)
    P, y = _check_matrix(P_val, y_val)
    if metric == "roc_auc" and len(np.unique(y)) < 2:
        raise DfsearchError("metric 'roc_auc' needs both classes (0 and 1) in the val labels; use "
                            "'accuracy' or 'log_loss'")
    scorer = Scorer(P, y, metric)
    eligible = np.flatnonzero(scorer.finite)
    if len(eligible) == 0:
        raise DfsearchError(f"no candidate can be selected: all {P.shape[0]} have NaN or infinite "
                            f"val probabilities; need at least one with finite probabilities")
    C = P.shape[0]
    y_v = scorer.labels()
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
        score, loss = _round_scores(metric, y_v, S64 / (t + 1))
        trajectory.append({"round": t + 1, "candidate": c, "val_score": score, "val_log_loss": loss})
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


def rank_candidates(P_val, y_val, metric: str = "accuracy") -> np.ndarray:
    """Candidate indices, best individual val score first (ties: lower log loss, lower index).
    Candidates with non-finite val probabilities come last."""
    if metric not in METRICS:
        raise DfsearchError(f"metric {metric!r} is not supported; use one of {list(METRICS)}")
    P, y = _check_matrix(P_val, y_val)
    scorer = Scorer(P, y, "accuracy" if metric == "roc_auc" and len(np.unique(y)) < 2 else metric)
    idx = np.arange(P.shape[0])
    S = np.zeros(scorer.width, dtype=np.float32)
    score = scorer.scores(S, 0, idx)
    loss = -score if metric == "log_loss" else scorer.log_loss(S, 0, idx)
    return np.lexsort((idx, loss, -score, ~scorer.finite))
