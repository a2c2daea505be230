"""dfsearch: deepfake-detector search, ensembling and prediction.

Subcommands ``inspect``, ``synth``, ``train``, ``search``, ``ensemble``, ``predict``: each parses its
flags here (or in its own ``*_cli`` module) and hands plain values to one module."""

from __future__ import annotations

import argparse
import sys

from dfsearch import ensemble_cli, predict
from dfsearch.errors import DfsearchError


def _add_search(sub):
    from dfsearch import search_cli

    p = sub.add_parser("search", help="the hyperparameter search (same as run_search.py)")
    search_cli.add_arguments(p)
    p.set_defaults(func=search_cli.run)


def _add_inspect(sub):
    p = sub.add_parser("inspect", help="counts, sizes, imbalance and unreadable files of a dataset")
    p.add_argument("data", help="dataset folder (a known Kaggle layout or ROOT/{train,valid,test}/{real,fake})")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="check image headers only (skip full decode)")
    p.set_defaults(func=lambda a: __import__("dfsearch.data.inspect", fromlist=["run"]).run(a))


def _add_synth(sub):
    from dfsearch.data.synth import DEFAULTS

    p = sub.add_parser("synth", help="write the synthetic real-vs-fake benchmark")
    p.add_argument("out", help="output folder (replaced)")
    p.add_argument("--n", type=int, default=DEFAULTS["n"], help="training images (val/test get n/5 each)")
    p.add_argument("--size", type=int, default=DEFAULTS["size"], help="image side in pixels")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--difficulty", type=float, default=DEFAULTS["difficulty"], help="0 (easy) .. 1 (hard)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: __import__("dfsearch.data.synth", fromlist=["run"]).run(a))


def _unfrozen(v: str):
    if v == "all":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r}: use a number of layer groups or 'all'") from None


def _add_train(sub):
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
    p.add_argument("--num-classes", type=int, default=1, choices=[1, 2])
    p.add_argument("--oversample", action="store_true", help="oversample the minority class in train")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader processes per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-failures", type=int, default=0,
                   help="restart the worker group from the latest checkpoint this many times")
    p.add_argument("--address", help="connect to an existing Ray cluster (e.g. auto)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--list-archs", action="store_true", help="list the known architectures and exit")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from dfsearch import models

    if args.list_archs:
        for a in models.known_archs():
            print(a)
        return 0
    from dfsearch.train import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfsearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_inspect(sub)
    _add_synth(sub)
    _add_train(sub)
    _add_search(sub)
    ensemble_cli.add_parser(sub)
    predict.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DfsearchError as e:
        print(f"dfsearch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dfsearch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
