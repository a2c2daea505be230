"""The embedded benchmark: a synthetic real-vs-fake image set that behaves like GAN fakes.

* "real": natural-image-like content -- random-phase 1/f^alpha spectra (alpha varies per image),
  three correlated colour channels, random contrast and brightness.
* "fake": content drawn from the same distribution, then passed through a generator-like path:
  rendered at half resolution and upsampled by nearest / bilinear / a transposed convolution with a
  per-image random kernel, with part of the lost high-frequency detail added back. That leaves an
  upsampling fingerprint (periodic spectral peaks, missing detail), as real GAN decoders do.
* Both classes then share the same post-processing: optional Gaussian blur, camera-like noise,
  JPEG compression with a random quality. A model can only win by finding the fingerprint.

``difficulty`` in [0, 1] controls how much of the lost detail a fake gets back (and so how faint
its fingerprint is). Everything is deterministic given ``seed``; the folder layout is the generic
``OUT/{train,valid,test}/{real,fake}/*.jpg``, so the same loader reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from dfsearch.errors import DfsearchError
from dfsearch.paths import cache_dir

VERSION = 1  # bump when the recipe changes: cached sets are keyed by it
DEFAULTS = dict(n=3000, size=64, seed=0, difficulty=0.4)
SPLIT_SEEDS = {"train": 0, "valid": 1, "test": 2}


def _content(rng: np.random.Generator, size: int) -> np.ndarray:
    """A natural-image-like RGB float image in [0, 1], shape (size, size, 3)."""
    alpha = rng.uniform(1.6, 2.6)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amp = f ** (-alpha / 1.0)
    amp[0, 0] = 0.0

    def field() -> np.ndarray:
        phase = np.exp(2j * np.pi * rng.random((size, size)))
        x = np.real(np.fft.ifft2(amp * phase))
        return (x - x.mean()) / (x.std() + 1e-8)

    lum = field()
    chroma = rng.normal(0, 0.35, size=(3, 2))  # how two chroma fields tint each channel
    c1, c2 = field(), field()
    img = np.stack([lum + chroma[c, 0] * c1 + chroma[c, 1] * c2 for c in range(3)], axis=-1)
    img = img * rng.uniform(0.12, 0.25) + rng.uniform(0.35, 0.65, size=3)
    return np.clip(img, 0.0, 1.0)


def _downsample2(img: np.ndarray) -> np.ndarray:
    h, w, c = img.shape
    return img.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))


def _bilinear2(low: np.ndarray) -> np.ndarray:
    """x2 bilinear upsampling (half-pixel centres, edge clamp), pure numpy."""
    h, w, _ = low.shape

    def axis_weights(n):
        pos = (np.arange(2 * n) + 0.5) / 2 - 0.5
        i0 = np.clip(np.floor(pos).astype(int), 0, n - 1)
        i1 = np.clip(i0 + 1, 0, n - 1)
        t = np.clip(pos - np.floor(pos), 0, 1)
        return i0, i1, t

    y0, y1, ty = axis_weights(h)
    x0, x1, tx = axis_weights(w)
    rows = low[y0] * (1 - ty)[:, None, None] + low[y1] * ty[:, None, None]
    return rows[:, x0] * (1 - tx)[None, :, None] + rows[:, x1] * tx[None, :, None]


def _transposed2(low: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x2 'transposed convolution': zero insertion + a random 4x4 kernel whose four phases have
    unequal gains -- the checkerboard fingerprint of learned deconvolution layers."""
    h, w, c = low.shape
    up = np.zeros((2 * h, 2 * w, c))
    up[::2, ::2] = low
    base = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])
    k = base * (1 + rng.normal(0, 0.25, size=(4, 4)))
    # each output phase sees one quarter of the kernel; normalise the total gain to 4 (zeros inserted)
    k = k / k.sum() * 4
    pad = np.pad(up, ((2, 1), (2, 1), (0, 0)), mode="reflect")
    out = np.zeros_like(up)
    for dy in range(4):
        for dx in range(4):
            out += k[dy, dx] * pad[dy : dy + 2 * h, dx : dx + 2 * w]
    return out


