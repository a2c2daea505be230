"""What a search leaves as tables: one row per trial (``trials.parquet``), the per-trial summaries
that feed the prediction store, and the human / ``--json`` summary. Reads only: which
checkpoints exist is ``checkpoint_policy``'s business (the callbacks pruned them)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dfsearch import checkpoint_policy, store
from dfsearch.search.outcome import classify

TRIALS_FILE = "trials.parquet"
TOP_COLUMNS = ["trial_id", "arch", "status", "epochs", "val_acc", "val_auc", "val_loss", "lr"]


def collect(results, space, profile, seed: int, train_storage: Path,
            ended: set[str] | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Rows for trials.parquet and per-trial summaries for the store, from Tune's ResultGrid
    (status, config, timing) and each trial's best checkpoint on disk (metrics, predictions).
    ``ended``: the search was interrupted and these are the trials that ended; the others are
    ``interrupted`` (kept out of the store; their latest checkpoint is still there for ``--resume``)."""
    rows, summaries = [], []
    for r in results:
        last = r.metrics or {}
        tid = last.get("trial_id") or Path(r.path).name
        cfg = space.train_config(r.config, profile, seed=seed)
        epochs = int(last.get("epoch", 0) or 0)
        if ended is not None and tid not in ended and r.error is None:
            status, reason = "interrupted", f"the search was stopped after {epochs} epoch(s); --resume continues it"
        else:
            status, reason = classify(last, r.error, profile.max_epochs)
        found = checkpoint_policy.best(train_storage / tid)
        ckpt, best = (str(found[0]), found[1]) if found else ("", {})
        rows.append(_row(tid, cfg, status, reason, epochs, best, last, r.metrics_dataframe, ckpt))
        if ckpt and status in ("completed", "pruned"):
            summaries.append({"candidate": tid, "trial_id": tid, "arch": cfg.arch, "config": cfg.model_dump(),
                              "best": best, "checkpoint": ckpt})
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values("trial_id").reset_index(drop=True)
    return df, summaries


def _row(tid, cfg, status, reason, epochs, best, last, hist, ckpt) -> dict:
    nan = float("nan")
    flat = cfg.model_dump()
    aug = flat.pop("aug")
    has_hist = hist is not None and not hist.empty
    row = {"trial_id": tid, "arch": cfg.arch, **{k: v for k, v in flat.items() if k != "arch"},
           **{f"aug_{k}": v for k, v in aug.items()}, "status": status, "reason": reason, "epochs": epochs,
           "best_epoch": best.get("epoch"), "val_acc": best.get("val_acc", nan), "val_auc": best.get("val_auc", nan),
           "val_loss": best.get("val_loss", nan), "test_acc": best.get("test_acc", nan),
           "start": float(hist["timestamp"].iloc[0] - hist["time_this_iter_s"].iloc[0]) if has_hist else nan,
           "wall_time_s": float(last.get("time_total_s", nan)),
           "train_time_s": float(hist["train_time_s"].sum()) if has_hist and "train_time_s" in hist else nan,
           "retries": int(last.get("retries", 0) or 0), "resumed_from": str(last.get("resumed_from", "") or ""),
           "nodes": ",".join(sorted({n for v in hist["worker_nodes"].dropna() for n in str(v).split(",") if n}))
           if has_hist and "worker_nodes" in hist else "",
           "checkpoint": ckpt}
    row["unfrozen"], row["pretrained"] = str(row["unfrozen"]), str(row["pretrained"])
    row["aug_jpeg_quality"] = json.dumps(list(row["aug_jpeg_quality"]))
    return row


def prune_unfinished(train_storage: Path, df: pd.DataFrame) -> None:
    """Trials cut by an interrupted search keep their best and latest checkpoints (where
    ``--resume`` goes on); the callbacks pruned the ones that ended."""
    for tid in df.trial_id[df.status == "interrupted"] if not df.empty else ():
        checkpoint_policy.prune(train_storage / tid, running=True)


def summary(df: pd.DataFrame, space, run_dir: Path, wall: float) -> dict:
    key = space.metric
    done = df[df.status.isin(["completed", "pruned"])] if not df.empty else df
    top = done.sort_values(key, ascending=space.mode == "min").head(5) if not done.empty else done
    return {"run_dir": str(run_dir), "wall_time_s": wall, "trials": int(len(df)),
            "status": df.status.value_counts().to_dict() if not df.empty else {},
            "finished": int(len(done)), "metric": key, "best": top.iloc[0].to_dict() if not top.empty else None,
            "top": top[TOP_COLUMNS].to_dict("records") if not top.empty else [],
            "failed": df[df.status == "failed"][["trial_id", "arch", "reason"]].to_dict("records") if not df.empty else [],
            "retried": df[df.retries > 0][["trial_id", "arch", "status", "retries", "resumed_from"]].to_dict("records")
            if not df.empty and "retries" in df else [],
            "files": {"trials": str(run_dir / TRIALS_FILE), "predictions": str(run_dir / store.PREDICTIONS_FILE),
                      "candidates": str(run_dir / store.CANDIDATES_FILE)},
            "next": f"python ensemble.py --run {run_dir} --top-k 4"}


def format_summary(r: dict) -> str:
    how = f"interrupted ({r['interrupted']}) after" if r.get("interrupted") else "finished in"
    lines = [f"\nsearch {how} {r['wall_time_s'] / 60:.1f} min: {r['trials']} trials "
             f"({', '.join(f'{v} {k}' for k, v in sorted(r['status'].items()))})"]
    if r["top"]:
        table = pd.DataFrame(r["top"]).rename(columns={"trial_id": "trial", "epochs": "ep"})
        lines.append("\n" + table.to_string(index=False, formatters={
            "val_acc": "{:.3f}".format, "val_auc": "{:.3f}".format, "val_loss": "{:.4f}".format,
            "lr": "{:.2e}".format}))
    for f in r["failed"][:5]:
        lines.append(f"  failed {f['trial_id']} ({f['arch']}): {f['reason']}")
    for t in r.get("retried", []):
        lines.append(f"  retried {t['trial_id']} ({t['arch']}): lost a worker {t['retries']} time(s), resumed from "
                     f"epoch {t['resumed_from']}; {t['status']}")
    if r["best"]:
        b = r["best"]
        cfg = {k: b[k] for k in ("arch", "lr", "weight_decay", "unfrozen", "batch_size", "optimizer") if k in b}
        lines.append(f"\n  best: {b['trial_id']} {r['metric']} {b[r['metric']]:.4f}  {json.dumps(cfg, default=str)}")
        lines.append(f"  checkpoint: {b['checkpoint']}")
    if r.get("uri"):
        lines.append(f"\n  copied to:   {r['uri']}" + ("" if r["copied"] else "  (FAILED: see above)"))
    lines.append(f"  local copy:  {r['run_dir']}" if r.get("uri") else f"\n  run dir:     {r['run_dir']}")
    lines.append(f"  trials:      {r['files']['trials']}")
    if r.get("wandb_sync"):
        lines.append(f"  W&B runs:    offline; upload with `{r['wandb_sync']}`")
    lines.append(f"  predictions: {r['files']['predictions']}")
    lines.append(f"\n  next: {r['next']}")
    return "\n".join(lines)
