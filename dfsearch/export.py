"""``dfsearch export``: the ensemble as one self-contained graph, plus a model card.

    dfsearch export --ensemble runs/x/ensemble/ensemble.json --format onnx|torchscript --out DIR
                    [--size S] [--check IMAGE_OR_FOLDER ...]

The graph (``EnsembleGraph``) takes a batch of RGB images as uint8 ``(N, 3, S, S)`` (S: ``--size``,
default the largest side a member's view needs) and returns the calibrated ensemble P(fake),
``(N,)`` float32: every step ``dfsearch predict`` takes after decoding is inside it (each member's
view of the pixels, /255, its mean and std, the network, its Platt map, the weighted average, the
blend's Platt map). What it needs from the caller: decode to RGB uint8 at S x S, without resizing
when the images are that size already (as the training data was); the decision threshold chosen on
val is in ``DIR/model.json`` and the model card. Members whose view resizes (``input_policy:
resize``) resize inside the graph from S x S.

``--check``: images whose P(fake) from the exported file (ONNX Runtime on CPU for onnx, torch for
torchscript) is compared with ``dfsearch predict``'s; the largest difference is printed and saved
in model.json. The export refuses a difference above ``TOLERANCE``.

A member torch cannot export (``torch.export`` for onnx, ``torch.jit.trace`` / ``save`` for
torchscript): when writing the graph fails, each member's graph is written alone, by the same code,
to find which; the error names them (candidate, arch, torch's reason in one line) and the way out:
``--skip-untraceable`` (the other members only: weights renormalised over them, the blend's Platt
map and threshold kept as fitted for all members, so P(fake) differs from the full ensemble's; said
in model.json, the model card and the summary; ``--check`` then compares with ``dfsearch predict`` of
that same reduced ensemble) or the other format when it writes them. Files are written in a
temporary folder and moved into ``--out`` at the end: a failed export leaves nothing there (a
``--check`` failure moves the graph there, for inspection).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from dfsearch.errors import DfsearchError

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4  # max |P(fake) exported - P(fake) predict| accepted by --check
EPS = 1e-6        # = ensemble.calibration.EPS: probabilities are clipped before the logit
GRAPH_FILES = {"onnx": "ensemble.onnx", "torchscript": "ensemble.torchscript.pt"}
SKIP_FLAG = "--skip-untraceable"
GIST_CHARS = 300  # torch's reason, cut to this: the rest is debugging advice and the FX graph


def _torch_graph(members, calibration, size: int):
    import torch

    from dfsearch.data.views import tile_origins

    class EnsembleGraph(torch.nn.Module):
        """uint8 ``(N, 3, S, S)`` RGB -> calibrated P(fake) ``(N,)``; see the module docstring."""

        def __init__(self):
            super().__init__()
            self.nets = torch.nn.ModuleList([m.model for m in members])
            self.views = [m.view for m in members]
            for i, m in enumerate(members):
                self.register_buffer(f"mean{i}", torch.tensor(m.mean, dtype=torch.float32).view(1, 3, 1, 1))
                self.register_buffer(f"std{i}", torch.tensor(m.std, dtype=torch.float32).view(1, 3, 1, 1))
            self.weights = [float(m.weight) for m in members]
            self.maps = [(float(m.slope), float(m.intercept)) for m in members]
            self.blend = (float(calibration.slope), float(calibration.intercept)) if calibration.calibrated else None

        @staticmethod
        def _platt(p, slope: float, intercept: float):
            p = p.clamp(EPS, 1 - EPS)
            return torch.sigmoid(slope * torch.log(p / (1 - p)) + intercept)

        def _view(self, x, view):
            """The pixels this member's network saw in evaluation, as ``(N * K, 3, s, s)`` with K views each."""
            from torch.nn import functional as F

            c = view.crop
            if view.policy == "resize":  # on uint8 values, rounded, as torchvision resizes a uint8 image
                x = (F.interpolate(x * 255.0, size=(c, c), mode="bilinear", antialias=True,
                                   align_corners=False).round().clamp(0, 255)) / 255.0
            elif view.policy != "native" and view.eval_view == "tiles":
                tops = tile_origins(size, c, view.eval_tiles)
                x = torch.stack([x[:, :, t:t + c, l:l + c] for t in tops for l in tops], dim=1).flatten(0, 1)
            elif view.policy != "native":
                top = int(round((size - c) / 2.0))  # as torchvision's CenterCrop
                x = x[:, :, top:top + c, top:top + c]
            if view.zoom > 1:
                x = x.repeat_interleave(view.zoom, dim=2).repeat_interleave(view.zoom, dim=3)
            return x

        def forward(self, images):
            from dfsearch.models import prob_fake

            x = images.float() / 255.0
            total = images.new_zeros(images.shape[0], dtype=torch.float32)  # on the input's device, traced or not
            for i, (net, view) in enumerate(zip(self.nets, self.views)):
                v = (self._view(x, view) - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")
                p = prob_fake(net(v)).float().view(images.shape[0], -1).mean(dim=1)
                slope, intercept = self.maps[i]
                if (slope, intercept) != (1.0, 0.0):
                    p = self._platt(p, slope, intercept)
                total = total + self.weights[i] * p
            return self._platt(total, *self.blend) if self.blend else total

    return EnsembleGraph().eval()


def input_size(members) -> int:
    """The smallest square input every member's view can take: the largest crop (a resize view takes any)."""
    return max((m.view.crop for m in members if m.view.policy != "resize"), default=max(m.view.crop for m in members))


def check_size(members, size: int) -> None:
    for m in members:
        if m.view.policy == "native" and size != m.view.crop:  # (zoomed to img_size inside the graph)
            raise DfsearchError(f"--size {size}: member {m.candidate!r} sees whole images of {m.view.crop} px "
                                f"(input_policy native); export with --size {m.view.crop}")
        if m.view.policy in ("crop", "auto") and size < m.view.crop:
            raise DfsearchError(f"--size {size}: member {m.candidate!r} crops {m.view.crop} px; use --size >= "
                                f"{m.view.crop}")


def _load_images(files, size: int) -> tuple[np.ndarray, list[Path], list[dict]]:
    """uint8 (N, 3, size, size) of the readable ``files`` of that size; the others as errors."""
    from dfsearch.data.images import UnreadableImage, open_rgb

    arrays, good, bad = [], [], []
    for f in files:
        try:
            img = open_rgb(f)
        except UnreadableImage as e:
            bad.append({"path": str(f), "reason": e.reason})
            continue
        if img.size != (size, size):
            bad.append({"path": str(f), "reason": f"{img.size[0]} x {img.size[1]} px; the graph takes {size} x {size}"})
            continue
        arrays.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
        good.append(f)
    return (np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.uint8)), good, bad


