"""Per-trial fixed overhead of a search: trial wall time minus time in training steps.

    python bench/trial_overhead.py                 # the same small search (6 x 1-epoch small_cnn trials, 2 workers)
                                                   # on warm pools and with --no-pool, side by side
    python bench/trial_overhead.py --run runs/X    # measures an existing search run dir (e.g. the demo)
    python bench/trial_overhead.py --s3            # warm pools with a local --out vs an s3:// --out (a local
                                                   # S3 server, moto): what the copying costs a trial

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


def run_small_search(out: Path, data: Path, trials: int, pool: bool, uri: str | None = None,
                     epochs: int = 1) -> Path:
    """The same small search; with ``uri``, ``--out uri`` (returns the local staging copy)."""
    name = ("pool" if pool else "nopool") + ("-s3" if uri else "")
    cmd = [sys.executable, str(REPO / "run_search.py"), "--space", "cnn", "--data", str(data),
           "--out", uri or str(out), "--name", name, "--num-samples", str(trials), "--max-epochs", str(epochs),
           "--scheduler", "fifo", "--workers-per-trial", "2", "--max-concurrent", "1", "--wandb-mode", "disabled",
           "--json"] + ([] if pool else ["--no-pool"])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if uri:
        from dfsearch import remote

        return remote.staging_dir(remote.join(uri, name))
    return out / name


def local_s3(out: Path) -> str:
    """Start a local S3 server (moto, a dev dependency) with a bucket; the ``--out`` URI for it."""
    import logging
    import os

    from moto.server import ThreadedMotoServer
    from pyarrow.fs import S3FileSystem

    for k, v in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(k, v)
    os.environ["DFSEARCH_CACHE"] = str(out / "cache")  # the staging copies (the searches inherit it)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", allow_bucket_creation=True).create_dir("bench")
    return f"s3://bench/runs?endpoint_override=127.0.0.1:{port}&scheme=http"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an existing search run dir")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--s3", action="store_true", help="compare a local --out with an s3:// one (warm pools)")
    args = ap.parse_args()
    if args.run:
        runs = {"run": Path(args.run)}
    else:
        out = Path(tempfile.mkdtemp(prefix="overhead-"))
        from dfsearch.data.synth import generate

        data = generate(out / "data", n=400, size=32, progress=False)
        if args.s3:  # 2 epochs a trial: the per-epoch checkpoint copy shows
            uri = local_s3(out)
            runs = {mode: run_small_search(out, data, args.trials, True, uri if mode == "s3" else None, epochs=2)
                    for mode in ("local", "s3")}
        else:
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
    if "s3" in meds:
        print(f"per trial (2 epochs), warm pools: --out s3:// (local S3 server) wall {meds['s3']['wall_s']:.2f} s, "
              f"end to end {meds['s3'].get('end_to_end_s', float('nan')):.2f} s vs local --out wall "
              f"{meds['local']['wall_s']:.2f} s, end to end {meds['local'].get('end_to_end_s', float('nan')):.2f} s "
              f"(ratio {meds['s3'].get('end_to_end_s', 1) / meds['local'].get('end_to_end_s', 1):.2f}x)")
    elif len(meds) == 2:
        print(f"fixed overhead per trial: warm pool {meds['pool']['overhead_s']:.1f} s vs one TorchTrainer per "
              f"trial {meds['no-pool']['overhead_s']:.1f} s (ratio {meds['no-pool']['overhead_s'] / meds['pool']['overhead_s']:.1f}x)")
    print(json.dumps({mode: {k: round(v, 2) for k, v in m.items()} for mode, m in meds.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
