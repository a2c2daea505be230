"""One ensemble from a store folder, end to end, and its terminal summary.

``run_ensemble(predictions_dir, top_k=, rounds=, metric=, nbest=, chance_z=, target_fpr=, out_dir=)``
reads the store (``dfsearch.store``), aligns it, leaves out the candidates at chance on val
(``screening.screen``), optionally keeps the ``nbest`` best of the rest, selects, evaluates,
calibrates the blend and picks its threshold on val (``evaluation.calibrate_blend``),
writes ``out_dir/ensemble.json`` (atomically) and the plots, and returns the JSON-ready dict.
``summary.format_summary(result)`` is the short table the ``ensemble`` command prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dfsearch.ensemble import check_target_fpr
from dfsearch.ensemble.alignment import align
from dfsearch.ensemble.calibration import calibrate_pool
from dfsearch.ensemble.evaluation import calibrate_blend, compare, evaluate
from dfsearch.ensemble.plots import write_plots
from dfsearch.ensemble.screening import DEFAULT_Z, screen
from dfsearch.ensemble.selection import check_args, rank_candidates, select
from dfsearch.errors import DfsearchError
from dfsearch.store import read_candidates, read_predictions


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


def run_ensemble(predictions_dir, *, top_k: int = 4, rounds: int = 50, metric: str = "accuracy",
                 nbest: int | None = None, chance_z: float | None = DEFAULT_Z, target_fpr: float | None = None,
                 n_boot: int = 1000, cost: bool = True, calibrate_candidates: bool = True, out_dir) -> dict:
    """Select an ensemble from the store in ``predictions_dir`` and report it.

    ``nbest`` limits the pool to the N best candidates by individual val score first (like
    auto-sklearn's ``ensemble_nbest``). ``chance_z``: a candidate enters the pool only if its val AUC
    is more than ``chance_z`` null standard errors above 0.5 and its val probabilities are not
    near-constant (``screening``); None keeps every candidate. ``calibrate_candidates``: each
    candidate is Platt-scaled on val before selection (its map stored with it in ``members``, and
    applied by ``dfsearch predict``), so no member is chosen only to shift the threshold. The blend's Platt scaling and decision
    threshold are fitted on val (``calibration``: max accuracy, or the lowest threshold whose val
    false-positive rate is at most ``target_fpr``) and stored for ``dfsearch predict``. ``comparison``
    puts the ensemble, the best single and the naive top-k average side by side on test, each
    calibrated at its own val threshold, with ``n_boot`` bootstrap intervals, the ensemble's gain with
    a paired interval, per fake source, and (``cost``: the checkpoints are loaded and timed) the
    parameters and images/s each costs at predict time. Writes
    ``out_dir/ensemble.json`` (the returned dict), ``roc.png``, ``confusion.png`` and ``trajectory.png``.
    """
    check_args(top_k, rounds, metric)
    check_target_fpr(target_fpr)
    if nbest is not None and (not isinstance(nbest, (int, np.integer)) or nbest < 1):
        raise DfsearchError(f"nbest must be an integer >= 1 (pool size limit) or None, got {nbest!r}")
    pool = align(read_predictions(predictions_dir))
    n_candidates, at_chance = len(pool.candidates), []
    if chance_z is not None:
        keep, dropped = screen(pool.P["val"], pool.y["val"], z=chance_z)
        at_chance = [{"candidate": pool.candidates[d.pop("index")], **d} for d in dropped]
        if not keep:
            raise DfsearchError(f"no candidate beats chance on val: all {n_candidates} left out ("
                                + "; ".join(f"{d['candidate']}: {d['reason']}" for d in at_chance[:5])
                                + ("; ..." if len(at_chance) > 5 else "")
                                + "); train longer or search more, or pass --keep-chance-level to ensemble them anyway")
        pool = pool.subset(keep)
    if nbest is not None and nbest < len(pool.candidates):
        pool = pool.subset(rank_candidates(pool.P["val"], pool.y["val"], metric)[:nbest])
    maps, candidate_calibration = None, None
    if calibrate_candidates:
        pool, maps, candidate_calibration = calibrate_pool(pool)
    selection = select(pool.P["val"], pool.y["val"], top_k=top_k, rounds=rounds, metric=metric)
    ev = evaluate(pool, selection, top_k)
    calibration = calibrate_blend(pool, selection.weights, target_fpr)
    comparison = compare(pool, ev, selection.weights, calibration, target_fpr, n_boot=n_boot)

    info = {}
    cands = read_candidates(predictions_dir)
    if cands is not None:
        for row in cands.itertuples(index=False):
            info[str(row.candidate)] = {"arch": row.arch, "checkpoint": row.checkpoint}
    members = [
        {"candidate": pool.candidates[i],
         "arch": info.get(pool.candidates[i], {}).get("arch"),
         "checkpoint": info.get(pool.candidates[i], {}).get("checkpoint"),
         "weight": w,
         **({"calibration": {"slope": maps[i][0], "intercept": maps[i][1]}} if maps else {})}
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
        "candidates": n_candidates,
        "chance_z": chance_z,
        "excluded_chance_level": at_chance,
        "excluded_non_finite": [pool.candidates[i] for i in selection.excluded],
        "trajectory": [{**r, "candidate": pool.candidates[r["candidate"]]} for r in selection.trajectory],
        "ensemble": ev["ensemble"],
        "best_single": {k: v for k, v in ev["best_single"].items() if k != "index"},
        "naive_top_k": {k: v for k, v in ev["naive_top_k"].items() if k != "indices"},
        "calibration": calibration,
        "candidate_calibration": candidate_calibration,
        "comparison": comparison,
        "source": str(predictions_dir),
    }
    if cost:
        names = {"ensemble": [m["candidate"] for m in members], "best_single": [ev["best_single"]["candidate"]],
                 "naive_top_k": ev["naive_top_k"]["candidates"]}
        comparison["cost"] = _costs(predictions_dir, info, names)
    result = _jsonable(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "ensemble.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "ensemble.json")
    write_plots(out, pool, selection, result)
    return result


def _costs(run_dir, info: dict, names: dict[str, list[str]]) -> dict:
    """``{entry: combined cost}`` for the entries whose every member has a readable checkpoint
    here (a store of predictions from elsewhere has none; a damaged checkpoint is the ensemble
    command's error to give, naming it: those entries are left out)."""
    from dfsearch.ensemble.cost import checkpoint_cost, combined

    per, out = {}, {}
    for entry, cands in names.items():
        folders = [info.get(c, {}).get("checkpoint") for c in cands]
        paths = [Path(f) if Path(f).is_absolute() else Path(run_dir) / f for f in folders if f]
        if len(paths) < len(cands) or not all((p / "model.safetensors").is_file() for p in paths):
            continue
        for c, p in zip(cands, paths):
            if c not in per:
                try:
                    per[c] = checkpoint_cost(p)
                except Exception:  # noqa: BLE001 - unreadable weights: no cost, the member check names it
                    per[c] = None
        if all(per[c] is not None for c in cands):
            out[entry] = combined([per[c] for c in cands])
    return out
