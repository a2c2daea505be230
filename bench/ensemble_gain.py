"""What the ensemble gains over the best single model, per generator family, over search seeds.

    .venv/bin/python bench/ensemble_gain.py                              # the demo space, seeds 0 1 2
    .venv/bin/python bench/ensemble_gain.py --space all_models --num-samples 16 --seeds 0

Each seed: a search (``run_search.py --space SPACE --seed S``, W&B off) on the embedded benchmark v2
(every generator family), then ``ensemble.py --top-k 4`` on it. From the ensemble's side-by-side
comparison (``ensemble.json["comparison"]``: each entry Platt-calibrated on val at its own val
threshold) it prints, on test: the ensemble's and the best single's accuracy and ROC-AUC with 95 %
bootstrap intervals, the ensemble's gain with its paired interval, and each family's ROC-AUC
(its fakes against all real test images) for both. Searches run one after another in
subprocesses, in a temporary folder (``--keep DIR`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_seed(space: str, seed: int, out: Path, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    search = [sys.executable, str(ROOT / "run_search.py"), "--space", space, "--seed", str(seed), "--out", str(out),
              "--name", f"seed{seed}", "--wandb-mode", "disabled", "--json", *extra]
    p = subprocess.run(search, capture_output=True, text=True, cwd=out)
    if p.returncode != 0:
        sys.exit(f"search seed {seed} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    search_s = time.perf_counter() - t0
    ens = [sys.executable, str(ROOT / "ensemble.py"), "--run", str(out / f"seed{seed}"), "--top-k", "4", "--json",
           "--wandb-mode", "disabled"]
    p = subprocess.run(ens, capture_output=True, text=True, cwd=out)
    if p.returncode != 0:
        sys.exit(f"ensemble seed {seed} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    result = json.loads(p.stdout)
    return dict(seed=seed, search_s=search_s, members=[(m["candidate"], m.get("arch"), m["weight"])
                                                       for m in result["members"]],
                best_single=result["best_single"]["candidate"], comparison=result["comparison"],
                excluded=len(result.get("excluded_chance_level") or []), candidates=result["candidates"])


def _ci(row: dict, key: str) -> str:
    ci = row["ci"].get(key)
    v = row["test"][key]
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def table(rows: list[dict]) -> str:
    fams = sorted({f for r in rows for f in r["comparison"]["per_source"]})
    lines = ["| seed | members (arch) | ensemble acc | best single acc | gain acc [paired 95 %] | ensemble AUC "
             "| best single AUC | " + " | ".join(f"{f} AUC ens / best" for f in fams) + " |",
             "|---:|---|---:|---:|---:|---:|---:|" + "---:|" * len(fams)]
    for r in rows:
        c = r["comparison"]
        g = c["gain"]["accuracy"]
        gain = f"{g['diff']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]" if g.get("ci") else f"{g['diff']:+.3f}"
        archs = ", ".join(sorted({str(a) for _, a, _ in r["members"]}))
        fam = [f"{c['per_source'][f]['ensemble']['roc_auc']:.3f} / {c['per_source'][f]['best_single']['roc_auc']:.3f}"
               for f in fams]
        lines.append(f"| {r['seed']} | {len(r['members'])} ({archs}) | {_ci(c['rows']['ensemble'], 'accuracy')} "
                     f"| {_ci(c['rows']['best_single'], 'accuracy')} | {gain} "
                     f"| {_ci(c['rows']['ensemble'], 'roc_auc')} | {_ci(c['rows']['best_single'], 'roc_auc')} | "
                     + " | ".join(fam) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="demo")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--num-samples", type=int, help="override the space's cpu profile")
    ap.add_argument("--keep", help="keep the run folders here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    extra = ["--num-samples", str(args.num_samples)] if args.num_samples else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or tmp).resolve()
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for seed in args.seeds:
            rows.append(one_seed(args.space, seed, out, extra))
            g = rows[-1]["comparison"]["gain"]["accuracy"]
            print(f"seed {seed}: search {rows[-1]['search_s'] / 60:.1f} min, {len(rows[-1]['members'])} members, "
                  f"gain {g['diff']:+.3f} {g.get('ci')}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(table(rows))


if __name__ == "__main__":
    main()
