"""Cross-family generalisation on the embedded benchmark v2, and what blur + JPEG augmentation does to it.

    .venv/bin/python bench/generalization.py                       # small_cnn, seeds 0 1 2
    .venv/bin/python bench/generalization.py --archs small_cnn resnet18 --seeds 0 --json

The benchmark with every generator family (``default_dataset(families=FAMILIES)``: upsample, blend,
spectral; 3000 train / 600 test images, 64 px). For each arch, seed and **held-out family** H: train
on the real images and the fakes of the other two families, then score on the test split the fakes
of H (unseen) and of the other two (seen), each against all the real test images (ROC-AUC with a
bootstrap SE). Beside it, the in-domain reference: the same arch trained on all three families,
scored per family. Each case twice: flips only, and with Wang et al. 2020's blur + JPEG
augmentation (CNNDetection: blur sigma ~ U[0, 3] and JPEG quality ~ U[30, 100], each with
p = 0.5), which they found to help a detector trained on one GAN generalise to others.
``--augs flip rotation5 --in-domain-only``: what a 5 degree rotation (it re-interpolates every
pixel) does to each family.

Training is ``bench/zoo.py``'s plain loop (the cpu profile's budget: ``--steps 120`` AdamW steps of
64, the arch's ``all_models.yaml`` defaults: lr / weight decay at the middle of their ranges, its
zoom, eval view and input filter), through the project's per-image pipelines
(``dfsearch.data.loading.build_transform`` with ``Augment``), so each step decodes and augments.
Prints a markdown table (``--json``: the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

AUGS = {"flip": dict(hflip=0.5),
        "blur+jpeg": dict(hflip=0.5, blur_p=0.5, blur_sigma=3.0, jpeg_p=0.5, jpeg_quality=(30, 100)),
        "rotation5": dict(hflip=0.5, rotation=5.0)}  # --augs: the first two by default


def one_case(arch: str, train_families: tuple, aug: str, seed: int, steps: int, batch: int, root: str) -> dict:
    """Train ``arch`` on the real images + the fakes of ``train_families``; val AUC per family on test."""
    import numpy as np
    import torch

    from dfsearch import models
    from dfsearch.data.discover import discover, fake_source
    from dfsearch.data.loading import Augment, ImageList, build_transform
    from dfsearch.data.views import resolve
    from zoo import auc_with_se, load_split, recipe, train_eval

    torch.manual_seed(seed)
    r = recipe(arch)
    size = models.fit_img_size(arch, 64, r["zoom"])
    dc = models.data_config(arch, size)
    view = resolve("auto", size, [(64, 64)], zoom=r["zoom"], eval_view=r["eval_view"], eval_tiles=r["eval_tiles"])
    index = discover(root)
    train = [(s, y) for s, y in index.splits["train"] if y == 0 or fake_source(s) in train_families]
    ds = ImageList(root, train, build_transform(view, dc["mean"], dc["std"], Augment(**AUGS[aug])))
    y_tr = torch.tensor([y for _, y in train], dtype=torch.float32)
    x_te, y_te = load_split(root, index.splits["test"], build_transform(view, dc["mean"], dc["std"], None))

    def augment(idx, g):  # decoded + augmented per step, through the project's pipeline
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        return torch.stack([ds[int(i)][0] for i in idx])

    model = models.create(arch, pretrained=False, num_classes=1, img_size=size, input_filter=r["input_filter"])
    out = train_eval(model, None, y_tr, x_te, y_te, steps=steps, batch=batch, seed=seed, augment=augment,
                     lr=r["lr"], weight_decay=r["weight_decay"])
    p, y = np.asarray(out.pop("probs")), y_te.numpy()
    src = np.array([fake_source(s) if lab else "" for s, lab in index.splits["test"]], dtype=object)
    per = {}
    for fam in sorted(set(src) - {""}):
        keep = (y == 0) | (src == fam)
        auc, se = auc_with_se(y[keep], p[keep], seed)
        per[fam] = dict(val_auc=auc, auc_se=se, seen=fam in train_families)
    return dict(arch=arch, seed=seed, aug=aug, train_families=list(train_families), per_family=per,
                train_img_s=out["train_img_s"])


def table(rows: list[dict], families: tuple) -> str:
    """A row per (arch, held out, aug): test AUC per family, the mean over seeds (their range)."""
    import numpy as np

    lines = ["| arch | trained on | augmentation | seeds | " + " | ".join(families) + " |",
             "|---|---|---|---:|" + "---:|" * len(families)]
    keys = sorted({(r["arch"], tuple(r["train_families"]), r["aug"]) for r in rows},
                  key=lambda k: (k[0], -len(k[1]), k[1], k[2]))
    for arch, trained, aug in keys:
        group = [r for r in rows if (r["arch"], tuple(r["train_families"]), r["aug"]) == (arch, trained, aug)]
        cells = []
        for f in families:
            aucs = [r["per_family"][f]["val_auc"] for r in group]
            cell = f"{np.mean(aucs):.3f}" + (f" ({min(aucs):.3f}-{max(aucs):.3f})" if len(aucs) > 1 else "")
            cells.append(cell if f in trained else f"*{cell}*")
        label = "all three" if len(trained) == len(families) else "+".join(trained)
        lines.append(f"| {arch} | {label} | {aug} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="*", default=["small_cnn"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--augs", nargs="*", default=["flip", "blur+jpeg"], choices=list(AUGS))
    ap.add_argument("--in-domain-only", action="store_true", help="only train on all three families")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one case (JSON) in this process
    args = ap.parse_args()
    import torch

    from dfsearch.data.synth import FAMILIES, default_dataset

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    root = str(default_dataset(families=FAMILIES, progress=False))
    if args.one:
        c = json.loads(args.one)
        print(json.dumps(one_case(c["arch"], tuple(c["train"]), c["aug"], c["seed"], args.steps, args.batch, root)))
        return
    import subprocess

    held_out = (None,) if args.in_domain_only else (None, *FAMILIES)
    cases = [(arch, seed, aug, tuple(f for f in FAMILIES if f != held))
             for arch in args.archs for seed in args.seeds for aug in args.augs for held in held_out]
    rows = []
    for i, (arch, seed, aug, train) in enumerate(cases):
        t0 = time.perf_counter()
        spec = json.dumps(dict(arch=arch, seed=seed, aug=aug, train=train))
        p = subprocess.run([sys.executable, __file__, "--one", spec, "--steps", str(args.steps), "--batch",
                            str(args.batch)], capture_output=True, text=True)
        try:
            row = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            sys.exit(f"case {spec} failed:\n{p.stderr[-2000:]}")
        rows.append(row)
        held = [f for f, m in row["per_family"].items() if not m["seen"]]
        print(f"[{i + 1}/{len(cases)}] {arch} seed {seed} {aug} trained on {'+'.join(train)}: "
              + ", ".join(f"{f} {m['val_auc']:.3f}" for f, m in row["per_family"].items())
              + (f" (held out: {held[0]})" if held else "") + f"  {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        import numpy as np

        print(table(rows, FAMILIES))
        se = np.mean([m["auc_se"] for r in rows for m in r["per_family"].values()])
        print(f"\n*italic*: a family the model did not see in training. Test ROC-AUC of each family's fakes against "
              f"all real test images: the mean over seeds (their range); one run's bootstrap SE is ~{se:.3f}.")


if __name__ == "__main__":
    main()