def _write(graph, fmt: str, size: int, out: Path) -> Path:
    import torch

    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    path = out / GRAPH_FILES[fmt]
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(graph, example, check_trace=False), str(path))
        return path
    # torch.export-based exporter (onnxscript): it writes antialiased resizes (ONNX Resize, opset 18),
    # which the TorchScript-based one cannot; the batch dimension stays free
    with torch.no_grad():
        torch.onnx.export(graph, (example,), str(path), input_names=["images"], output_names=["prob_fake"],
                          dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, dynamo=True,
                          external_data=False, verbose=False)
    return path


@contextlib.contextmanager
def _quiet_torch():
    """Mute logging below ERROR, and hold back what is printed to stderr, for the block; replay the
    latter only when the block succeeds. Why: a failing torch.export prints its whole partial FX graph
    to stderr (hundreds of lines) and logs warnings about it, and a member's failure is reported in one
    line instead (``_gist``); what a successful export prints (TracerWarnings included) still shows."""
    import io

    previous, held = logging.root.manager.disable, io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(held):
            yield
    finally:
        logging.disable(previous)
    sys.stderr.write(held.getvalue())  # not reached when the block raised


def _gist(error: BaseException) -> str:
    """Why torch could not export, in one line: the innermost cause's type and first line (the
    exporter's own wrapper only says which of its steps failed), plus the user code torch names as
    the culprit when it does ("The following call raised this error")."""
    root, seen = error, set()
    while id(root) not in seen:
        seen.add(id(root))
        nxt = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if nxt is None:
            break
        root = nxt
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(root))
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    gist = f"{type(root).__name__}: {first}" if first else type(root).__name__
    # the source line is the next one, indented; absent when there is no source (exec'd code)
    where = re.search(r'raised this error:\s*File "([^"]+)", line (\d+), in [^\n]*(?:\n[ \t]+(\S[^\n]*))?', text)
    if where:
        gist += f" (at {Path(where[1]).name}:{where[2]}" + (f": {where[3].strip()})" if where[3] else ")")
    return gist if len(gist) <= GIST_CHARS else gist[:GIST_CHARS - 3] + "..."


