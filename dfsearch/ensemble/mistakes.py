"""The ensemble's most confident mistakes, from the prediction store (no model is run).

``scored(store_dir, result, split)`` recomputes the calibrated ensemble P(fake) of every stored
sample as the ensemble command computed it (``evaluation.ensemble_probs``: each member's stored
probability through its own Platt map, the weighted average, the blend's Platt map; what
``dfsearch predict`` computes for a new image), and the decision at the stored threshold. ``confident_mistakes`` keeps the wrong ones, the most confident first: the images a user
should look at before trusting the detector (W&B's predictions table, the report).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dfsearch.ensemble.alignment import align
from dfsearch.ensemble.evaluation import ensemble_probs
from dfsearch.store import read_predictions


def scored(store_dir: str | Path, result: dict, split: str = "test") -> pd.DataFrame:
    """One row per ``split`` sample: ``sample_id``, ``label`` (1 = fake), ``prob_fake`` (the
    calibrated ensemble), ``predicted`` (1 = fake at the threshold), ``confidence`` (the
    probability given to the predicted class), and ``p_<member>`` (each member after its map)."""
    pool = align(read_predictions(store_dir))
    row = {c: i for i, c in enumerate(pool.candidates)}
    members, cal = result["members"], result["calibration"]
    prob, _, per_member = ensemble_probs(pool.P[split][[row[m["candidate"]] for m in members]], members, cal)
    predicted = (prob >= cal["threshold"]).astype(int)
    out = {"sample_id": pool.sample_ids[split], "label": pool.y[split].astype(int),
           **{f"p_{m['candidate']}": per_member[i].astype(np.float64) for i, m in enumerate(members)}}
    df = pd.DataFrame(out)
    df.insert(2, "prob_fake", prob)
    df.insert(3, "predicted", predicted)
    df.insert(4, "confidence", np.where(predicted == 1, prob, 1 - prob))
    return df


def confident_mistakes(store_dir: str | Path, result: dict, split: str = "test", n: int = 16) -> pd.DataFrame:
    """The ``n`` wrong predictions of ``split`` with the highest confidence (``scored``'s rows)."""
    df = scored(store_dir, result, split)
    wrong = df[df.predicted != df.label]
    return wrong.sort_values("confidence", ascending=False, kind="stable").head(n).reset_index(drop=True)
