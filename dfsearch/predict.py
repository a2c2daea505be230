"""``dfsearch predict``: P(fake) for images from an ensemble written by the ``ensemble`` command.

    dfsearch predict --ensemble runs/x/ensemble/ensemble.json PATH... [--json | --csv FILE]
                     [--batch-size N] [--device cpu|cuda]

PATHs are image files or folders (searched recursively for .jpg/.jpeg/.png in any case, sorted).
Each member's checkpoint is loaded weights-only (``dfsearch.checkpoint.load_model``) with the
preprocessing saved in its config (input size, mean, std; the evaluation transform of training).
Every image is decoded once; each member sees it through its own transform. The ensemble's
P(fake) is the weighted average of the members' ``prob_fake``, each through its own Platt map
(``members[i].calibration``, fitted on val before selection), with the weights of ensemble.json
(normalised to sum to 1), calibrated with the Platt map the ensemble command fitted on val
(``dfsearch.ensemble.calibration``); the label is ``fake`` when that is >= the threshold it chose on
val, else ``real``. An ensemble.json from before calibration still loads: raw average, threshold 0.5,
and the command says so.

Unreadable images are reported one by one (path and reason) and do not stop the batch.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfsearch.data.views import View
from dfsearch.errors import DfsearchError

THRESHOLD = 0.5
PROGRESS_MIN = 16  # show a progress bar from this many images on


@dataclass
class Member:
    candidate: str
    weight: float
    checkpoint: str
    arch: str
    view: View  # what the member's network saw in evaluation: predict shows it the same
    mean: tuple
    std: tuple
    model: object = field(repr=False)  # torch.nn.Module in eval mode
    slope: float = 1.0      # the member's own Platt map, fitted on val before selection (identity:
    intercept: float = 0.0  # an ensemble.json from before candidates were calibrated)

    @property
    def preprocessing(self) -> tuple:
        """Members with equal preprocessing share one transformed batch."""
        return (self.view, self.mean, self.std)

    def describe(self) -> dict:
        return {"candidate": self.candidate, "weight": self.weight, "checkpoint": self.checkpoint,
                "arch": self.arch, "img_size": self.view.img_size, "input_policy": self.view.policy,
                "eval_view": self.view.eval_view, "zoom": self.view.zoom,
                "input_filter": getattr(self.model, "input_filter", "none"), "mean": list(self.mean), "std": list(self.std),
                "calibration": {"slope": self.slope, "intercept": self.intercept}}


def _read_ensemble(path: Path) -> dict:
    if not path.is_file():
        raise DfsearchError(f"--ensemble {path}: no such file; run `ensemble.py --run DIR` first (it writes "
                            f"<run>/ensemble/ensemble.json)")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DfsearchError(f"--ensemble {path}: not valid JSON ({e})") from None
    members = doc.get("members") if isinstance(doc, dict) else None
    if not members or not all(isinstance(m, dict) and "candidate" in m and "weight" in m for m in members):
        raise DfsearchError(f"--ensemble {path}: needs a non-empty 'members' list of "
                            f"{{candidate, weight, checkpoint}} (as written by the ensemble command)")
    return doc


def _checkpoint_path(ckpt: str, doc: dict, ensemble_path: Path) -> Path:
    """Absolute paths as they are; relative ones against the store folder ("source"), else the
    folder of ensemble.json, else its parent (a run folder that was moved or fetched)."""
    p = Path(ckpt.removeprefix("file://"))
    if p.is_absolute() or p.exists():
        return p
    bases = ([Path(doc["source"])] if doc.get("source") else []) + [ensemble_path.parent, ensemble_path.parent.parent]
    for base in bases:  # the store folder where it was made; else where it sits now (<run>/ensemble/)
        if (base / p).is_dir():
            return base / p
    return bases[0] / p


@dataclass(frozen=True)
class Calibration:
    """The blend's Platt map and decision threshold from ensemble.json (identity and 0.5 for a
    file written before the ensemble command calibrated)."""

    slope: float = 1.0
    intercept: float = 0.0
    threshold: float = THRESHOLD
    calibrated: bool = False

    def describe(self) -> dict:
        return {"calibrated": self.calibrated, "slope": self.slope, "intercept": self.intercept,
                "threshold": self.threshold}


def _calibration(doc: dict, path: Path) -> Calibration:
    """The ``calibration`` of ensemble.json; DfsearchError naming the field when it is malformed."""
    cal = doc.get("calibration")
    if cal is None:
        return Calibration()
    try:
        a, b, thr = float(cal["slope"]), float(cal["intercept"]), float(cal["threshold"])
    except (TypeError, KeyError, ValueError):
        a = b = thr = float("nan")
    if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(thr)):  # a threshold above 1: nothing is fake
        raise DfsearchError(f"--ensemble {path}: field calibration needs numbers slope, intercept and "
                            f"threshold; got {cal!r} (re-run the ensemble command to rewrite it)")
    return Calibration(a, b, thr, True)


def _member_map(m: dict, path: Path) -> tuple[float, float]:
    """A member's own Platt map (``calibration: {slope, intercept}``; absent: identity)."""
    cal = m.get("calibration")
    if cal is None:
        return 1.0, 0.0
    try:
        a, b = float(cal["slope"]), float(cal["intercept"])
    except (TypeError, KeyError, ValueError):
        a = b = float("nan")
    if not (np.isfinite(a) and np.isfinite(b)):
        raise DfsearchError(f"--ensemble {path}: member {m['candidate']!r}: field calibration needs numbers slope "
                            f"and intercept; got {cal!r} (re-run the ensemble command to rewrite it)")
    return a, b


