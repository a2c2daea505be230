"""Per-architecture numbers on this machine, and resize vs crop on native-resolution data.

    .venv/bin/python bench/zoo.py                          # every registered arch, then resize vs crop
    .venv/bin/python bench/zoo.py --archs small_cnn resnet18 --skip-views
    .venv/bin/python bench/zoo.py --only-views             # just the resize-vs-crop comparison

**Per arch** (each in its own subprocess, so that its peak memory is its own): parameters, train and
eval images/s, peak resident memory, and val accuracy / AUC after a fixed short budget, on the
embedded benchmark (``default_dataset()``: 3000 train / 600 val images, 64 px) at the size the cpu
profile gives the arch (``fit_img_size(arch, 64, zoom)``), through the view a trial resolves
(``auto`` on 64 px images: the image itself, or at zoom Z a random ``64 / Z`` px crop shown as Z x Z
replicated pixels; evaluation on the arch's ``eval_view``, tiles averaged). The budget is the cpu
profile's: ``--steps 120`` optimizer steps of ``--batch 64`` images (4 epochs x 30 steps x 2
workers x 32), from scratch, AdamW at the geometric middle of the arch's ``all_models.yaml`` lr and
weight-decay ranges (its zoom and eval view: the first of a choice), one cosine cycle with 10 %
warm-up, horizontal flips; the training crop is one random window per batch (a shortcut of the
per-image pipeline, which the resize-vs-crop case uses). ``--zoom`` / ``--lr`` / ``--eval-view`` /
``--input-filter`` override the space for every arch (to compare). A plain single-process
loop on preloaded tensors (2 threads): what the model costs, without Ray's start-up. The AUC's
standard error is a bootstrap over the val set (scipy.stats.bootstrap, 1000 resamples, paired);
``z`` = (AUC - 0.5) / SE, and "learns" means z >= 5 (issue #11, section 4).

**Resize vs crop** (one run, side by side): a synthetic set at 256 px (the embedded generator at
``size=256``: fakes carry a x2 upsampling trace, as the Kaggle 140k StyleGAN fakes do), small_cnn at
64 px input with the same seed, steps and data, seeing either the whole image resized 256 -> 64
(``input_policy: resize``) or random 64 px crops at native resolution (``crop``; centre crop at
evaluation), through the project's own pipelines (``dfsearch.data.views`` / ``build_transform``).
Prints markdown tables (``--json``: one JSON document).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _mid(spec, default):
    """The geometric middle of a log-uniform range (a constant as it is; a choice: its first)."""
    if not isinstance(spec, tuple):
        return spec if spec is not None else default
    kind, args = spec
    if kind == "log_uniform":
        return math.sqrt(args[0] * args[1])
    if kind == "choice":
        return args[0]
    return (args[0] + args[1]) / 2


def recipe(arch: str) -> dict:
    """lr / weight decay from the arch's all_models.yaml ranges; its zoom, eval view and input filter (the first choice)."""
    from dfsearch import search_space

    params = search_space.load("all_models").archs[arch]
    return dict(lr=_mid(params.get("lr"), 1e-3), weight_decay=_mid(params.get("weight_decay"), 0.01),
                zoom=int(_mid(params.get("zoom"), 1)), eval_view=_mid(params.get("eval_view"), "center"),
                eval_tiles=int(_mid(params.get("eval_tiles"), 2)),
                input_filter=_mid(params.get("input_filter"), "none"))


def load_split(root: str, items: list, transform):
    """``items`` (a split of the DatasetIndex) as one tensor through ``transform`` (deterministic: eval pipelines only)."""
    import torch

    from dfsearch.data.loading import ImageList

    ds = ImageList(root, items, transform)
    xs, ys = zip(*[(x, y) for x, y, _ in (ds[i] for i in range(len(ds)))])
    return torch.stack(xs), torch.tensor(ys, dtype=torch.float32)


