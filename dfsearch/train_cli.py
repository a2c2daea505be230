"""``dfsearch train``: one model as one Ray Train DDP run (``dfsearch.train.fit_trial``), then a
summary and the prediction store in ``--out``. Flags are checked before Ray starts."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from dfsearch.errors import DfsearchError


def _unfrozen(v: str):
    if v == "all":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r}: use a number of layer groups or 'all'") from None


def _loader_workers(v: str):
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r}: a number of processes (0-64) or auto") from None


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train one model as a Ray Train DDP job")
    p.add_argument("--arch", default="small_cnn", help="architecture (see `dfsearch train --list-archs`)")
    p.add_argument("--data", help="dataset folder (default: the embedded synthetic benchmark)")
    p.add_argument("--out", default="runs/train", help="output folder (checkpoints, predictions)")
    p.add_argument("--name", help="run name (default: train-ARCH-TIMESTAMP)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DDP workers (Ray Train)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl, AMP)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4, help="L2 strength")
    p.add_argument("--unfrozen", type=_unfrozen, default="all", help="train only the top K layer groups")
    p.add_argument("--pretrained", default="none",
                   help="none | timm (hub/cache) | PATH to a weights file | DIR holding ARCH.safetensors")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--input-policy", default="auto", choices=("auto", "crop", "resize", "native"),
                   help="what the network sees: crops at native resolution (auto, when the images are large "
                        "enough), the whole image resized, or the image as it is")
    p.add_argument("--zoom", type=int, default=1,
                   help="each pixel of the view as ZOOM x ZOOM input pixels (a crop of img-size/ZOOM)")
    p.add_argument("--eval-view", default="center", choices=("center", "tiles"),
                   help="evaluation and predict: the centre crop, or the mean over a 2 x 2 grid of crops")
    p.add_argument("--input-filter", default="none", choices=("none", "srm"),
                   help="a fixed filter before the first layer: srm = high-pass residuals (dfsearch.models.filters)")
    p.add_argument("--num-classes", type=int, default=1, choices=[1, 2])
    p.add_argument("--oversample", action="store_true", help="oversample the minority class in train")
    p.add_argument("--loader-workers", type=_loader_workers, default=0,
                   help="DataLoader processes per worker, or auto (on a GPU: the node's CPUs per GPU less one, "
                        "at most 8; on CPU 0)")
    p.add_argument("--decode-cache", default="auto", choices=("auto", "on", "off"),
                   help="decode every image once per node into a local uint8 cache (auto: when it takes at most a "
                        "quarter of the free local disk)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-failures", type=int, default=0,
                   help="restart the worker group from the latest checkpoint this many times")
    p.add_argument("--address", help="connect to an existing Ray cluster (e.g. auto)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--list-archs", action="store_true", help="list the known architectures and exit")
    p.set_defaults(func=run)
    return p


def _train_config(args):
    """The TrainConfig the flags describe; a bad value is a DfsearchError naming the field."""
    from pydantic import ValidationError

    from dfsearch.config import TrainConfig

    pretrained = {"none": False, None: False, "timm": True}.get(args.pretrained, args.pretrained)
    try:
        return TrainConfig(arch=args.arch, pretrained=pretrained, epochs=args.epochs,
                           batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                           unfrozen=args.unfrozen, img_size=args.img_size, seed=args.seed,
                           input_policy=args.input_policy, zoom=args.zoom, eval_view=args.eval_view,
                           input_filter=args.input_filter,
                           oversample=args.oversample, num_classes=args.num_classes,
                           loader_workers=args.loader_workers, decode_cache=args.decode_cache)
    except ValidationError as e:
        raise DfsearchError("invalid training option: " + "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None


def run(args) -> int:
    from dfsearch import models
    from dfsearch.cluster import check_address
    from dfsearch.remote import is_uri

    if args.list_archs:
        print("\n".join(models.known_archs()))
        return 0
    if is_uri(args.out):  # not taken for a local folder "s3:/..."
        raise DfsearchError(f"--out {args.out}: `dfsearch train` writes a local folder; storage URIs are for "
                            f"`run_search.py --out` (or copy the folder afterwards)")
    check_address(args.address)  # before the default dataset is generated
    cfg = _train_config(args)
    if cfg.pretrained is not False:  # missing weights fail now, not in a worker after Ray started
        models.create(cfg.arch, pretrained=cfg.pretrained, num_classes=cfg.num_classes, img_size=cfg.img_size)
    from dfsearch.data.discover import discover
    from dfsearch.data.synth import FAMILIES, default_dataset

    index = discover(args.data or default_dataset(families=FAMILIES, progress=not args.json))
    for note in index.notes:
        print(f"dfsearch: {note}", file=sys.stderr)
    out = Path(args.out).resolve()
    name = args.name or f"train-{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        summary = _fit(args, cfg, index, out, name)  # with --json the workers' output goes to stderr
    from dfsearch import commands, store

    store.write_store([summary], out)
    commands.record(out, commands.typed(args, "dfsearch train"))
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str))
    if args.json:
        print(json.dumps(summary, default=str), file=real_stdout)
    else:
        print(format_summary(summary, args.workers, out))
    return 1 if summary["error"] else 0


def _fit(args, cfg, index, out: Path, name: str) -> dict:
    from dfsearch.cluster import check_resources, init_ray
    from dfsearch.train import fit_trial, trial_summary

    started = init_ray(args.address)
    try:
        check_resources(args.workers, args.gpu, gpus_per_worker=1.0)
        t0 = time.time()
        result = fit_trial(cfg, index.to_json(), workers=args.workers, use_gpu=args.gpu,
                           storage=str(out), name=name, candidate=name, max_failures=args.max_failures)
    finally:
        if started:
            import ray

            ray.shutdown()
    summary = trial_summary(result, cfg, name, trial_id=name)
    summary["wall_time_s"] = time.time() - t0
    return summary


def format_summary(s: dict, workers: int, out: Path) -> str:
    from dfsearch import commands, store

    b = s["best"]
    lines = [f"\n{s['candidate']}: {s['arch']}, {workers} worker(s), {s['wall_time_s']:.0f}s"]
    if s["error"]:
        lines.append(f"  FAILED: {s['error']}")
    if b:
        lines += [f"  best epoch {b.get('best_epoch')}: val_acc {b['val_acc']:.3f}  val_auc {b['val_auc']:.3f}  "
                  f"val_loss {b['val_loss']:.4f}  test_acc {b.get('test_acc', float('nan')):.3f}",
                  f"  trainable params {b['trainable_params']:,}; skipped files {b['skipped_files']}",
                  f"  checkpoint  {s['checkpoint']}",
                  f"  predictions {out / store.PREDICTIONS_FILE} (candidates: {out / store.CANDIDATES_FILE})"]
    return "\n".join(lines)
