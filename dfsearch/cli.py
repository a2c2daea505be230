"""dfsearch: deepfake-detector search, ensembling and prediction.

Subcommands ``inspect``, ``synth``, ``models``, ``train``, ``search``, ``ensemble``, ``predict``, ``evaluate``,
``export``, ``serve``, ``report``, ``cluster-check``: each parses its
flags here (or in its own ``*_cli`` module) and hands plain values to one module."""

from __future__ import annotations

import argparse
import sys

from dfsearch import ensemble_cli, evaluate, export, predict, train_cli
from dfsearch.errors import run_command


def _add_search(sub):
    from dfsearch.search import cli as search_cli

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
    p.add_argument("--families", default="upsample",
                   help="generator families of the fakes, comma-separated: upsample (GAN x2 upsampling), blend "
                        "(face-swap-like pasted region), spectral (camera-less high-frequency noise)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: __import__("dfsearch.data.synth", fromlist=["run"]).run(a))


def _add_models(sub):
    p = sub.add_parser("models", help="the architectures dfsearch can search: sizes, layer groups, weights")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_models)


def _models(args) -> int:
    import json

    from tqdm import tqdm

    from dfsearch import models

    names = models.known_archs()
    rows = [models.describe(a) for a in tqdm(names, desc="architectures", file=sys.stderr, disable=args.json)]
    if args.json:
        print(json.dumps({"models": rows}))
        return 0
    import pandas as pd

    table = pd.DataFrame([{
        "name": r["name"], "family": r["family"], "source": r["source"], "params": f"{r['params'] / 1e6:.2f}M",
        "groups": r["groups"], "input": r["input_size"], "min": r["min_img_size"],
        "pretrained": ", ".join(r["pretrained_tags"]) or "-"} for r in rows])
    print(table.to_string(index=False, max_colwidth=60))
    print(f"{len(rows)} architectures. input: the side their pretrained weights were trained at; min: the "
          f"smallest side they accept; groups: the upper bound of unfrozen; pretrained: tags for "
          f"`pretrained:` (true = the first), or give a weights file or directory (<dir>/<arch>.safetensors)")
    return 0


def _add_cluster_check(sub):
    p = sub.add_parser("cluster-check", help="check cluster configs offline before `ray up` / `kubectl apply`: "
                                             "Ray's validation, the Ray version, the head, credentials")
    p.add_argument("files", nargs="+", help="Ray cluster launcher YAML (cluster.yaml, deploy/onprem.yaml) or "
                                            "KubeRay manifest (deploy/kuberay.yaml)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout: file -> findings")
    p.set_defaults(func=lambda a: __import__("dfsearch.cluster_config", fromlist=["run"]).run(a))


def _add_serve(sub):
    from dfsearch import serve  # imports neither torch nor Gradio

    serve.add_parser(sub)


def _add_report(sub):
    p = sub.add_parser("report", help="one self-contained HTML page about a run: data, search, ensemble, commands")
    p.add_argument("run", nargs="?", help="run folder (runs/<name>/ of a search, or a `dfsearch train --out` folder) "
                                          "or its URI; default: the latest runs/*/ holding a predictions.parquet")
    p.add_argument("--out", help="HTML file to write (default: RUN/report.html)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout: path, bytes, sections")
    p.set_defaults(func=lambda a: __import__("dfsearch.report.cli", fromlist=["run"]).run(a))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfsearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_inspect(sub)
    _add_synth(sub)
    _add_models(sub)
    train_cli.add_parser(sub)
    _add_search(sub)
    ensemble_cli.add_parser(sub)
    predict.add_parser(sub)
    evaluate.add_parser(sub)
    export.add_parser(sub)
    _add_cluster_check(sub)
    _add_serve(sub)
    _add_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dfsearch.commands import command_line

    args = build_parser().parse_args(argv)
    args.command_line = command_line("dfsearch", argv)  # recorded in the run folder by what writes one
    return run_command(f"dfsearch {args.command}", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
