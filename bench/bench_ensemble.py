"""Benchmark greedy ensemble selection (``dfsearch.ensemble.select``).

    .venv/bin/python bench/bench_ensemble.py              # 500 candidates x 40k val samples x 50 rounds
    .venv/bin/python bench/bench_ensemble.py --repeat 1 --candidates 100

Times ``select`` for metric accuracy and log_loss with top_k 4 and 50, then runs a naive reference
(a Python loop over candidates calling sklearn's accuracy_score, every round) next to ``select``
on a smaller problem and prints the speed ratio. Target: <= 1 s for the 500 x 40k x 50 accuracy case.
Last, what scoring each round's trajectory entry with sklearn's log_loss / accuracy_score would cost
against the numpy ones ``dfsearch.metrics`` keeps: ``select`` both ways side by side (interleaved),
and the metric calls alone.

The synthetic pool looks like real detector outputs: every candidate sees the same per-sample
difficulty (so candidates are correlated and make similar mistakes), plus its own skill and noise.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types
from unittest import mock

import numpy as np

from dfsearch.ensemble import select


def make_pool(n_candidates: int, n_samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n_samples) < 0.5).astype(np.int8)
    sign = np.where(y == 1, 1.0, -1.0).astype(np.float32)
    difficulty = rng.standard_normal(n_samples, dtype=np.float32)  # shared by every candidate
    skill = rng.uniform(0.5, 2.0, (n_candidates, 1)).astype(np.float32)
    logits = rng.standard_normal((n_candidates, n_samples), dtype=np.float32)  # own noise
    logits *= 1.5
    logits += skill * sign + 1.2 * difficulty * sign
    P = 1.0 / (1.0 + np.exp(-logits))
    return P.astype(np.float32), y


def naive_select(P: np.ndarray, y: np.ndarray, top_k: int, rounds: int) -> list[float]:
    """The textbook loop: for every round, for every candidate, score the blended ensemble."""
    from sklearn.metrics import accuracy_score

    running = np.zeros(P.shape[1])
    chosen: list[int] = []
    scores = []
    for t in range(rounds):
        allowed = sorted(set(chosen)) if len(set(chosen)) >= top_k else range(P.shape[0])
        best, best_score = -1, -1.0
        for c in allowed:
            s = accuracy_score(y, (running + P[c]) / (t + 1) >= 0.5)
            if s > best_score:
                best, best_score = c, s
        chosen.append(best)
        running += P[best]
        scores.append(best_score)
    return scores


def timed(fn, repeat: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--samples", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-size", type=int, nargs=3, default=[100, 10_000, 10],
                    metavar=("CANDIDATES", "SAMPLES", "ROUNDS"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    P, y = make_pool(args.candidates, args.samples)
    print(f"pool: {args.candidates} candidates x {args.samples} val samples, {args.rounds} rounds "
          f"(made in {time.perf_counter() - t0:.1f} s); best of {args.repeat}")
    results = {}
    for metric in ("accuracy", "log_loss"):
        for top_k in (4, 50):
            best, med, sel = timed(
                lambda: select(P, y, top_k=top_k, rounds=args.rounds, metric=metric), args.repeat)
            results[(metric, top_k)] = best
            score = sel.trajectory[sel.best_round - 1]["val_score"]
            print(f"  select metric={metric:<8} top_k={top_k:<3} {best:6.3f} s (median {med:.3f})  "
                  f"best round {sel.best_round:>2}, {len(sel.weights):>2} members, val {metric} {score:.4f}")

    c, n, r = args.naive_size
    Ps, ys = P[:c, :n], y[:n]
    # top_k = rounds: every round scores every candidate, in both implementations
    fast, _, sel = timed(lambda: select(Ps, ys, top_k=r, rounds=r), args.repeat)
    slow, _, naive_scores = timed(lambda: naive_select(Ps, ys, r, r), 1)
    ours = max(s["val_score"] for s in sel.trajectory)
    print(f"naive reference ({c} x {n} x {r}, accuracy, top_k {r}): naive {slow:.3f} s, select {fast:.4f} s "
          f"-> {slow / fast:.0f}x faster (best val accuracy: naive {max(naive_scores):.4f}, select {ours:.4f})")
    acc = ", ".join(f"top_k {k}: {results[('accuracy', k)]:.3f} s" for k in (4, 50))
    ll = ", ".join(f"top_k {k}: {results[('log_loss', k)]:.3f} s" for k in (4, 50))
    verdict = "OK" if results[("accuracy", 4)] <= 1 and results[("accuracy", 50)] <= 1 else "SLOW"
    print(f"RESULT select {args.candidates}x{args.samples}x{args.rounds}: accuracy [{acc}] "
          f"log_loss [{ll}]; naive ratio {slow / fast:.0f}x; target <= 1 s for accuracy: {verdict}")
    trajectory_metrics(P, y, args.rounds, args.repeat)


def _sklearn_metrics():
    """sklearn's ``log_loss`` (same clipping at EPS first) and ``accuracy_score``, as a stand-in for
    the numpy ``dfsearch.metrics.log_loss`` / ``accuracy`` inside ``select``."""
    from sklearn import metrics as skm

    from dfsearch import metrics as M

    def log_loss(y, p):
        q = np.clip(np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.5), M.EPS, 1 - M.EPS)
        return float(skm.log_loss(y, q, labels=[0, 1]))

    def accuracy(y, p, threshold=0.5):
        return float(skm.accuracy_score(np.asarray(y) == 1, np.asarray(p) >= threshold))

    return types.SimpleNamespace(log_loss=log_loss, accuracy=accuracy, roc_auc=M.roc_auc, EPS=M.EPS)


def trajectory_metrics(P: np.ndarray, y: np.ndarray, rounds: int, repeat: int) -> None:
    """Each round ``select`` scores its trajectory entry (val metric + val log loss of the ensemble
    so far, float64) with ``dfsearch.metrics`` (numpy ``log_loss`` / ``accuracy``). Side by side in
    this run, repetitions interleaved: ``select`` as it is, and ``select`` with sklearn's
    ``log_loss`` / ``accuracy_score`` swapped in; then the two metric calls alone, ``rounds`` times."""
    from dfsearch import metrics as M
    from dfsearch.ensemble import selection

    sk_m = _sklearn_metrics()
    rng = np.random.default_rng(0)
    yy = rng.integers(0, 2, P.shape[1])
    pp = np.clip(yy * 0.6 + rng.normal(0.2, 0.25, P.shape[1]), 0, 1)
    got, want = (M.log_loss(yy, pp), M.accuracy(yy, pp)), (sk_m.log_loss(yy, pp), sk_m.accuracy(yy, pp))
    assert np.allclose(got, want, rtol=1e-12, atol=0), (got, want)

    for top_k in (4, 50):
        times: dict[str, list[float]] = {"sklearn": [], "numpy": []}
        sels = {}
        for _ in range(repeat):
            for name in times:
                with mock.patch.object(selection, "M", sk_m if name == "sklearn" else M):
                    t0 = time.perf_counter()
                    sels[name] = selection.select(P, y, top_k=top_k, rounds=rounds, metric="accuracy")
                    times[name].append(time.perf_counter() - t0)
        same = sels["sklearn"].weights == sels["numpy"].weights and np.allclose(
            [r["val_log_loss"] for r in sels["sklearn"].trajectory],
            [r["val_log_loss"] for r in sels["numpy"].trajectory], rtol=1e-12, atol=0)
        sk, nu = min(times["sklearn"]), min(times["numpy"])
        print(f"RESULT trajectory metrics: select accuracy top_k {top_k} {P.shape[0]}x{P.shape[1]}x{rounds}: "
              f"sklearn {sk:.3f} s vs numpy {nu:.3f} s ({sk / nu:.2f}x; medians "
              f"{statistics.median(times['sklearn']):.3f} / {statistics.median(times['numpy']):.3f}; "
              f"same selection and trajectory: {same})")
    t_sk, _, _ = timed(lambda: [(sk_m.log_loss(yy, pp), sk_m.accuracy(yy, pp)) for _ in range(rounds)], repeat)
    t_np, _, _ = timed(lambda: [(M.log_loss(yy, pp), M.accuracy(yy, pp)) for _ in range(rounds)], repeat)
    print(f"RESULT trajectory metrics alone ({rounds} x log_loss + accuracy on {P.shape[1]} samples): "
          f"sklearn {t_sk:.3f} s vs numpy {t_np:.3f} s ({t_sk / t_np:.1f}x; the same values)")


if __name__ == "__main__":
    main()
