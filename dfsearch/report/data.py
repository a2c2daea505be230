"""The report's data section: what the run trained on.

Counts per split and class, class imbalance, fakes per generator family and image sizes come
from ``dfsearch inspect`` (``inspect_dataset``, header check: every file is opened, none decoded);
the sample grid and the pixel-value histograms read a capped, evenly spaced sample of the train
images per group (real, and fake per generator family where the fakes sit in ``fake/<family>/``),
so a 140k-image dataset costs the same few seconds as the demo's 4,200.
"""

from __future__ import annotations

import numpy as np

from dfsearch.report import html as H

GRID_PER_GROUP = 8  # thumbnails per row of the sample grid
THUMB = 64  # thumbnail side (px): the page stays small
HIST_PER_GROUP = 200  # images per group read for the pixel histograms
HIST_BINS = 64


def section(data: str | None, where: str) -> H.Section:
    """The ``#data`` section for the dataset folder ``data`` (read from ``where``); a folder that
    is gone (the run was copied from another machine) is said, not raised."""
    from pathlib import Path

    if not data:
        return H.Section("data", "Data", H.note(f"The run does not say which dataset it used ({where})."),
                         ["dataset path"])
    if not Path(data).is_dir():
        return H.Section("data", "Data", H.note(
            f"The dataset folder {data} (from {where}) is not on this machine: counts, sizes, samples and "
            f"histograms need it. Copy it back to that path (or run the report where the search ran)."),
            ["dataset folder"])
    from dfsearch.data.discover import discover
    from dfsearch.data.inspect import inspect_dataset
    from dfsearch.errors import DfsearchError

    try:
        report = inspect_dataset(data, full=False, progress=True)
        index = discover(data, check="none")  # the sample ids by group; inspect keeps only counts
    except DfsearchError as e:
        return H.Section("data", "Data", H.note(f"The dataset {data} (from {where}) cannot be read: {e}"),
                         ["readable dataset"])
    groups = sample_groups(index.splits["train"])
    body = [H.p(f"Dataset {H.code(report['root'])} (layout {H.esc(report['layout'])}, from {H.esc(where)}): "
                f"{report['total']:,} images; counted by <code>dfsearch inspect --quick</code> (headers read, "
                f"not decoded)."),
            H.h3("Counts per split and class", "data-counts"),
            H.table(counts_table(report), id="split-counts", floats="{:.2f}")]
    sources = report.get("fake_sources") or {}
    if sources:
        body += [H.h3("Fakes per generator family", "data-families"),
                 H.table(families_table(sources), id="family-counts")]
    else:
        body.append(H.p("The fakes are not grouped by generator (no <code>fake/&lt;family&gt;/</code> folders).",
                        "small"))
    body += [H.h3("Image sizes", "data-sizes"), sizes_html(report["image_sizes"])]
    if report["skipped"] or report["notes"]:
        items = [f"{H.esc(s['path'])}: {H.esc(s['reason'])}" for s in report["skipped"][:10]]
        more = len(report["skipped"]) - len(items)
        body.append(H.p(f"Skipped {len(report['skipped'])} file(s)" + (": " + "; ".join(items) if items else "")
                        + (f"; and {more} more" if more > 0 else "") + "."))
        body += [H.p("Note: " + H.esc(n), "small") for n in report["notes"]]
    picked = {g: spread(ids, GRID_PER_GROUP) for g, ids in groups.items()}
    body += [H.h3("Samples per class and generator family (train)", "data-samples"),
             H.img(sample_grid(index.root, picked), "sample grid",
                      f"{GRID_PER_GROUP} evenly spaced train images per group, shown at most {THUMB} px.")]
    hist_ids = {g: spread(ids, HIST_PER_GROUP) for g, ids in groups.items()}
    fig, used = pixel_histograms(index.root, hist_ids)
    body += [H.h3("Pixel-value histograms", "data-pixels"),
             H.figure(fig, "pixel histograms", "Per channel, density of 8-bit values; sample: "
                      + ", ".join(f"{g} {n} of {len(groups[g])}" for g, n in used.items())
                      + " train images (evenly spaced).")]
    return H.Section("data", "Data", "\n".join(body))


