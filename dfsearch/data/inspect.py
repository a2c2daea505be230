"""``dfsearch inspect``: what is in a dataset folder, before any training is spent on it.

One pass over the images (decoding each, unless quick) gives per-split per-class counts, class
imbalance, image sizes, and every file that was skipped with the reason.
"""

from __future__ import annotations

import json
import sys

from dfsearch.data.discover import SPLITS, discover_with_sizes

MAX_LISTED = 20  # skipped files shown in the human report before "... and N more"
TOP_SIZES = 10  # most common image sizes kept in the report


def inspect_dataset(path, *, full: bool = True, progress: bool = True) -> dict:
    """Discover the dataset under ``path`` and summarise it as one JSON-able dict.

    ``full=True`` decodes every image (catches truncated files); ``full=False`` reads headers only.
    Keys: root, given, layout, check, splits ({split: {"real": N, "fake": N}}), skipped
    ([{"path", "reason"}]), notes, image_sizes, imbalance ({split: {"fake_fraction", "ratio"}}),
    fake_sources ({split: {generator: N}}, for fakes in ``fake/<generator>/`` folders), total. Raises DfsearchError like ``discover``.
    """
    from collections import Counter

    from dfsearch.data.discover import fake_source

    check = "full" if full else "header"
    index, sizes = discover_with_sizes(path, check=check, progress=progress)
    counts = index.counts()
    sources = {split: dict(sorted(Counter(fake_source(sid) for sid, label in items if label).items(),
                                  key=lambda kv: kv[0] or ""))  # None: fakes directly in fake/
               for split, items in index.splits.items()}
    return {
        "root": index.root,
        "given": index.given,
        "layout": index.layout,
        "check": check,
        "splits": counts,
        "skipped": index.skipped,
        "notes": index.notes,
        "image_sizes": _size_summary(sizes),
        "imbalance": {split: _imbalance(c) for split, c in counts.items()},
        # fakes per generator, where the fakes sit in fake/<generator>/ (the benchmark's families)
        "fake_sources": {split: c for split, c in sources.items() if set(c) != {None}},
        "total": sum(c["real"] + c["fake"] for c in counts.values()),
    }


def _size_summary(sizes) -> dict:
    if not sizes:
        return {"distinct": 0, "most_common": [], "min_width": None, "max_width": None,
                "min_height": None, "max_height": None}
    widths = [w for w, _ in sizes]
    heights = [h for _, h in sizes]
    common = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SIZES]
    return {
        "distinct": len(sizes),
        "most_common": [{"width": w, "height": h, "count": n} for (w, h), n in common],
        "min_width": min(widths),
        "max_width": max(widths),
        "min_height": min(heights),
        "max_height": max(heights),
    }


def _imbalance(c: dict) -> dict:
    real, fake = c["real"], c["fake"]
    total = real + fake
    return {
        "fake_fraction": round(fake / total, 4) if total else None,
        "ratio": round(max(real, fake) / min(real, fake), 4) if min(real, fake) else None,  # majority/minority
    }


def format_report(report: dict) -> str:
    """A short human-readable table of an ``inspect_dataset`` report."""
    lines = [
        f"dataset  {report['root']}",
        f"layout   {report['layout']}   (given: {report['given']}, check: {report.get('check', '?')})",
        "",
        f"{'split':<8}{'real':>10}{'fake':>10}{'total':>10}{'fake %':>9}{'ratio':>8}",
    ]
    for split in SPLITS:
        c = report["splits"][split]
        imb = report["imbalance"][split]
        frac = "-" if imb["fake_fraction"] is None else f"{imb['fake_fraction']:.1%}"
        ratio = "-" if imb["ratio"] is None else f"{imb['ratio']:.2f}"
        lines.append(f"{split:<8}{c['real']:>10}{c['fake']:>10}{c['real'] + c['fake']:>10}{frac:>9}{ratio:>8}")
    lines.append(f"{'total':<8}{'':>10}{'':>10}{report['total']:>10}")
    for split, by in report.get("fake_sources", {}).items():
        lines.append(f"  {split} fakes by generator: " + ", ".join(f"{k or '(fake/ itself)'} {n}" for k, n in by.items()))

    s = report["image_sizes"]
    lines.append("")
    if s["most_common"]:
        common = ", ".join(f"{x['width']}x{x['height']} ({x['count']})" for x in s["most_common"][:5])
        lines.append(f"image sizes: {s['distinct']} distinct; most common {common}")
        lines.append(f"             width {s['min_width']}..{s['max_width']}, height {s['min_height']}..{s['max_height']}")
    else:
        lines.append("image sizes: not measured")

    skipped = report["skipped"]
    lines.append("")
    lines.append(f"skipped {len(skipped)} file(s)" + (":" if skipped else ""))
    for item in skipped[:MAX_LISTED]:
        lines.append(f"  {item['path']}: {item['reason']}")
    if len(skipped) > MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - MAX_LISTED} more")

    if report["notes"]:
        lines.append("")
        lines.append("notes:")
        lines.extend(f"  - {n}" for n in report["notes"])
    return "\n".join(lines)


def run(args) -> int:
    """CLI entry: ``args.data`` (path), ``args.json`` (one JSON object on stdout), ``args.quick`` (headers only)."""
    as_json = bool(getattr(args, "json", False))
    report = inspect_dataset(args.data, full=not getattr(args, "quick", False), progress=True)
    if as_json:
        for note in report["notes"]:
            print(f"note: {note}", file=sys.stderr)
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0
