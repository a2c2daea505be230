"""Reading image files, and saying why when one cannot be read."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CHECKS = ("header", "full", "none")  # how hard ``check_files`` looks at each file


class UnreadableImage(Exception):
    """An image file that cannot be decoded; ``reason`` says why in a few words."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def open_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image, or raise UnreadableImage with the reason."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage(path, "empty file (0 bytes)")
        with Image.open(path) as im:
            im.load()  # full decode: catches truncated files
            return im.convert("RGB")
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image (unrecognised format)") from None
    except OSError as e:  # truncated / broken data stream / permission
        raise UnreadableImage(path, f"cannot decode: {e}") from None
    except Exception as e:  # decoder bugs on hostile input: report, never crash a trial
        raise UnreadableImage(path, f"cannot decode: {type(e).__name__}: {e}") from None


def sample_sizes(root: str | Path, sample_ids, k: int = 32) -> list[tuple[int, int]]:
    """``(width, height)`` of up to ``k`` images spread over ``sample_ids`` (headers only: fast);
    unreadable ones are left out (the loader reports them)."""
    ids = list(sample_ids)
    step = max(1, len(ids) // k)
    sizes = []
    for sid in ids[::step][:k]:
        try:
            with Image.open(Path(root) / sid) as im:
                sizes.append(im.size)
        except Exception:
            continue
    return sizes


def check_image(path: str | Path, full: bool = True) -> str | None:
    """None when ``path`` is a readable image, else the reason it is not.

    ``full=False`` only reads the header (fast; misses truncated data), ``full=True`` decodes.
    """
    path = Path(path)
    if not is_image_name(path.name):
        return f"not an image file name (accepted: {', '.join(IMAGE_EXTENSIONS)}, any case)"
    if full:
        try:
            open_rgb(path)
        except UnreadableImage as e:
            return e.reason
        return None
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            im.size  # noqa: B018 - header parsed by open()
    except UnidentifiedImageError:
        return "not an image (unrecognised format)"
    except OSError as e:
        return f"cannot read: {e}"
    return None


def _probe(path: str, check: str, want_size: bool) -> tuple[str | None, tuple[int, int] | None]:
    """``(reason, size)``: reason is None for a readable image; size is ``(w, h)`` when asked for."""
    if check == "none":
        return None, None
    if check == "full":
        try:
            im = open_rgb(path)
        except UnreadableImage as e:
            return e.reason, None
        return None, (im.size if want_size else None)
    reason = check_image(path, full=False)
    if reason is not None or not want_size:
        return reason, None
    try:
        with Image.open(path) as im:
            return None, im.size
    except OSError as e:  # vanished or changed since the check
        return f"cannot read: {e}", None


def check_files(root: str, sample_ids, check: str = "header", progress: bool = False,
                sizes: bool = False) -> dict[str, tuple[str | None, tuple[int, int] | None]]:
    """``sample_id -> (reason, size)`` for every file ``root/sample_id``, in one pass.

    ``check`` is one of ``CHECKS``: ``"header"`` parses the header, ``"full"`` decodes (catches
    truncated files), ``"none"`` trusts the name. ``reason`` is None for a readable image; ``size``
    is ``(w, h)`` when ``sizes`` (else None). ``progress`` shows a tqdm bar on stderr (only when it
    is a terminal). Single-threaded on purpose: PIL holds the GIL while decoding, so threads do not help.
    """
    if check not in CHECKS:
        raise ValueError(f"check={check!r}; accepted: {', '.join(CHECKS)}")
    if check == "none":
        return {sid: (None, None) for sid in sample_ids}
    from tqdm import tqdm

    bar = tqdm(sample_ids, desc=f"checking images ({check})", unit="img", file=sys.stderr,
               disable=None if progress else True)  # None: off when stderr is not a terminal
    return {sid: _probe(os.path.join(root, sid), check, sizes) for sid in bar}