def load_ensemble(ensemble_json_path, device: str = "cpu") -> tuple[list[Member], Calibration]:
    """The ensemble's members with their models (eval mode, on ``device``) and preprocessing, and
    its calibration, from one read of ensemble.json.

    Raises DfsearchError when the file is missing or malformed (its calibration included), a member
    has no checkpoint, its checkpoint is missing or corrupted, or the weights are not positive.
    """
    path = Path(ensemble_json_path)
    doc = _read_ensemble(path)
    calibration = _calibration(doc, path)  # before any checkpoint is loaded
    return _members(doc, path, device), calibration


def _members(doc: dict, path: Path, device: str) -> list[Member]:
    from dfsearch.checkpoint import load_model

    total = sum(float(m["weight"]) for m in doc["members"])
    if not total > 0 or any(float(m["weight"]) < 0 for m in doc["members"]):
        raise DfsearchError(f"--ensemble {path}: member weights must be >= 0 with a positive sum")
    members = []
    for m in doc["members"]:
        name = m["candidate"]
        if not m.get("checkpoint"):
            raise DfsearchError(f"--ensemble {path}: member {name!r} has no checkpoint (its store had no "
                                f"candidates.parquet), so its model cannot be run")
        ckpt = _checkpoint_path(str(m["checkpoint"]), doc, path)
        if not ckpt.is_dir():
            raise DfsearchError(f"member {name!r}: checkpoint folder {ckpt} does not exist")
        try:
            model, config = load_model(ckpt, device=device)
        except DfsearchError as e:
            raise DfsearchError(f"member {name!r}: unusable checkpoint {ckpt}: {e}") from None
        data, train = config.get("data", {}), config["train"]
        size = int(data["input_size"][-1]) if data.get("input_size") else int(train["img_size"])
        # a checkpoint from before input policies was trained on resized images
        view = View(train.get("input_policy", "resize"), size, train.get("eval_view", "center"),
                    int(train.get("eval_tiles", 2)), int(train.get("zoom", 1)))
        slope, intercept = _member_map(m, path)
        members.append(Member(candidate=name, weight=float(m["weight"]) / total, checkpoint=str(ckpt),
                              arch=str(train.get("arch", "")), view=view, mean=tuple(data["mean"]),
                              std=tuple(data["std"]), model=model, slope=slope, intercept=intercept))
    return members