def auc_with_se(y, p, seed: int = 0) -> tuple[float, float]:
    import numpy as np
    from scipy.stats import bootstrap
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y), np.asarray(p)
    res = bootstrap((y, p), lambda a, b: roc_auc_score(a, b) if 0 < a.sum() < len(a) else 0.5, paired=True,
                    vectorized=False, n_resamples=1000, method="percentile", random_state=seed)
    return float(roc_auc_score(y, p)), float(res.standard_error)


def train_eval(model, x_tr, y_tr, x_va, y_va, *, steps: int, batch: int, lr: float, weight_decay: float,
               seed: int = 0, augment=None, crop=None) -> dict:
    """One straight loop: AdamW, cosine with 10 % warm-up, hflip; then val accuracy / AUC (+ SE).
    ``augment(idx, generator) -> float batch`` replaces the default (preloaded float tensors,
    flipped, then ``crop``: the view's training ops, on the whole batch) when the pipeline is per
    image (the resize-vs-crop case). ``x_va`` may hold tiles (N, K, C, H, W): their mean counts."""
    import torch
    from timm.scheduler import CosineLRScheduler

    from dfsearch.data.views import predict_probs
    from dfsearch.models import loss_fn

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = CosineLRScheduler(opt, t_initial=steps, warmup_t=max(1, steps // 10), warmup_lr_init=lr / 100,
                              t_in_epochs=False)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(y_tr), (batch,), generator=g)
        if augment is None:
            x = x_tr[idx]
            flip = torch.rand(batch, generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            if crop is not None:  # one random window for the batch (a shortcut of the per-image pipeline)
                torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
                x = crop(x)
        else:
            x = augment(idx, g)
        loss = loss_fn(model(x), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step_update(step + 1)
    train_s = time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        p = torch.cat([predict_probs(model, x_va[i:i + 100]) for i in range(0, len(y_va), 100)]).numpy()
    eval_s = time.perf_counter() - t0
    auc, se = auc_with_se(y_va.numpy(), p, seed)
    acc = float(((p > 0.5) == y_va.numpy().astype(bool)).mean())
    return dict(val_acc=acc, val_auc=auc, auc_se=se, z=(auc - 0.5) / se if se > 0 else float("inf"),
                train_img_s=steps * batch / train_s, eval_img_s=len(y_va) / eval_s, train_s=train_s,
                final_loss=loss.item(), probs=p)


def one_arch(arch: str, steps: int, batch: int, seed: int, overrides: dict | None = None,
             families: tuple | None = None) -> dict:
    """Runs in its own process: build, preload, train, evaluate; peak RSS of this process. With
    ``families`` (the benchmark's generator families), the data has them all and the val AUC is
    also given per family (that family's fakes against all the real val images)."""
    import torch

    from torchvision.transforms import v2 as T

    from dfsearch import models
    from dfsearch.data.discover import discover
    from dfsearch.data.loading import build_transform
    from dfsearch.data.synth import default_dataset
    from dfsearch.data.views import View, resolve, spatial_ops

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(seed)
    r = recipe(arch)
    r.update({k: v for k, v in (overrides or {}).items() if v is not None})
    size = models.fit_img_size(arch, 64, r["zoom"])
    dc = models.data_config(arch, size)
    view = resolve("auto", size, [(64, 64)], zoom=r["zoom"], eval_view=r["eval_view"],
                   eval_tiles=r["eval_tiles"])  # as a trial resolves it
    root = str(default_dataset(families=families))
    index = discover(root)
    # training: the whole 64 px images preloaded, then the view's random crop (+ zoom) per batch
    x_tr, y_tr = load_split(root, index.splits["train"], build_transform(View("native", 64), dc["mean"], dc["std"]))
    crop = T.Compose(spatial_ops(view, train=True)) if view.policy != "native" else None
    x_va, y_va = load_split(root, index.splits["valid"], build_transform(view, dc["mean"], dc["std"], None))
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = models.create(arch, pretrained=False, num_classes=1, img_size=size, input_filter=r["input_filter"])
    out = train_eval(model, x_tr, y_tr, x_va, y_va, steps=steps, batch=batch, seed=seed, crop=crop,
                     lr=r["lr"], weight_decay=r["weight_decay"])
    probs = out.pop("probs")
    if families:
        out["per_family"] = per_family(index.splits["valid"], probs, seed)
    return dict(arch=arch, img_size=size, policy=view.policy, params_m=models.count_params(model) / 1e6, **r, **out,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, data_rss_mb=rss_data)


def per_family(items, probs, seed: int) -> dict:
    """``{family: {"val_auc", "auc_se"}}``: each family's fakes against all the real images."""
    import numpy as np

    from dfsearch.data.discover import fake_source

    y = np.array([label for _, label in items])
    src = np.array([fake_source(sid) if label else "" for sid, label in items], dtype=object)
    out = {}
    for fam in sorted(set(src) - {""}):
        keep = (y == 0) | (src == fam)
        auc, se = auc_with_se(y[keep], np.asarray(probs)[keep], seed)
        out[fam] = dict(val_auc=auc, auc_se=se)
    return out


def views_case(steps: int, batch: int, seed: int, n: int) -> list[dict]:
    """small_cnn on 256 px images: the whole image resized to 64 vs 64 px crops at native resolution."""
    import torch

    from dfsearch import models
    from dfsearch.data.discover import discover
    from dfsearch.data.loading import ImageList, build_transform
    from dfsearch.data.synth import generate
    from dfsearch.data.views import View

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    dc = models.data_config("small_cnn", 64)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = str(generate(Path(tmp) / "big", n=n, size=256, seed=seed, progress=False))
        print(f"  generated {n} + {n // 5} + {n // 5} images at 256 px in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        index = discover(root)
        rows = []
        for policy in ("resize", "crop"):
            view = View(policy, 64)
            train_ds = ImageList(root, index.splits["train"], build_transform(view, dc["mean"], dc["std"],
                                                                              _hflip()))
            x_va, y_va = load_split(root, index.splits["valid"], build_transform(view, dc["mean"], dc["std"], None))
            y_tr = torch.tensor([y for _, y in index.splits["train"]], dtype=torch.float32)

            def augment(idx, g, ds=train_ds):  # decoded + cropped per step: a fresh random crop each time
                torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
                return torch.stack([ds[int(i)][0] for i in idx])

            torch.manual_seed(seed)
            r = recipe("small_cnn")
            model = models.create("small_cnn", pretrained=False, num_classes=1, img_size=64)
            out = train_eval(model, None, y_tr, x_va, y_va, steps=steps, batch=batch, seed=seed,
                             augment=augment, lr=r["lr"], weight_decay=r["weight_decay"])
            out.pop("probs")
            rows.append(dict(policy=policy, **out))
            print(f"  {policy}: val_acc {out['val_acc']:.3f} val_auc {out['val_auc']:.3f} "
                  f"(SE {out['auc_se']:.3f})", file=sys.stderr, flush=True)
        return rows


def _hflip():
    from dfsearch.data.loading import Augment

    return Augment(hflip=0.5)


def _zoo_table(rows: list[dict]) -> str:
    lines = ["| arch | input | zoom | filter | params | lr | train img/s | eval img/s | peak RSS | val acc | val AUC ± SE | z | learns |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | | | | | | | | | | | | error: {r['error'][:80]} |")
            continue
        lines.append(f"| {r['arch']} | {r['img_size']} | {r['zoom']} | {r['input_filter']} | {r['params_m']:.2f}M | {r['lr']:.1e} | {r['train_img_s']:.0f} "
                     f"| {r['eval_img_s']:.0f} | {r['peak_rss_mb'] / 1024:.2f} GiB | {r['val_acc']:.3f} "
                     f"| {r['val_auc']:.3f} ± {r['auc_se']:.3f} | {r['z']:.1f} | {'yes' if r['z'] >= 5 else 'no'} |")
    return "\n".join(lines)


def _family_table(rows: list[dict], families) -> str:
    """Val AUC ± SE per generator family (its fakes against all the real val images), best per column in bold."""
    ok = [r for r in rows if "per_family" in r]
    best = {f: max((r["per_family"][f]["val_auc"] for r in ok), default=None) for f in families}
    lines = ["| arch | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    for r in ok:
        cells = []
        for f in families:
            m = r["per_family"][f]
            cell = f"{m['val_auc']:.3f} ± {m['auc_se']:.3f}"
            cells.append(f"**{cell}**" if m["val_auc"] == best[f] else cell)
        lines.append(f"| {r['arch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _views_table(rows: list[dict]) -> str:
    lines = ["| input policy | val acc | val AUC ± SE | train img/s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['policy']} | {r['val_acc']:.3f} | {r['val_auc']:.3f} ± {r['auc_se']:.3f} | {r['train_img_s']:.0f} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="*", help="default: every registered arch")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--view-images", type=int, default=1000, help="training images of the 256 px set")
    ap.add_argument("--view-steps", type=int, default=300)
    ap.add_argument("--skip-views", action="store_true")
    ap.add_argument("--only-views", action="store_true")
    ap.add_argument("--zoom", type=int, help="override every arch's zoom (default: its all_models.yaml one)")
    ap.add_argument("--lr", type=float, help="override every arch's lr")
    ap.add_argument("--eval-view", choices=("center", "tiles"), help="override every arch's eval view")
    ap.add_argument("--input-filter", choices=("none", "srm"), help="override every arch's input filter")
    ap.add_argument("--families", help="train on the benchmark with these generator families (comma-separated, "
                                       "e.g. upsample,blend,spectral) and give the val AUC per family too")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one arch in this process
    args = ap.parse_args()
    families = tuple(args.families.split(",")) if args.families else None
    if args.one:
        print(json.dumps(one_arch(args.one, args.steps, args.batch, args.seed,
                                  dict(zoom=args.zoom, lr=args.lr, eval_view=args.eval_view,
                                       input_filter=args.input_filter), families)))
        return
    from dfsearch import models
    from dfsearch.data.synth import default_dataset

    default_dataset(families=families)  # generated once, before the timed subprocesses
    rows = []
    for i, arch in enumerate([] if args.only_views else (args.archs or models.known_archs())):
        print(f"[{i + 1}] {arch} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        extra = [a for k in ("zoom", "lr", "eval_view", "input_filter", "families") if getattr(args, k) is not None
                 for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
        p = subprocess.run([sys.executable, __file__, "--one", arch, "--steps", str(args.steps), "--batch",
                            str(args.batch), "--seed", str(args.seed), *extra], capture_output=True, text=True)
        try:
            row = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            row = dict(arch=arch, error=(p.stderr.strip().splitlines() or ["no output"])[-1])
        rows.append(row)
        print(f"    {time.perf_counter() - t0:.0f} s: " + (f"val_auc {row['val_auc']:.3f} z {row['z']:.1f}"
                                                          if "error" not in row else row["error"]),
              file=sys.stderr, flush=True)
    views = [] if args.skip_views else views_case(args.view_steps, 32, args.seed, args.view_images)
    if args.json:
        print(json.dumps(dict(archs=rows, views=views), indent=1))
        return
    if rows:
        print(_zoo_table(rows))
        if families:
            print("\n" + _family_table(rows, families))
        learn = sum(1 for r in rows if r.get("z", 0) >= 5)
        print(f"\n{learn}/{len(rows)} archs learn (val AUC > 0.5 by >= 5 bootstrap SE) in {args.steps} steps "
              f"of {args.batch}.")
    if views:
        print("\n" + _views_table(views))


if __name__ == "__main__":
    main()
