"""Search efficiency: TPE + ASHA vs. random search at the same total trial-epoch budget.

    python bench/search_efficiency.py --out DIR             # 5 seeds, 8-epoch trials, 96 trial-epochs each,
                                                            # 6000 images (1200 validation); runs in DIR are reused
    python bench/search_efficiency.py --max-epochs 4 --budget 48   # the shorter horizon of BENCHMARKS.md
    python bench/search_efficiency.py --n 2000 --seeds 0 1 2 --max-epochs 4 --budget 48   # session 2's runs
    python bench/search_efficiency.py --out DIR --grace 2   # TPE+ASHA with grace 2
    SEARCH_EFF_TAG=auc python bench/search_efficiency.py ...  # re-run only the TPE+ASHA arm (the search
                                                              # changed); random's runs are reused

For every seed, two real searches (``run_search.py``, one trial at a time so that the order of
epochs is the order of spending), over the same space (``all_models``: every architecture and its
ranges) with its ``bench`` profile (32 px, 20 steps an epoch, 1 worker: the cpu profile's 64 px
epochs of resnet/ViT cost minutes each on 2 cores), on the synthetic benchmark generated at 32 px
(``dfsearch synth --size 32 --difficulty 0.2 --n 6000``; downscaling the 64 px default would erase the
upsampling fingerprint the detectors look for) unless --data:

* ``tpe+asha``: ``--searcher tpe --scheduler asha`` (the default search), as many trials as fit;
* ``random``:   ``--searcher random --scheduler fifo``, every trial runs ``max_epochs``.

Both stop when their trials together have run ``--budget`` epochs (``--budget-epochs``). From each
trial's per-epoch results it builds "best val accuracy so far" against trial-epochs spent, and
reports how many trial-epochs TPE+ASHA needed to reach random search's final best (the goal in
issue 3: at most a third of the budget), per seed and on the curves averaged over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
ARMS = {"tpe+asha": ["--searcher", "tpe", "--scheduler", "asha"],
        "random": ["--searcher", "random", "--scheduler", "fifo"]}


def curve(run_dir: Path, metric: str = "val_acc") -> pd.DataFrame:
    """One row per reported epoch, in the order they were spent: trial, epoch, metric, the cumulative
    trial-epochs and the best metric so far."""
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    rows = []
    for d in run_dir.iterdir():
        if not (d / "progress.csv").exists():
            continue
        h = pd.read_csv(d / "progress.csv")
        tid = str(h.trial_id.iloc[0])
        start = trials.start.get(tid, float("nan"))
        for r in h.itertuples():
            v = getattr(r, metric)
            bad = bool(getattr(r, "nan_loss", False))
            rows.append({"trial_id": tid, "arch": trials.arch.get(tid), "epoch": int(r.epoch),
                         "timestamp": r.timestamp, "start": start,
                         metric: float(v) if not bad else float("nan"),
                         "test_acc": float(getattr(r, "test_acc", float("nan"))) if not bad else float("nan")})
    df = pd.DataFrame(rows).sort_values(["timestamp", "start", "epoch"]).reset_index(drop=True)
    df["trial_epochs"] = range(1, len(df) + 1)
    df["best"] = df[metric].cummax()
    # the test accuracy of the epoch the search would hand over so far (best val): is the gain real?
    pick = df[metric].fillna(-1.0).expanding().apply(lambda s: s.values.argmax(), raw=False).astype(int)
    df["picked_test"] = df.test_acc.to_numpy()[pick.to_numpy()]
    return df


def epochs_to_reach(c: pd.DataFrame, target: float) -> int | None:
    hit = c[c.best >= target - 1e-9]
    return int(hit.trial_epochs.iloc[0]) if not hit.empty else None


def run_arm(arm: str, seed: int, budget: int, max_epochs: int, out: Path, data: str | None, space: str,
            profile: str, grace: int | None) -> Path:
    g = f"-g{grace}" if grace and arm == "tpe+asha" else ""
    tag = "" if Path(data).name == "data" else "-" + Path(data).name  # runs on other data are other runs
    if (max_epochs, budget) != (4, 48):  # another horizon: other runs
        tag += f"-e{max_epochs}b{budget}"
    if arm == "tpe+asha" and os.environ.get("SEARCH_EFF_TAG"):  # a changed search: not the earlier runs
        tag += "-" + os.environ["SEARCH_EFF_TAG"]
    name = f"{arm.replace('+', '_')}{g}{tag}-s{seed}"
    if (out / name / "trials.parquet").exists():  # a finished search of an earlier run of this bench
        print(f"  {arm:<9} seed {seed}: reusing {out / name}", flush=True)
        return out / name
    if (out / name).exists():  # an interrupted search of an earlier run of this bench: start it again
        print(f"  {arm:<9} seed {seed}: removing the unfinished {out / name}", flush=True)
        shutil.rmtree(out / name)
    n = 1000 if arm == "tpe+asha" else -(-budget // max_epochs)  # random: exactly budget / max_epochs trials
    cmd = [sys.executable, str(REPO / "run_search.py"), "--space", space, "--profile", profile, "--out", str(out),
           "--name", name,
           "--seed", str(seed), "--num-samples", str(n), "--max-epochs", str(max_epochs),
           "--budget-epochs", str(budget), "--max-concurrent", "1", "--wandb-mode", "disabled", "--json",
           *ARMS[arm]] + (["--data", data] if data else []) + (["--grace-period", str(grace)] if g else [])
    t0 = time.time()
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    print(f"  {arm:<9} seed {seed}: {time.time() - t0:.0f} s  (log {out / f'{name}.log'})", flush=True)
    return out / name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--budget", type=int, default=96, help="trial-epochs per search")
    ap.add_argument("--max-epochs", type=int, default=8, help="epochs of a full trial (ASHA max_t)")
    ap.add_argument("--space", default="all_models")
    ap.add_argument("--profile", default="bench", help="budget profile of the space file")
    ap.add_argument("--grace", type=int, help="ASHA grace period of the TPE+ASHA arm (default: the profile's)")
    ap.add_argument("--data", help="dataset folder (default: a 32 px synthetic set generated in --out)")
    ap.add_argument("--n", type=int, default=6000,
                    help="images in the generated set (20%% validation: 6000 -> 1200, +-0.013 on one accuracy)")
    ap.add_argument("--out", help="where the searches go (default: a temp dir)")
    ap.add_argument("--plot", help="write the curves to this PNG")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="search-eff-"))
    out.mkdir(parents=True, exist_ok=True)
    if not args.data:
        from dfsearch.data.synth import generate

        data = out / f"data-n{args.n}" if args.n != 2000 else out / "data"  # the n=2000 runs kept their name
        args.data = str(data) if (data / "synth.json").exists() else \
            str(generate(data, n=args.n, size=32, seed=0, difficulty=0.2, progress=False))
    print(f"search efficiency: {len(args.seeds)} seeds x {list(ARMS)}, {args.budget} trial-epochs each, "
          f"max_epochs {args.max_epochs}, space {args.space} (profile {args.profile}); runs in {out}", flush=True)

    results, curves = [], {}
    for seed in args.seeds:
        c = {arm: curve(run_arm(arm, seed, args.budget, args.max_epochs, out, args.data, args.space, args.profile,
                                args.grace))
             for arm in ARMS}
        curves[seed] = c
        target = float(c["random"].best.iloc[-1])
        third = args.budget // 3
        tpe = c["tpe+asha"]
        results.append({
            "seed": seed, "random_best": target, "random_trials": int(c["random"].trial_id.nunique()),
            "tpe_asha_best": float(tpe.best.iloc[-1]), "tpe_asha_trials": int(tpe.trial_id.nunique()),
            "tpe_asha_best_at_third": float(tpe[tpe.trial_epochs <= third].best.max()),
            "random_best_at_third": float(c["random"][c["random"].trial_epochs <= third].best.max()),
            "tpe_asha_epochs_to_random_best": epochs_to_reach(tpe, target),
            "random_epochs_to_own_best": epochs_to_reach(c["random"], target),
            "random_picked_test": float(c["random"].picked_test.iloc[-1]),
            "tpe_asha_picked_test": float(tpe.picked_test.iloc[-1]),
            "tpe_asha_picked_test_at_third": float(tpe[tpe.trial_epochs <= third].picked_test.iloc[-1])})

    df = pd.DataFrame(results)
    print("\n" + df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    reached = [r["tpe_asha_epochs_to_random_best"] for r in results]
    met = sum(1 for e in reached if e is not None and e <= args.budget / 3)
    med = statistics.median([e if e is not None else float("inf") for e in reached])
    needed = f"{med:g} (= {med / args.budget:.2f} of random's)" if med != float("inf") else "not reached"
    print(f"\nTPE+ASHA reached random search's best ({args.budget} trial-epochs) within a third of the budget "
          f"({args.budget / 3:.0f}) in {met}/{len(results)} seeds; median trial-epochs needed: {needed}; mean best: "
          f"TPE+ASHA {df.tpe_asha_best.mean():.3f}, random {df.random_best.mean():.3f}; mean best at a third: "
          f"TPE+ASHA {df.tpe_asha_best_at_third.mean():.3f}, random {df.random_best_at_third.mean():.3f}")
    # the curves averaged over seeds (best so far at each trial-epoch): where TPE+ASHA's mean curve
    # reaches random search's mean final best
    def mean_curve(arm):
        steps = range(1, args.budget + 1)
        per_seed = [[c[arm][c[arm].trial_epochs <= t].best.max() for t in steps] for c in curves.values()]
        return pd.DataFrame(per_seed, columns=list(steps)).mean()  # NaN before a seed's first epoch: skipped

    tpe_mean, random_final = mean_curve("tpe+asha"), mean_curve("random").iloc[-1]
    hit = tpe_mean[tpe_mean >= random_final - 1e-9]
    mean_needed = int(hit.index[0]) if not hit.empty else None
    print(f"averaged over the {len(results)} seeds: TPE+ASHA's mean best-so-far reaches random's mean final best "
          f"({random_final:.3f}) at " + (f"{mean_needed} trial-epochs (= {mean_needed / args.budget:.2f} of the budget)"
                                         if mean_needed else "no point within the budget"))
    print(f"test accuracy of the model each search would hand over (its best val epoch): random at "
          f"{args.budget} t-e {df.random_picked_test.mean():.3f}, TPE+ASHA at {args.budget} t-e "
          f"{df.tpe_asha_picked_test.mean():.3f}, TPE+ASHA at {args.budget // 3} t-e "
          f"{df.tpe_asha_picked_test_at_third.mean():.3f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for seed, c in curves.items():
            for arm, style in (("tpe+asha", "-"), ("random", "--")):
                ax.step(c[arm].trial_epochs, c[arm].best, style, where="post",
                        label=f"{arm} seed {seed}", alpha=0.8)
        ax.set_xlabel("trial-epochs spent")
        ax.set_ylabel("best val accuracy so far")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=90)
    print(json.dumps({"budget": args.budget, "seeds": results, "goal_met_seeds": met,
                      "mean_curve_epochs_to_random_mean_best": mean_needed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
