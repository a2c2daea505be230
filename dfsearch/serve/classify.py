"""What the app computes for uploaded files, as plain data (no Gradio): the ensemble's calibrated
P(fake) and decision as ``dfsearch predict`` gives them, each member's own calibrated P(fake) and
vote, and the top member's heatmap.

``load`` resolves ``--ensemble`` as ``dfsearch predict`` does (an ``ensemble.json`` path, or a URI
that is fetched first) and raises predict's DfsearchError for a missing or malformed ensemble.
``classify`` decodes each file once with predict's decoder (``open_rgb``) and scores it with
predict's ``score_images``: the same numbers, to the last bit, as ``dfsearch predict`` on the file.
A file that cannot be decoded is an error row naming it; the other files still get results.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

VOTE_THRESHOLD = 0.5  # a member's vote: its calibrated P(fake) at 0.5 (the ensemble's own threshold is for the blend)
MAX_BATCH = 64        # = predict's default --batch-size
MAX_HEATMAPS = 12     # per request: one backward pass each; an upload of hundreds would wait on them


@dataclass
class Loaded:
    """A loaded ensemble: ``path`` (the local ensemble.json), its members and calibration, the
    device, and each preprocessing's transform, built once."""

    path: Path
    members: list
    calibration: object  # predict.Calibration
    device: str
    transforms: dict = field(repr=False, default_factory=dict)

    @property
    def top(self):
        """The member with the largest weight (the first of equals): the one whose heatmap is shown."""
        return max(self.members, key=lambda m: m.weight)

    def summary(self) -> str:
        cal = self.calibration
        names = ", ".join(f"{m.candidate} ({m.arch}, weight {m.weight:.2f})" for m in self.members)
        how = (f"calibrated, threshold {cal.threshold:.4f}" if cal.calibrated
               else "not calibrated (written before the ensemble command calibrated): raw average, threshold 0.5")
        return f"{len(self.members)} member{'s' * (len(self.members) != 1)}: {names}; {how}"


def load(ensemble: str, device: str | None) -> Loaded:
    """The ensemble named by ``--ensemble`` (path or URI), on ``device`` (None: cuda when there is
    one, else cpu, as predict chooses). DfsearchError as predict raises it for a bad one."""
    from dfsearch.data.loading import build_transform
    from dfsearch.predict import _calibration, _device, _read_ensemble, fetch_ensemble, load_ensemble
    from dfsearch.remote import is_uri

    path = fetch_ensemble(ensemble) if is_uri(ensemble) else Path(ensemble)
    _calibration(_read_ensemble(path), path)  # a missing or malformed file: predict's error, before torch loads
    device = _device(device)
    members, calibration = load_ensemble(path, device=device)
    transforms = {m.preprocessing: build_transform(*m.preprocessing) for m in members}
    return Loaded(path, members, calibration, device, transforms)


def classify(ens: Loaded, files: list, heatmaps: int = MAX_HEATMAPS) -> tuple[list[dict], list[dict]]:
    """``(rows, errors)`` for ``files`` (paths; shown by their base name), in order.

    A row: ``{"file", "path", "prob_fake", "label", "members": [{"candidate", "arch", "weight",
    "prob_fake", "vote"}], "heatmap"}``; ``heatmap`` is the top member's ``explain.Heatmap`` with
    the image, ``{"image", "heat", "member"}``, for the first ``heatmaps`` rows, else None.
    An error: ``{"file", "path", "reason"}`` for a file that cannot be decoded as an image.
    """
    from dfsearch.data.images import UnreadableImage, open_rgb
    from dfsearch.predict import score_images

    images, good, errors = [], [], []
    for f in map(Path, files):
        try:
            images.append(open_rgb(f))
            good.append(f)
        except UnreadableImage as e:
            errors.append({"file": f.name, "path": str(f), "reason": e.reason})
    rows = []
    for start in range(0, len(images), MAX_BATCH):
        batch = images[start:start + MAX_BATCH]
        p, per_member = score_images(ens.members, batch, ens.device, ens.calibration, ens.transforms)
        for j, (f, img) in enumerate(zip(good[start:start + MAX_BATCH], batch)):
            votes = [{"candidate": m.candidate, "arch": m.arch, "weight": m.weight, "prob_fake": float(q[j]),
                      "vote": "fake" if q[j] >= VOTE_THRESHOLD else "real"}
                     for m, q in zip(ens.members, per_member)]
            rows.append({"file": f.name, "path": str(f), "prob_fake": float(p[j]),
                         "label": "fake" if p[j] >= ens.calibration.threshold else "real",
                         "members": votes, "image": img})
    top = ens.members.index(ens.top)
    for i, row in enumerate(rows):
        img = row.pop("image")
        row["heatmap"] = None
        if i < heatmaps:
            try:
                row["heatmap"] = explain_top(ens, img, row["members"][top]["prob_fake"])
            except Exception as e:  # a heatmap that cannot be made must not take the scores with it
                print(f"dfsearch serve: no heatmap for {row['file']}: {type(e).__name__}: {e}", file=sys.stderr)
    return rows, errors


def explain_top(ens: Loaded, image, prob_fake: float) -> dict:
    """The top member's heatmap on ``image``: ``{"image", "heat" (explain.Heatmap), "member"}``."""
    from dfsearch.serve.explain import explain

    m = ens.top
    heat = explain(m, image, prob_fake, ens.device, ens.transforms[m.preprocessing])
    return {"image": image, "heat": heat, "member": f"{m.candidate} ({m.arch})"}
