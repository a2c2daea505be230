"""A decoded copy of a split's images on a node's local disk, built once per node and shared by
every trial (and loader process) there: each epoch then reads raw RGB pixels from a memory-mapped
file instead of decoding JPEG/PNG again. Decoding is most of the input pipeline's cost (a 224 px
JPEG: ~2 ms of CPU; a ResNet-50 step on an H100 eats hundreds of images in that time), and all of it
is the same every epoch, since augmentation happens after decoding.

Layout of one cache (``<cache_dir>/decoded/<key>/``, ``key`` = a hash of the root, the sample ids,
and each file's size and mtime, so a changed file builds a new cache): ``pixels.u8`` (every image's
HWC uint8 bytes, back to back), ``index.npy`` (per item: byte offset, height, width; height 0 =
unreadable) and ``unreadable.json`` (item -> why). The first process on a node builds it under a
file lock; the others wait and then open it. A cache is only ever used complete (renamed into
place when done).

``use_cache(setting, ...)`` resolves ``TrainConfig.decode_cache``: ``on``, ``off``, or ``auto`` (on
when the decoded pixels take at most a quarter of the local disk's free space).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dfsearch.data.images import UnreadableImage, open_rgb
from dfsearch.paths import cache_dir

SETTINGS = ("auto", "on", "off")
DISK_SHARE = 0.25  # auto: the decoded pixels may take this share of the free local disk


def cache_key(root: str, items: list) -> str:
    """Names the cache of ``items`` (``[(sample_id, label), ...]``) under ``root``: changes when
    any file's size or mtime does (one ``stat`` per file)."""
    h = hashlib.sha256(os.path.abspath(root).encode())
    for sid, _ in items:
        try:
            st = os.stat(os.path.join(root, sid))
            h.update(f"{sid}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{sid}\0missing\n".encode())
    return h.hexdigest()[:24]


def decoded_bytes(sizes: list[tuple[int, int]], n: int) -> int:
    """Estimated bytes of ``n`` decoded images, from the (width, height) of a sample of them."""
    if not sizes:
        return 0
    return int(np.mean([w * h * 3 for w, h in sizes]) * n)


def use_cache(setting: str, estimated_bytes: int, folder: Path | None = None) -> bool:
    """``on`` / ``off`` as said; ``auto``: whether ``estimated_bytes`` fit in ``DISK_SHARE`` of the
    free space where the cache goes."""
    if setting != "auto":
        return setting == "on"
    folder = folder or cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return estimated_bytes <= DISK_SHARE * shutil.disk_usage(folder).free
    except OSError:  # a read-only or missing cache folder: decode the files, as without a cache
        return False


def _decode(path: str):
    try:
        return np.asarray(open_rgb(path), dtype=np.uint8), None
    except UnreadableImage as e:
        return None, e.reason


class DecodedImages:
    """Read side: ``get(i)`` -> the i-th item's HWC uint8 array (a view of the memory map), or
    ``UnreadableImage``. Picklable (DataLoader processes open their own map)."""

    def __init__(self, folder: Path, root: str, items: list):
        self.folder, self.root, self.items = Path(folder), root, items
        self._index = np.load(self.folder / "index.npy")
        self._why = {int(k): v for k, v in json.loads((self.folder / "unreadable.json").read_text()).items()}
        self._pixels = None

    def __getstate__(self):
        return {**self.__dict__, "_pixels": None}

    def __len__(self):
        return len(self._index)

    def get(self, i: int) -> np.ndarray:
        off, h, w = (int(v) for v in self._index[i])
        if h == 0:
            raise UnreadableImage(os.path.join(self.root, self.items[i][0]), self._why.get(i, "unreadable"))
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r")
        return self._pixels[off: off + h * w * 3].reshape(h, w, 3)

    @property
    def nbytes(self) -> int:
        return int((self.folder / "pixels.u8").stat().st_size)


def open_or_build(root: str, items: list, *, folder: Path | None = None, workers: int | None = None,
                  progress=None) -> DecodedImages:
    """The decoded cache of ``items`` under ``root`` on this node: opened if complete, else built
    (once: concurrent callers on the node wait on a lock). ``workers``: decode threads (default:
    this process's CPUs); ``progress(done, total)`` is called as it builds."""
    base = (folder or cache_dir()) / "decoded"
    base.mkdir(parents=True, exist_ok=True)
    key = cache_key(root, items)
    final = base / key
    with open(base / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other ranks of this node wait here while one builds
        try:
            if not (final / "index.npy").exists():
                for stale in base.glob(f"{key}.partial-*"):  # a build killed midway (we hold the lock)
                    shutil.rmtree(stale, ignore_errors=True)
                _build(root, items, final, workers, progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return DecodedImages(final, root, items)


def _build(root: str, items: list, final: Path, workers: int | None, progress) -> None:
    tmp = final.with_name(final.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = np.zeros((len(items), 3), dtype=np.int64)
    why: dict[int, str] = {}
    paths = [os.path.join(root, sid) for sid, _ in items]
    workers = workers or max(1, len(os.sched_getaffinity(0)))
    offset = 0
    with open(tmp / "pixels.u8", "wb") as out, contextlib.ExitStack() as stack:
        # threads: PIL releases the GIL while it decodes, and a Ray worker must not fork
        pool = stack.enter_context(ThreadPoolExecutor(workers)) if workers > 1 and len(paths) > 64 else None
        decoded = pool.map(_decode, paths) if pool else map(_decode, paths)
        for i, (arr, reason) in enumerate(decoded):
            if arr is None:
                why[i] = reason
            else:
                out.write(arr.tobytes())
                index[i] = (offset, arr.shape[0], arr.shape[1])
                offset += arr.nbytes
            if progress is not None and ((i + 1) % 256 == 0 or i + 1 == len(paths)):
                progress(i + 1, len(paths))
    np.save(tmp / "index.npy", index)
    (tmp / "unreadable.json").write_text(json.dumps(why))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