def _generator_path(img: np.ndarray, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    low = _downsample2(img)
    mode = rng.integers(3)
    if mode == 0:
        up = low.repeat(2, axis=0).repeat(2, axis=1)
    elif mode == 1:
        up = _bilinear2(low)
    else:
        up = _transposed2(low, rng)
    # the generator recovers part of the detail it lost: fingerprint strength = 1 - keep
    keep = np.clip(0.2 + 0.75 * difficulty + rng.uniform(-0.05, 0.05), 0.0, 1.0)
    return np.clip(up + keep * (img - up), 0.0, 1.0)


def _postprocess(img: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """Shared by both classes: blur, camera noise, JPEG quality (returned for saving)."""
    im = Image.fromarray((img * 255).round().astype(np.uint8))
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 0.9)))
    arr = np.asarray(im, dtype=np.float32) / 255
    arr = arr + rng.normal(0, rng.uniform(0.004, 0.02), size=arr.shape)
    im = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))
    return im, int(rng.integers(75, 96))


def make_image(seed: int, split: str, index: int, fake: bool, size: int, difficulty: float):
    """One image, deterministic in its arguments. Returns (PIL image, JPEG quality)."""
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split], index, int(fake)])
    img = _content(rng, size)
    if fake:
        img = _generator_path(img, rng, difficulty)
    return _postprocess(img, rng)


def split_sizes(n: int) -> dict[str, int]:
    """``n`` training images; validation and test each get a fifth of that (at least 2)."""
    return {"train": n, "valid": max(2, n // 5), "test": max(2, n // 5)}


def validate_params(n: int, size: int, seed: int, difficulty: float) -> None:
    if not isinstance(n, int) or n < 4:
        raise DfsearchError(f"--n {n!r}: need an integer >= 4 (training images, half real, half fake)")
    if not isinstance(size, int) or size < 16 or size % 4:
        raise DfsearchError(f"--size {size!r}: need an integer >= 16 and divisible by 4")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise DfsearchError(f"--difficulty {difficulty!r}: need a number in [0, 1]")
    if not isinstance(seed, int) or seed < 0:
        raise DfsearchError(f"--seed {seed!r}: need a non-negative integer")


def generate(out: str | Path, *, n: int = 3000, size: int = 64, seed: int = 0,
             difficulty: float = 0.5, progress: bool = True) -> Path:
    """Write the benchmark to ``out`` (replaced atomically) and return it.

    ``out/synth.json`` records the parameters; the images follow the generic layout.
    """
    validate_params(n, size, seed, difficulty)
    out = Path(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    sizes = split_sizes(n)
    total = sum(sizes.values())
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"synth {out.name}", unit="img", disable=not progress, file=sys.stderr)
    for split, count in sizes.items():
        for cls in ("real", "fake"):
            (tmp / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            fake = i % 2 == 1
            im, quality = make_image(seed, split, i, fake, size, difficulty)
            im.save(tmp / split / ("fake" if fake else "real") / f"{i:06d}.jpg", quality=quality)
            bar.update()
    bar.close()
    meta = dict(VERSION=VERSION, n=n, size=size, seed=seed, difficulty=difficulty, splits=sizes)
    (tmp / "synth.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def default_dataset(*, n: int | None = None, size: int | None = None, seed: int | None = None,
                    difficulty: float | None = None, progress: bool = True) -> Path:
    """The cached embedded benchmark (generated on first use; later calls reuse it)."""
    p = {**DEFAULTS, **{k: v for k, v in dict(n=n, size=size, seed=seed, difficulty=difficulty).items()
                        if v is not None}}
    path = cache_dir() / f"synth-v{VERSION}-n{p['n']}-s{p['size']}-seed{p['seed']}-d{p['difficulty']}"
    if not (path / "synth.json").exists():
        print(f"dfsearch: generating the embedded synthetic dataset in {path} (once; cached)",
              file=sys.stderr)
        generate(path, progress=progress, **p)
    return path


def run(args) -> int:
    """``dfsearch synth OUT --n --size --seed --difficulty``."""
    out = generate(args.out, n=args.n, size=args.size, seed=args.seed, difficulty=args.difficulty,
                   progress=not args.json)
    meta = json.loads((out / "synth.json").read_text())
    if args.json:
        print(json.dumps({"out": str(out), **meta}))
    else:
        s = meta["splits"]
        print(f"wrote {sum(s.values())} images ({s['train']} train / {s['valid']} valid / {s['test']} test, "
              f"half real, half fake, {meta['size']}px, difficulty {meta['difficulty']}) to {out}")
    return 0
