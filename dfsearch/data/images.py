"""Reading one image file, and saying why when it cannot be read."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


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
