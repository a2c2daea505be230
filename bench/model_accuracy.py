"""Measured accuracy of each core model on the embedded benchmark, trained from scratch.

    .venv/bin/python bench/model_accuracy.py                       # all four core models, 8 epochs
    .venv/bin/python bench/model_accuracy.py --epochs 3 --archs small_cnn resnet18

Data: ``default_dataset()`` (the cached embedded synthetic set: 3000 train / 600 val / 600 test
images, 64 px, default difficulty). Every model is trained with ``fit_trial`` (Ray Train, 2 DDP
workers, 1 CPU each) with pretrained=False: no pretrained weights are available offline, so these
are from-scratch numbers. One fixed recipe per model (no tuning): AdamW, batch 64 per worker, cosine
schedule with 1 warmup epoch; lr 2e-3 and weight decay 0.01 for the CNNs, lr 1e-3 and weight decay
0.05 for the ViT; default augmentation (horizontal flip). The best epoch is chosen by val accuracy
(the project's default metric); test accuracy / AUC are those of that epoch's checkpoint.
Prints one markdown table (val/test accuracy and AUC, best epoch, wall time per model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

class EpochLog:
    """Ray Train callback (runs in the Train controller): append every epoch's rank-0 metrics to a
    JSON-lines file, so the per-epoch training time survives ``num_to_keep=1``."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics[0], default=str) + "\n")


def epoch_log(path: str):
    from ray.train import UserCallback

    cls = type("EpochLogCallback", (EpochLog, UserCallback), {})
    return cls(path)


CORE = ["small_cnn", "resnet18", "mobilenetv2_100", "vit_tiny_patch16_224"]
RECIPES = {  # arch -> TrainConfig overrides (everything else: TrainConfig defaults)
    "small_cnn": dict(lr=2e-3, weight_decay=0.01),
    "resnet18": dict(lr=2e-3, weight_decay=0.01),
    "mobilenetv2_100": dict(lr=2e-3, weight_decay=0.01),
    "vit_tiny_patch16_224": dict(lr=1e-3, weight_decay=0.05),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--archs", nargs="+", default=CORE)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json-out", help="also write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the run folders (checkpoints)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from dfsearch.config import TrainConfig
    from dfsearch.data.discover import discover
    from dfsearch.data.synth import DEFAULTS, default_dataset
    from dfsearch.cluster import init_ray
    from dfsearch.train import fit_trial, trial_summary

    data = default_dataset(progress=False)
    index = discover(data)
    n = {s: len(v) for s, v in index.splits.items()}
    init_ray(num_cpus=args.workers)
    print(f"data: {data} ({n['train']} train / {n['valid']} val / {n['test']} test, {DEFAULTS['size']} px, "
          f"difficulty {DEFAULTS['difficulty']}); {args.workers} workers x 1 CPU on a {os.cpu_count()}-core "
          f"machine, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dfsearch-model-accuracy-"))
    rows = []
    try:
        for arch in args.archs:
            recipe = RECIPES.get(arch, dict(lr=2e-3, weight_decay=0.01))
            cfg = TrainConfig(arch=arch, pretrained=False, img_size=DEFAULTS["size"], epochs=args.epochs,
                              batch_size=args.batch_size, optimizer="adamw",
                              warmup_epochs=1.0 if args.epochs > 1 else 0.0, seed=0, **recipe)
            t0 = time.time()
            log = work / f"{arch}.epochs.jsonl"
            result = fit_trial(cfg, index.to_json(), workers=args.workers, storage=str(work), name=arch,
                               callbacks=[epoch_log(str(log))])
            wall = time.time() - t0
            s = trial_summary(result, cfg, arch)
            b = s["best"] or {}
            epochs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            train_s = sum(float(e["train_time_s"]) for e in epochs) if epochs else None
            if epochs:
                print(f"  {arch} val_acc per epoch: " + " ".join(f"{e['val_acc']:.3f}" for e in epochs), flush=True)
            row = dict(arch=arch, lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                       best_epoch=b.get("best_epoch"), val_acc=b.get("val_acc"), val_auc=b.get("val_auc"),
                       test_acc=b.get("test_acc"), test_auc=b.get("test_auc"),
                       last_val_acc=(s["last"] or {}).get("val_acc"),
                       val_acc_per_epoch=[e["val_acc"] for e in epochs], params=b.get("trainable_params"),
                       wall_s=wall, train_s=train_s, error=s["error"])
            rows.append(row)
            print(f"RESULT {arch}: " + json.dumps(row, default=str), flush=True)
    finally:
        import ray

        ray.shutdown()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    print(f"\n{args.epochs} epochs from scratch, {args.workers} workers, batch {args.batch_size}/worker, "
          f"load average {os.getloadavg()[0]:.2f} at end\n")
    print("| model | params | lr / wd | best epoch | val acc | val AUC | test acc | test AUC | wall time | of which train steps |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["error"]:
            print(f"| {r['arch']} | | | FAILED: {r['error'][:80]} | | | | | {r['wall_s']:.0f} s | |")
            continue
        print(f"| {r['arch']} | {f(r['params'] and r['params'] / 1e6, '.2f')}M | {r['lr']:g} / {r['weight_decay']:g} | "
              f"{r['best_epoch']}/{r['epochs']} | {f(r['val_acc'], '.3f')} | {f(r['val_auc'], '.3f')} | "
              f"{f(r['test_acc'], '.3f')} | {f(r['test_auc'], '.3f')} | {r['wall_s']:.0f} s | "
              f"{f(r['train_s'], '.0f')} s |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
