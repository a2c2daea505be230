"""Which candidates may enter the ensemble pool: only those that beat chance on val.

A candidate at chance gives the ensemble nothing to use; averaged in, it only moves the blend's
decision threshold, and it is paid for on every image at predict time (issue #12: a ResNet-18 trial
stopped at chance, its val probabilities constant at 0.50 +- 0.003, took half the weight of a demo's
ensemble). auto-sklearn drops candidates that are no better than a dummy model for this reason
(Feurer et al. 2015, "Efficient and Robust Automated Machine Learning").

``screen(P_val, y_val, z=2.0, min_std=0.01) -> (keep, dropped)``
    ``keep``: indices of the candidates whose val ROC-AUC is more than ``z`` standard errors above
    0.5 and whose val probabilities are not near-constant (standard deviation >= ``min_std``: below
    it a member can only shift the threshold). ``dropped``: one dict per other candidate, with its
    ``index``, ``val_auc``, ``z``, ``std`` and ``reason``. Candidates with non-finite probabilities
    are kept here: ``selection.select`` never selects them and reports them itself.

The standard error is the AUC's under the null hypothesis AUC = 0.5, the Mann-Whitney statistic's:
sqrt((n_fake + n_real + 1) / (12 n_fake n_real)) (Hanley & McNeil 1982, "The meaning and use of
the area under a ROC curve"); 0.024 at 300 + 300 val images. One-sided at z = 2, a candidate at
chance passes about 2 % of the time.
"""

from __future__ import annotations

import math

import numpy as np

from dfsearch.metrics import roc_auc

DEFAULT_Z = 2.0
DEFAULT_MIN_STD = 0.01


def null_auc_se(y: np.ndarray) -> float:
    """Standard error of the ROC-AUC of a predictor at chance on labels ``y`` (1 = fake)."""
    n_pos = int(np.sum(y == 1))
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    return math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))


def screen(P_val: np.ndarray, y_val: np.ndarray, z: float = DEFAULT_Z,
           min_std: float = DEFAULT_MIN_STD) -> tuple[list[int], list[dict]]:
    """See the module docstring. With one class only in val, AUC is undefined: everything is kept."""
    se = null_auc_se(y_val)
    keep, dropped = [], []
    for i, p in enumerate(P_val):
        if not np.all(np.isfinite(p)) or math.isnan(se):
            keep.append(i)
            continue
        auc, std = roc_auc(y_val, p), float(np.std(p, dtype=np.float64))
        score = (auc - 0.5) / se
        if std < min_std:
            reason = f"near-constant val probabilities (std {std:.4f} < {min_std})"
        elif score <= z:
            reason = f"val AUC {auc:.3f} is not above chance (z {score:.1f} <= {z})"
        else:
            keep.append(i)
            continue
        dropped.append(dict(index=i, val_auc=auc, z=score, std=std, reason=reason))
    return keep, dropped