def sample_groups(items) -> dict[str, list[str]]:
    """``{"real": ids, "fake/<family>": ids, ...}`` (``"fake"`` for fakes not in a family folder)."""
    from dfsearch.data.discover import fake_source

    groups: dict[str, list[str]] = {"real": []}
    for sid, label in items:
        key = "real" if label == 0 else ("fake/" + fake_source(sid) if fake_source(sid) else "fake")
        groups.setdefault(key, []).append(sid)
    return {k: groups[k] for k in sorted(groups, key=lambda k: (k != "real", k)) if groups[k]}


def spread(ids: list[str], k: int) -> list[str]:
    """``k`` ids evenly spaced over ``ids`` (deterministic: the same page for the same data)."""
    if len(ids) <= k:
        return list(ids)
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, k)]


def counts_table(report: dict):
    import pandas as pd

    rows = []
    for split, c in report["splits"].items():
        imb = report["imbalance"][split]
        rows.append({"split": split, "real": c["real"], "fake": c["fake"], "total": c["real"] + c["fake"],
                     "fake %": None if imb["fake_fraction"] is None else 100 * imb["fake_fraction"],
                     "majority/minority": imb["ratio"]})
    return pd.DataFrame(rows)


def families_table(sources: dict):
    import pandas as pd

    df = pd.DataFrame(sources).fillna(0).astype(int)
    df.index = [k if k else "(directly in fake/)" for k in df.index]
    return df.rename_axis("family").reset_index()


def sizes_html(s: dict) -> str:
    import pandas as pd

    if not s["most_common"]:
        return H.note("Image sizes were not measured.")
    top = pd.DataFrame(s["most_common"]).rename(columns={"count": "images"})
    return (H.p(f"{s['distinct']} distinct size(s); width {s['min_width']}..{s['max_width']}, height "
                f"{s['min_height']}..{s['max_height']} px. Most common:") + H.table(top, id="image-sizes"))


def _read(root: str, sid: str):
    from dfsearch.data.images import UnreadableImage, open_rgb

    try:
        return open_rgb(f"{root}/{sid}")
    except UnreadableImage:  # inspect lists it; the grid shows the others
        return None


def sample_grid(root: str, picked: dict[str, list[str]]) -> bytes:
    """PNG bytes: one row of thumbnails per group, its name on the left. Composed with PIL at the
    thumbnails' own pixels (no resampling by a plotting library: the artefacts a detector looks
    for are pixel-level)."""
    import io

    from PIL import Image, ImageDraw

    label_w, pad = 120, 4
    cols = max(len(v) for v in picked.values())
    canvas = Image.new("RGB", (label_w + cols * (THUMB + pad), len(picked) * (THUMB + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (group, ids) in enumerate(picked.items()):
        top = pad + r * (THUMB + pad)
        draw.text((4, top + THUMB // 2 - 6), group, fill="black")
        for c, sid in enumerate(ids):
            im = _read(root, sid)
            if im is None:
                continue
            im.thumbnail((THUMB, THUMB))
            canvas.paste(im, (label_w + c * (THUMB + pad), top))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def pixel_histograms(root: str, picked: dict[str, list[str]]):
    """``(figure, {group: images read})``: per-channel histograms of 8-bit values, one line per group."""
    from matplotlib.figure import Figure

    edges = np.linspace(0, 256, HIST_BINS + 1)
    fig = Figure(figsize=(11, 3))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    used = {}
    for group, ids in picked.items():
        counts, n = np.zeros((3, HIST_BINS)), 0
        for sid in ids:
            im = _read(root, sid)
            if im is None:
                continue
            px = np.asarray(im).reshape(-1, 3)
            counts += np.stack([np.histogram(px[:, ch], bins=edges)[0] for ch in range(3)])
            n += 1
        used[group] = n
        if n:
            density = counts / counts.sum(axis=1, keepdims=True)
            for ch, ax in enumerate(axes):
                ax.plot(edges[:-1] + 2, density[ch], label=group, lw=1.2)
    for ax, name in zip(axes, ("red", "green", "blue")):
        ax.set(title=name, xlabel="value", xlim=(0, 255))
    axes[0].set_ylabel("fraction of pixels")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    return fig, used
