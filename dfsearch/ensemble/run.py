"""One ensemble from a store folder, end to end, and its terminal summary.

``run_ensemble(predictions_dir, top_k=, rounds=, metric=, nbest=, chance_z=, target_fpr=, out_dir=)``
reads the store (``dfsearch.store``), aligns it, leaves out the candidates at chance on val
(``screening.screen``), optionally keeps the ``nbest`` best of the rest, selects, evaluates,
calibrates the blend and picks its threshold on val (``evaluation.calibrate_blend``),
writes ``out_dir/ensemble.json`` (atomically) and the plots, and returns the JSON-ready dict.
``format_summary(result)`` is the short table the ``ensemble`` command prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dfsearch.ensemble import check_target_fpr
from dfsearch.ensemble.alignment import Pool, align
from dfsearch.ensemble.calibration import apply_candidates, fit_candidates
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
    maps = None
    if calibrate_candidates:
        from dfsearch.metrics import ece

        maps = fit_candidates(pool.P["val"], pool.y["val"])
        ece_raw = [ece(pool.y["val"], row) for row in pool.P["val"]]
        pool = Pool(pool.candidates, {s: apply_candidates(P, maps) for s, P in pool.P.items()}, pool.y,
                    pool.sample_ids)
        ece_cal = [ece(pool.y["val"], row) for row in pool.P["val"]]
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
        "candidate_calibration": ({"method": "platt", "val_ece_median_before": float(np.median(ece_raw)),
                                   "val_ece_median_after": float(np.median(ece_cal))} if maps else None),
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


def _ci(m: dict, ci: dict, key: str) -> str:
    v = m.get(key)
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if ci.get(key) else f"{v:.3f}"


def _signed(d: dict) -> str:
    if d.get("diff") is None:
        return "n/a"
    ci = d.get("ci")
    if not ci:
        return f"{d['diff']:+.3f}"
    inside = " (inside the noise)" if ci[0] <= 0 <= ci[1] else ""
    return f"{d['diff']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]{inside}"


def format_comparison(result: dict) -> list[str]:
    """The side-by-side block of the summary (``result["comparison"]``)."""
    comp = result.get("comparison")
    if not comp:
        return []
    cost = comp.get("cost", {})
    names = {"ensemble": f"ensemble ({len(result['members'])})",
             "best_single": f"best single ({result['best_single']['candidate']})",
             "naive_top_k": f"naive top-{len(result['naive_top_k']['candidates'])} average"}
    lines = ["test, each calibrated on val at its val threshold: accuracy / roc_auc [95 % bootstrap], "
             "cost at predict time",
             f"  {'':<30}{'thr':>6}  {'accuracy':<22}{'roc_auc':<22}{'params':>9}{'img/s':>9}"]
    for key, label in names.items():
        row = comp["rows"][key]
        c = cost.get(key)
        label = label if len(label) <= 30 else label[:27] + "..."
        lines.append(f"  {label:<30}{row['threshold']:>6.3f}  {_ci(row['test'], row['ci'], 'accuracy'):<22}"
                     f"{_ci(row['test'], row['ci'], 'roc_auc'):<22}"
                     + (f"{c['params'] / 1e6:>8.2f}M{c['images_per_s']:>9.0f}" if c else f"{'n/a':>9}{'n/a':>9}"))
    g = comp["gain"]
    lines.append(f"  gain of the ensemble over the best single (paired): accuracy {_signed(g['accuracy'])}, "
                 f"roc_auc {_signed(g['roc_auc'])}")
    if comp.get("per_source"):
        lines.append("  per fake source (all real test images + that source's fakes): accuracy / roc_auc")
        for src, by in comp["per_source"].items():
            cells = ", ".join(f"{k.replace('_', ' ')} {v['accuracy']:.3f} / "
                              + ("n/a" if v["roc_auc"] is None else f"{v['roc_auc']:.3f}") for k, v in by.items())
            lines.append(f"    {src} ({next(iter(by.values()))['n_fake']} fakes): {cells}")
    return lines


def format_summary(result: dict) -> str:
    """A short terminal summary of a :func:`run_ensemble` result."""
    lines = [f"ensemble: {len(result['members'])} member(s), metric {result['metric']}, "
             f"top_k {result['top_k']}, best prefix {result.get('best_round', '?')}/{result['rounds']} rounds"]
    at_chance = result.get("excluded_chance_level") or []
    if at_chance:
        names = ", ".join(d["candidate"] for d in at_chance[:6]) + (", ..." if len(at_chance) > 6 else "")
        lines.append(f"  pool: {result['pool_size']} of {result['candidates']} candidates; {len(at_chance)} at chance "
                     f"on val left out ({names})")
    for m in result["members"]:
        arch = f"  [{m['arch']}]" if m.get("arch") else ""
        lines.append(f"  {m['weight']:6.3f}  {m['candidate']}{arch}")

    def fmt(v):
        return "   n/a" if v is None else f"{v:6.4f}"

    lines.append(f"{'test':<28}{'accuracy':>10}{'roc_auc':>10}{'log_loss':>10}")
    rows = [("ensemble", result["ensemble"]["test"]),
            (f"best single ({result['best_single']['candidate']})", result["best_single"]["test"]),
            (f"naive top-{len(result['naive_top_k']['candidates'])} average", result["naive_top_k"]["test"])]
    cal = result.get("calibration")
    if cal:
        rows.insert(1, (f"ensemble, calibrated @{cal['threshold']:.2f}", cal["test"]))
    for name, m in rows:
        name = name if len(name) <= 27 else name[:24] + "..."
        lines.append(f"{name:<28}{fmt(m['accuracy']):>10}{fmt(m['roc_auc']):>10}{fmt(m['log_loss']):>10}")
    cc = result.get("candidate_calibration")
    if cc:
        lines.append(f"candidates Platt-scaled on val before selection (each its own map; predict applies them): "
                     f"median val ECE {cc['val_ece_median_before']:.3f} -> {cc['val_ece_median_after']:.3f}")
    if cal:
        how = f"val FPR <= {cal['target_fpr']}" if cal.get("target_fpr") is not None else "best val accuracy"
        lines.append(f"calibrated on val: Platt slope {cal['slope']:.2f} intercept {cal['intercept']:+.2f}, "
                     f"threshold {cal['threshold']:.3f} "
                     f"({how}); test ECE {fmt(cal['test']['ece_uncalibrated']).strip()} -> "
                     f"{fmt(cal['test']['ece']).strip()}; dfsearch predict applies both")
    return "\n".join(lines + format_comparison(result))
