"""Align the candidates' per-sample predictions into dense matrices.

``align(preds) -> Pool`` turns the long contract frame of ``dfsearch.store`` (one row per
candidate, split and sample) into, per split, ``P[split]`` of shape (n_candidates, n_samples),
labels ``y[split]`` and ``sample_ids[split]``. Candidates and samples are sorted by name, so the
same store always gives the same matrices. Every way the frame can fail the contract (a missing
split, a candidate without one split, differing sample sets, duplicates, disagreeing labels) is a
``DfsearchError`` that names the candidates and samples concerned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dfsearch.errors import DfsearchError
from dfsearch.store import SPLITS

_SHOW = 3  # how many names / ids an error message lists


def _names(items, limit: int = _SHOW) -> str:
    items = list(items)
    shown = ", ".join(repr(str(x)) for x in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


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