def _try_write(graph, fmt: str, size: int, folder: Path) -> str | None:
    """``_write`` into ``folder``: None when it worked, else the gist of torch's error (a partial
    file may be left in ``folder``)."""
    try:
        with _quiet_torch():
            _write(graph, fmt, size, folder)
    except Exception as e:  # noqa: BLE001 - torch.export, the ONNX translation and jit raise many types
        return _gist(e)
    return None


def _probe(member, calibration, fmt: str, size: int, scratch: Path) -> str | None:
    """Whether ``member`` alone exports as ``fmt``: the same graph and writer with one member (so
    the same ops are traced), in a throwaway folder under ``scratch``; None or the gist of the error."""
    folder = Path(tempfile.mkdtemp(dir=scratch, prefix="probe-"))
    try:
        return _try_write(_torch_graph([member], calibration, size), fmt, size, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def find_untraceable(members, calibration, fmt: str, size: int, scratch: Path) -> list[dict]:
    """The members whose graph alone cannot be written as ``fmt``, in order, as ``{member, error,
    other_format_ok}`` (``other_format_ok``: whether the other format writes that member)."""
    other = next(f for f in FORMATS if f != fmt)
    bad = []
    for m in members:
        error = _probe(m, calibration, fmt, size, scratch)
        if error is not None:
            bad.append({"member": m, "error": error,
                        "other_format_ok": _probe(m, calibration, other, size, scratch) is None})
    return bad


def _untraceable_message(bad: list[dict], n_members: int, fmt: str) -> str:
    """The DfsearchError text: each member that cannot be exported (candidate, arch, why) and the
    ways out that exist (``SKIP_FLAG`` when some member is left; the other format when it writes them)."""
    other = next(f for f in FORMATS if f != fmt)
    head = (f"{len(bad)} of the {n_members} members cannot be exported as {fmt}" if len(bad) < n_members else
            f"none of the {n_members} members can be exported as {fmt}" if n_members > 1 else
            f"the ensemble's only member cannot be exported as {fmt}")
    lines = [f"{head}:"] + [f"  member {b['member'].candidate!r} ({b['member'].arch}): {b['error']}" for b in bad]
    ways = []
    if len(bad) < n_members:
        ways.append(f"{SKIP_FLAG} exports the other {n_members - len(bad)} without "
                    f"{'it' if len(bad) == 1 else 'them'} (weights renormalised; P(fake) then differs from the "
                    f"full ensemble's, whose calibration and threshold it keeps)")
    writable = [b["member"].candidate for b in bad if b["other_format_ok"]]
    if writable:
        caveat = (" (tracing records the path taken on an example input through data-dependent Python code: "
                  "compare with --check)" if other == "torchscript" else "")
        which = ("it" if len(bad) == 1 else "them") if len(writable) == len(bad) else ", ".join(map(repr, writable))
        ways.append(f"--format {other} writes {which}{caveat}")
    return "\n".join(lines + ["; ".join(ways)] if ways else lines)


def _renormalised(members) -> list:
    """``members`` with weights that sum to 1 again, in the same proportions."""
    total = sum(m.weight for m in members)
    return [dataclasses.replace(m, weight=m.weight / total) for m in members]


def write_graph(members, calibration, fmt: str, size: int, folder: Path, skip_untraceable: bool = False):
    """Write the ensemble's graph into ``folder``: ``(path, members in it, dropped)``, ``dropped``
    the ``find_untraceable`` entries left out (empty unless ``skip_untraceable`` and some member
    cannot be exported; the members in it then have renormalised weights).

    Raises DfsearchError naming the members that cannot be exported (always when all of them cannot,
    and without ``skip_untraceable``), or giving torch's reason when the graph fails though each
    member exports alone.
    """
    import torch

    with torch.no_grad():
        failure = _try_write(_torch_graph(members, calibration, size), fmt, size, folder)
    path = folder / GRAPH_FILES[fmt]
    if failure is None:
        return path, members, []
    bad = find_untraceable(members, calibration, fmt, size, folder)
    if not bad:
        raise DfsearchError(f"writing the {fmt} graph failed, though each member's graph alone exports: {failure}")
    if not skip_untraceable or len(bad) == len(members):
        raise DfsearchError(_untraceable_message(bad, len(members), fmt))
    dropped = {id(b["member"]) for b in bad}
    kept = _renormalised([m for m in members if id(m) not in dropped])
    path.unlink(missing_ok=True)  # what the failed attempt may have left
    with torch.no_grad():
        failure = _try_write(_torch_graph(kept, calibration, size), fmt, size, folder)
    if failure is not None:
        raise DfsearchError(f"without {', '.join(repr(b['member'].candidate) for b in bad)}, writing the {fmt} "
                            f"graph still failed: {failure}")
    return path, kept, bad


def reduced_note(dropped: list[dict], n_members: int, fmt: str) -> str:
    """What exporting without ``dropped`` means for the probabilities, for model.json, the card and
    the summary."""
    names = ", ".join(f"{b['member'].candidate} ({b['member'].arch})" for b in dropped)
    return (f"exported without {len(dropped)} of the ensemble's {n_members} members ({names}), which cannot be "
            f"exported as {fmt}: the others' weights are renormalised, and the blend's Platt map and decision "
            f"threshold are kept as fitted on validation for all {n_members} members, so P(fake) differs from the full "
            f"ensemble's (dfsearch predict on ensemble.json) and is not recalibrated for this subset")


def run_exported(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """P(fake) of uint8 ``images`` from the exported file, as a deployment would run it."""
    if len(images) == 0:
        return np.zeros(0)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["prob_fake"], {"images": images})[0].astype(np.float64)
    import torch

    with torch.no_grad():
        return torch.jit.load(str(path))(torch.from_numpy(images)).numpy().astype(np.float64)


def _with_ci(value: float, ci) -> str:
    """``0.812 [0.771, 0.848]``; the value alone where ``ci`` is missing (an ensemble.json written
    before that interval was recorded, or with ``--bootstrap 0``)."""
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def model_card(doc: dict, members, calibration, fmt: str, size: int, check: dict | None,
               dropped: list[dict] = ()) -> str:
    """Markdown: what the model is, what it was trained and selected on, its test metrics with
    intervals, how to call it, and its known limits; with ``dropped`` (``write_graph``), which
    members it lacks and that its probabilities, calibration and metrics are not the full ensemble's."""
    comp = (doc.get("comparison") or {}).get("rows", {})
    n_full = len(members) + len(dropped)
    title = f"{len(members)}-member ensemble" if not dropped else f"{len(members)} of a {n_full}-member ensemble"
    full = " for the full ensemble" if dropped else ""
    lines = [f"# dfsearch deepfake detector: {title} ({fmt})", "",
             "Calibrated P(fake) for face images: real camera photos vs generated or manipulated ones.", "",
             "## Input and output", "",
             f"- input `images`: uint8 RGB, shape (N, 3, {size}, {size}); decode to RGB and do not resize images "
             f"that are already {size} x {size} (the networks look for pixel-level traces that resizing erases)",
             f"- output `prob_fake`: float32 (N,), calibrated on the validation split (Platt)",
             f"- decision: fake when prob_fake >= {calibration.threshold:.4f} (chosen on validation{full})"
             + ("" if calibration.calibrated else " (this ensemble was not calibrated: raw average, 0.5)"), "",
             "## Members", "", "| member | arch | weight | view | input filter |", "|---|---|---:|---|---|"]
    for m in members:
        d = m.describe()
        lines.append(f"| {m.candidate} | {m.arch} | {m.weight:.3f} | {d['input_policy']} {d['img_size']} px, "
                     f"{d['eval_view']} | {d['input_filter']} |")
    if dropped:
        lines += ["", "## Dropped members", "", f"This graph was {reduced_note(dropped, n_full, fmt)}.", "",
                  "| member | arch | weight in the full ensemble | why |", "|---|---|---:|---|"]
        lines += [f"| {b['member'].candidate} | {b['member'].arch} | {b['member'].weight:.3f} | "
                  f"{b['error'].replace('|', '/')} |" for b in dropped]
    lines += ["", "## Test metrics (95 % bootstrap intervals)", ""]
    if comp and dropped:
        lines += [f"Measured for the full {n_full}-member ensemble, not for this graph without the dropped "
                  f"members: evaluate it on your data (`dfsearch evaluate`).", ""]
    if comp:
        lines += ["| | accuracy | ROC-AUC | ECE |", "|---|---|---|---:|"]
        for name, row in comp.items():
            t, ci = row["test"], row.get("ci", {})
            lines.append(f"| {name.replace('_', ' ')} | {_with_ci(t['accuracy'], ci.get('accuracy'))} | "
                         f"{_with_ci(t['roc_auc'], ci.get('roc_auc'))} | {t.get('ece', float('nan')):.3f} |")
        gain = (doc.get("comparison") or {}).get("gain", {}).get("accuracy")
        if gain:
            lines += ["", f"Ensemble minus best single, accuracy: {gain['diff']:+.3f} [{gain['ci'][0]:+.3f}, "
                          f"{gain['ci'][1]:+.3f}] (paired)."]
        per = (doc.get("comparison") or {}).get("per_source") or {}
        if per:
            lines += ["", "Per fake source (its fakes against all real test images), ROC-AUC [95 % bootstrap]:", ""]
            lines += [f"- {src}: " + ", ".join(f"{k.replace('_', ' ')} {_with_ci(v['roc_auc'], v.get('roc_auc_ci'))}"
                                                for k, v in rows.items()
                                                if isinstance(v, dict) and "roc_auc" in v)
                      for src, rows in per.items()]
    else:
        lines.append("Not recorded in ensemble.json (written before the side-by-side comparison): run "
                     "`dfsearch evaluate --ensemble ...` on labelled data.")
    lines += ["", "## Data", "", f"- selected on the validation split of the search's data; store: `{doc.get('source', '?')}`",
              "", "## Known limits", "",
              "- It detects the generators and manipulations of its training data; on unseen ones accuracy can fall to "
              "chance (on dfsearch's own benchmark a held-out generator family scored AUC 0.44-0.64: BENCHMARKS.md "
              "section 9). Evaluate on your own data before relying on it (`dfsearch evaluate`).",
              "- Re-compression, resizing and blurring remove the traces it uses: images that went through a social "
              "network may score as real.",
              "- Calibration holds for data like the validation split; a different share of fakes shifts the best threshold."]
    if check:
        against = " of the same members (renormalised weights, the same calibration)" if dropped else ""
        lines += ["", f"Checked against `dfsearch predict`{against} on {check['images']} images: max |difference| "
                      f"{check['max_abs_diff']:.2e}."]
    return "\n".join(lines) + "\n"


def export(ensemble_json: Path, fmt: str, out: Path, size: int | None = None, check_paths=(),
           skip_untraceable: bool = False) -> dict:
    """Write the graph, ``model.json`` and ``MODEL_CARD.md`` to ``out``; returns the summary.

    Everything is written in a temporary folder and moved into ``out`` at the end, so a failed
    export leaves ``out`` as it was (a ``--check`` difference above ``TOLERANCE`` moves the graph
    there, for inspection). ``skip_untraceable``: see ``write_graph``; the summary then has
    ``dropped`` and ``note``, and ``--check`` compares with predict of the members kept.
    """
    from dfsearch.predict import _read_ensemble, find_images, load_ensemble, predict_images

    if fmt not in FORMATS:
        raise DfsearchError(f"--format {fmt}: accepted: {', '.join(FORMATS)}")
    files, missing = find_images(check_paths) if check_paths else ([], [])
    if missing:
        raise DfsearchError(f"--check {missing[0]['path']}: {missing[0]['reason']}")
    members, calibration = load_ensemble(ensemble_json)
    size = size or input_size(members)
    check_size(members, size)
    stage = _stage_folder(out)
    try:
        staged, kept, dropped = write_graph(members, calibration, fmt, size, stage, skip_untraceable)
        path = out / staged.name
        summary = {"format": fmt, "path": str(path), "input": {"name": "images", "dtype": "uint8",
                   "shape": ["N", 3, size, size], "channels": "RGB"},
                   "output": {"name": "prob_fake", "dtype": "float32", "shape": ["N"]},
                   "threshold": calibration.threshold, "calibrated": calibration.calibrated,
                   "members": [m.describe() for m in kept], "ensemble": str(ensemble_json)}
        if dropped:
            summary["dropped"] = [{"candidate": b["member"].candidate, "arch": b["member"].arch,
                                   "weight": b["member"].weight, "error": b["error"]} for b in dropped]
            summary["note"] = reduced_note(dropped, len(members), fmt)
        check = None
        if files:
            images, good, skipped = _load_images(files, size)
            if not good:
                raise DfsearchError(f"--check: none of the {len(files)} images is a readable {size} x {size} image "
                                    f"({skipped[0]['path']}: {skipped[0]['reason']})")
            # predict of the members in the graph: the reduced ensemble when some were dropped
            want = np.array([p["prob_fake"] for p in predict_images(kept, good, calibration=calibration)[0]])
            got = run_exported(staged, fmt, images)
            check = {"images": len(good), "skipped": skipped, "max_abs_diff": float(np.max(np.abs(got - want)))}
            if dropped:
                check["against"] = "dfsearch predict of the members kept (renormalised weights, the same calibration)"
            summary["check"] = check
            if check["max_abs_diff"] > TOLERANCE:
                _publish(stage, out)
                raise DfsearchError(f"the exported {fmt} graph differs from dfsearch predict by up to "
                                    f"{check['max_abs_diff']:.2e} on --check images (tolerance {TOLERANCE:g}); "
                                    f"{path} is kept for inspection")
        (stage / "model.json").write_text(json.dumps(summary, indent=2, default=str))
        (stage / "MODEL_CARD.md").write_text(model_card(_read_ensemble(Path(ensemble_json)), kept, calibration, fmt,
                                                        size, check, dropped))
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def _stage_folder(out: Path) -> Path:
    """A new temporary folder in ``out``'s nearest existing ancestor (``out`` itself when it exists):
    on the same file system, so publishing is a rename, and nothing is created above ``out``."""
    base = out
    while not base.is_dir():
        if base.exists() or base.parent == base:
            raise DfsearchError(f"--out {out}: {base} is not a folder")
        base = base.parent
    return Path(tempfile.mkdtemp(dir=base, prefix=".dfsearch-export-"))


def _publish(stage: Path, out: Path) -> None:
    """Move the files written in ``stage`` into ``out`` (created), replacing those of a former export."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(stage.iterdir()):
        if f.is_file():
            target = out / f.name
            if target.is_file():
                target.unlink()
            shutil.move(str(f), str(target))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="the ensemble as one ONNX / TorchScript graph (uint8 images in, "
                                             "calibrated P(fake) out) with a model card")
    p.add_argument("--ensemble", required=True, help="ensemble.json written by the ensemble command (a path, or "
                                                     "a URI: s3://.../<run>/ensemble/ensemble.json)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="folder for the graph, model.json and MODEL_CARD.md")
    p.add_argument("--size", type=int, help="input side in pixels (default: the largest crop a member takes)")
    p.add_argument("--check", nargs="+", default=[], metavar="PATH",
                   help="images (files or folders) to compare the exported graph with dfsearch predict on")
    p.add_argument(SKIP_FLAG, action="store_true",
                   help="when some members cannot be exported in --format, export the others (weights renormalised "
                        "over them; the blend's calibration and threshold kept, so P(fake) differs from the full "
                        "ensemble's; listed in model.json and the model card)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from dfsearch.predict import fetch_ensemble
    from dfsearch.remote import is_uri

    if args.size is not None and args.size < 1:
        raise DfsearchError(f"--size {args.size}: need >= 1")
    if is_uri(args.ensemble):  # URI/<run>/ensemble/ensemble.json: fetched as predict does
        args.ensemble = fetch_ensemble(args.ensemble)
    summary = export(Path(args.ensemble), args.format, Path(args.out), args.size, args.check, args.skip_untraceable)
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    print(f"wrote {summary['path']}: uint8 RGB (N, 3, {summary['input']['shape'][2]}, {summary['input']['shape'][3]}) "
          f"-> calibrated P(fake); fake when >= {summary['threshold']:.4f}")
    if summary.get("dropped"):
        print(f"{SKIP_FLAG}: {summary['note']}")
    if "check" in summary:
        c = summary["check"]
        print(f"checked on {c['images']} images against dfsearch predict: max |difference| {c['max_abs_diff']:.2e}"
              + (f" ({len(c['skipped'])} skipped: not {summary['input']['shape'][2]} px or unreadable)"
                 if c["skipped"] else ""))
    print(f"model card: {Path(args.out) / 'MODEL_CARD.md'}")
    return 0
