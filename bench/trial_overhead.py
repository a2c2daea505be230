"""Per-trial fixed overhead of a search: trial wall time minus time in training steps.

    python bench/trial_overhead.py                 # the same small search (6 x 1-epoch small_cnn trials, 2 workers)
                                                   # on warm pools and with --no-pool, side by side
    python bench/trial_overhead.py --run runs/X    # measures an existing search run dir (e.g. the demo)

Per trial, from Tune's results (``progress.csv`` of each trial) and the worker's own timings:
  setup   = time from the trial's start to its first report, minus that epoch's time
            (actor start-up, imports, Ray Train controller/worker group/gloo, data and model build)
  eval    = per-epoch time outside training steps (val/test inference, metrics, checkpoint, report)
  train   = time in training steps
  overhead = wall - train (the goal in issue 3 is <= 5 s on this machine)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def measure(run_dir: Path) -> pd.DataFrame:
    rows = []
    for trial_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "progress.csv").exists()):
        h = pd.read_csv(trial_dir / "progress.csv")
        if h.empty or "train_time_s" not in h:
            continue
        first = h.iloc[0]
        setup = float(first["time_this_iter_s"] - first["epoch_time_s"])
        rows.append({"trial": str(first.get("trial_id", trial_dir.name)), "epochs": len(h),
                     "wall_s": float(h["time_total_s"].iloc[-1]), "train_s": float(h["train_time_s"].sum()),
                     "eval_s": float((h["epoch_time_s"] - h["train_time_s"]).sum()), "setup_s": setup})
    df = pd.DataFrame(rows)
    if not df.empty:
        df["overhead_s"] = df.wall_s - df.train_s
    return df


def summarize(df: pd.DataFrame) -> dict:
    return {k: statistics.median(df[k]) for k in ("wall_s", "train_s", "eval_s", "setup_s", "overhead_s")}


def run_small_search(out: Path, data: Path, trials: int, pool: bool) -> Path:
    name = "pool" if pool else "nopool"
    cmd = [sys.executable, str(REPO / "run_search.py"), "--space", "cnn", "--data", str(data), "--out", str(out),
           "--name", name, "--num-samples", str(trials), "--max-epochs", "1", "--workers-per-trial", "2",
           "--max-concurrent", "1", "--wandb-mode", "disabled", "--json"] + ([] if pool else ["--no-pool"])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out / name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an existing search run dir")
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    if args.run:
        runs = {"run": Path(args.run)}
    else:
        out = Path(tempfile.mkdtemp(prefix="overhead-"))
        from dfsearch.data.synth import generate

        data = generate(out / "data", n=400, size=32, progress=False)
        runs = {mode: run_small_search(out, data, args.trials, mode == "pool") for mode in ("pool", "no-pool")}
    meds = {}
    for mode, run_dir in runs.items():
        df = measure(run_dir)
        med = meds[mode] = summarize(df)
        t = pd.read_parquet(run_dir / "trials.parquet")
        if len(t) > 2:  # end to end, gaps between trials included, the first trial (start-up) left out
            t = t.sort_values("start")
            med["end_to_end_s"] = float((t.start + t.wall_time_s).iloc[-1] - t.start.iloc[1]) / (len(t) - 1)
        print(f"== {mode}: {run_dir}\n{df.round(2).to_string(index=False)}")
        print(f"median per trial: wall {med['wall_s']:.1f} s, training steps {med['train_s']:.1f} s, "
              f"setup {med['setup_s']:.1f} s, eval/report {med['eval_s']:.1f} s -> fixed overhead "
              f"{med['overhead_s']:.1f} s (goal <= 5 s); end to end (gaps between trials included, "
              f"first trial excluded) {med.get('end_to_end_s', float('nan')):.1f} s per trial\n")
    if len(meds) == 2:
        print(f"fixed overhead per trial: warm pool {meds['pool']['overhead_s']:.1f} s vs one TorchTrainer per "
              f"trial {meds['no-pool']['overhead_s']:.1f} s (ratio {meds['no-pool']['overhead_s'] / meds['pool']['overhead_s']:.1f}x)")
    print(json.dumps({mode: {k: round(v, 2) for k, v in m.items()} for mode, m in meds.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