def find_images(paths) -> tuple[list[Path], list[dict]]:
    """Image files named by ``paths`` (files as given; folders searched recursively for
    .jpg/.jpeg/.png, any case, sorted), without duplicates, plus errors for paths that do not exist."""
    from dfsearch.data.images import is_image_name

    files, errors, seen = [], [], set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f.name))
        elif p.exists():
            found = [p]
        else:
            errors.append({"path": str(p), "reason": "no such file or directory"})
            continue
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    return files, errors


def score_images(members: list[Member], images: list, device: str = "cpu",
                 calibration: Calibration = Calibration(),
                 transforms: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(prob_fake, member_probs)`` for decoded RGB PIL ``images``: the ensemble's calibrated
    P(fake), shape ``(N,)``, and each member's P(fake) through its own Platt map, shape
    ``(len(members), N)``: the numbers the blend averages (``transforms``: ``{m.preprocessing:
    build_transform(...)}``, built here when not given)."""
    import torch

    from dfsearch.data.loading import build_transform
    from dfsearch.data.views import predict_probs
    from dfsearch.ensemble.calibration import calibrate

    if transforms is None:
        transforms = {m.preprocessing: build_transform(*m.preprocessing) for m in members}
    x = {key: torch.stack([tf(img) for img in images]).to(device) for key, tf in transforms.items()}
    p = np.zeros(len(images), dtype=np.float64)
    per_member = np.zeros((len(members), len(images)), dtype=np.float64)
    with torch.no_grad():
        for i, m in enumerate(members):
            pm = predict_probs(m.model, x[m.preprocessing]).cpu().numpy().astype(np.float64)
            per_member[i] = calibrate(pm, m.slope, m.intercept) if (m.slope, m.intercept) != (1.0, 0.0) else pm
            p += m.weight * per_member[i]
    if calibration.calibrated:
        p = calibrate(p, calibration.slope, calibration.intercept)
    return p, per_member


def predict_images(members: list[Member], files: list[Path], batch_size: int = 64, device: str = "cpu",
                   progress: bool = False, calibration: Calibration = Calibration()) -> tuple[list[dict], list[dict]]:
    """``([{path, prob_fake, label}], [{path, reason}])`` for ``files``, in order."""
    from tqdm import tqdm

    from dfsearch.data.images import UnreadableImage, open_rgb
    from dfsearch.data.loading import build_transform

    transforms = {m.preprocessing: build_transform(*m.preprocessing) for m in members}
    predictions, errors = [], []
    bar = tqdm(total=len(files), unit="img", file=sys.stderr, disable=not progress or len(files) < PROGRESS_MIN)
    for start in range(0, len(files), batch_size):
        batch = files[start:start + batch_size]
        images, good = [], []
        for f in batch:
            try:
                images.append(open_rgb(f))  # decoded once, shared by all members
                good.append(f)
            except UnreadableImage as e:
                errors.append({"path": str(f), "reason": e.reason})
        if images:
            p, _ = score_images(members, images, device, calibration, transforms)
            for f, pf in zip(good, p):
                predictions.append({"path": str(f), "prob_fake": float(pf),
                                    "label": "fake" if pf >= calibration.threshold else "real"})
        bar.update(len(batch))
    bar.close()
    return predictions, errors


def _device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise DfsearchError("--device cuda: no CUDA device is available here; use --device cpu")
    return requested


def _predict(ensemble_json_path, paths, batch_size, device, progress):
    if batch_size < 1:
        raise DfsearchError(f"--batch-size {batch_size}: must be >= 1")
    members, calibration = load_ensemble(ensemble_json_path, device=device)
    files, errors = find_images(paths)
    if not files and not errors:
        raise DfsearchError(f"no images found in {', '.join(map(str, paths))} (looked for .jpg, .jpeg, .png)")
    predictions, bad = predict_images(members, files, batch_size=batch_size, device=device, progress=progress,
                                      calibration=calibration)
    return members, calibration, predictions, errors + bad


def predict_paths(ensemble_json_path, paths, batch_size: int = 64, device: str = "cpu",
                  progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Predict every image under ``paths`` with the ensemble in ``ensemble_json_path``.

    Returns ``(predictions, errors)``: ``[{"path", "prob_fake", "label"}]`` for the readable images
    (files in the order given, folders sorted) and ``[{"path", "reason"}]`` for the missing or
    unreadable ones. Raises DfsearchError for a bad ensemble (see ``load_ensemble``), a batch size
    below 1, or when no image was found at all.
    """
    _, _, predictions, errors = _predict(ensemble_json_path, paths, batch_size, device, progress)
    return predictions, errors


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``predict`` as a subcommand of ``dfsearch``."""
    p = subparsers.add_parser("predict", help="P(fake) for images, with an ensemble from the ensemble command")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--ensemble", required=True, help="ensemble.json written by the ensemble command "
                                                     "(a path, or a URI: s3://.../<run>/ensemble/ensemble.json)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    out.add_argument("--csv", metavar="FILE", help="write path,prob_fake,label to FILE")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.set_defaults(func=run)
    return p


def fetch_ensemble(uri: str) -> Path:
    """``--ensemble URI/<run>/ensemble/ensemble.json``: fetch the run folder (the ensemble and the
    checkpoints it names) into its local staging copy; returns the local ensemble.json."""
    from dfsearch import remote

    folder, fname = remote.split(uri)
    run_uri, ens_name = remote.split(folder)
    target = remote.open_uri(run_uri, "--ensemble")
    if not target.exists(f"{ens_name}/{fname}"):
        raise DfsearchError(f"--ensemble {uri}: no such file; expected URI/<run>/ensemble/ensemble.json as "
                            f"`ensemble.py --run URI/<run>` writes it")
    local = remote.staging_dir(target.uri)
    print(f"predict: fetching {target.uri} into {local}", file=sys.stderr)
    remote.fetch(target, local, "--ensemble", exclude=("pools",))
    return local / ens_name / fname


def run(args) -> int:
    """``dfsearch predict``: 0 when at least one image was predicted, 1 when none could be."""
    from dfsearch.remote import is_uri

    if is_uri(args.ensemble):
        args.ensemble = fetch_ensemble(args.ensemble)
    members, calibration, predictions, errors = _predict(args.ensemble, args.paths, args.batch_size,
                                                         _device(args.device), progress=not args.json)
    if not calibration.calibrated:
        print(f"predict: {args.ensemble} has no calibration (written before the ensemble command calibrated): "
              f"raw averaged probabilities, threshold 0.5; re-run ensemble.py to calibrate", file=sys.stderr)
    n_fake = sum(p["label"] == "fake" for p in predictions)
    summary = (f"{len(predictions) + len(errors)} images: {n_fake} fake, {len(predictions) - n_fake} real, "
               f"{len(errors)} unreadable")
    if args.json:
        print(json.dumps({"predictions": predictions, "errors": errors,
                          "members": [m.describe() for m in members], "calibration": calibration.describe()}))
        print(summary, file=sys.stderr)  # stdout holds the JSON object only
    else:
        for e in errors:
            print(f"predict: cannot read {e['path']}: {e['reason']}", file=sys.stderr)
        if args.csv:
            with open(args.csv, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["path", "prob_fake", "label"])
                w.writeheader()
                w.writerows(predictions)
            print(f"wrote {len(predictions)} rows to {args.csv}")
        else:
            for p in predictions:
                print(f"{p['prob_fake']:.4f}  {p['label']:<4}  {p['path']}")
        print(summary)
    return 0 if predictions else 1
