"""The embedded benchmark: a synthetic real-vs-fake image set that behaves like GAN fakes.

* "real": natural-image-like content -- random-phase 1/f^alpha spectra (alpha varies per image),
  three correlated colour channels, random contrast and brightness.
* "fake": content drawn from the same distribution, then passed through a generator-like path:
  rendered at half resolution and upsampled by nearest / bilinear / a transposed convolution with a
  per-image random kernel, with part of the lost high-frequency detail added back. That leaves an
  upsampling fingerprint (periodic spectral peaks, missing detail), as real GAN decoders do.
* Both classes then share the same post-processing: optional Gaussian blur, camera-like noise,
  JPEG compression with a random quality. A model can only win by finding the fingerprint.

Generator families (``families``; the default is ``upsample`` alone, the recipe above, byte for
byte what version 1 wrote). Each leaves its trace at another scale:

* ``upsample``: the whole image through the x2 generator path above (GAN synthesis, as the 140k
  set's StyleGAN fakes): a trace in every 2 x 2 block.
* ``blend``: a face swap. A soft-edged ellipse of another image, rendered at half resolution and
  bilinearly upsampled (smoother than the camera), colour-matched to the region it covers and
  pasted with a feathered mask (Li et al. 2020, "Face X-ray": the blending boundary; Mirsky & Lee
  2021): a region whose detail and noise level differ from the rest, and a boundary.
* ``spectral``: a generator without a camera (diffusion outputs): the content slightly low-passed
  (no sensor detail), then the generator's own high-frequency pattern added, a luminance-only,
  high-pass ("blue") noise instead of per-channel sensor noise (Corvi et al. 2023, Ricker et al.
  2024: diffusion images differ from real ones in the high-frequency spectrum).

With several families (or one other than ``upsample``) the fakes are written to
``fake/<family>/``, so ``dfsearch evaluate`` scores each family against the shared real images;
the loader reads sub-folders of a class folder as that class.

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
FAMILIES = ("upsample", "blend", "spectral")
DEFAULT_FAMILIES = ("upsample",)
FAMILY_SEEDS = {"blend": 1, "spectral": 2}  # upsample: none, so its images are version 1's


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


def _blend(img: np.ndarray, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """A face-swap-like fake: an ellipse of another image, generated smoother, colour-matched and
    pasted with a feathered edge."""
    size = img.shape[0]
    donor = _content(rng, size)
    smooth = _bilinear2(_downsample2(donor))
    keep = np.clip(0.1 + 0.6 * difficulty + rng.uniform(-0.05, 0.05), 0.0, 1.0)
    donor = smooth + keep * (donor - smooth)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cy, cx = size * (0.5 + rng.uniform(-0.1, 0.1, size=2))
    ry, rx = size * rng.uniform(0.22, 0.34), size * rng.uniform(0.18, 0.3)
    dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    mask = np.clip((1 - dist) / rng.uniform(0.1, 0.25), 0.0, 1.0)[..., None]  # 1 inside, a ramp at the edge
    inside = mask[..., 0] > 0.5
    # colour transfer, as swap pipelines do: the donor's region takes the target region's mean and std
    d_in, t_in = donor[inside], img[inside]
    donor = (donor - d_in.mean(0)) / (d_in.std(0) + 1e-6) * t_in.std(0) + t_in.mean(0)
    return np.clip(mask * donor + (1 - mask) * img, 0.0, 1.0)


def _spectral(img: np.ndarray, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """A camera-less generator: the content low-passed a little, plus a luminance-only blue noise."""
    im = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    smooth = np.asarray(im.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.5, 0.8))), dtype=np.float64) / 255
    noise = rng.normal(0, 1, size=img.shape[:2])
    blue = noise - 0.25 * (np.roll(noise, 1, 0) + np.roll(noise, -1, 0) + np.roll(noise, 1, 1) + np.roll(noise, -1, 1))
    amp = (1.0 - 0.7 * difficulty) * rng.uniform(0.012, 0.022)
    return np.clip(smooth + amp * blue[..., None], 0.0, 1.0)


def _fake(img: np.ndarray, rng: np.random.Generator, difficulty: float, family: str) -> np.ndarray:
    if family == "blend":
        return _blend(img, rng, difficulty)
    if family == "spectral":
        return _spectral(img, rng, difficulty)
    return _generator_path(img, rng, difficulty)


def _postprocess(img: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """Shared by both classes: blur, camera noise, JPEG quality (returned for saving)."""
    im = Image.fromarray((img * 255).round().astype(np.uint8))
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 0.9)))
    arr = np.asarray(im, dtype=np.float32) / 255
    arr = arr + rng.normal(0, rng.uniform(0.004, 0.02), size=arr.shape)
    im = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))
    return im, int(rng.integers(75, 96))


def make_image(seed: int, split: str, index: int, fake: bool, size: int, difficulty: float,
               family: str = "upsample"):
    """One image, deterministic in its arguments. Returns (PIL image, JPEG quality)."""
    key = [seed, SPLIT_SEEDS[split], index, int(fake)] + ([FAMILY_SEEDS[family]] if fake and family in FAMILY_SEEDS else [])
    rng = np.random.default_rng(key)
    img = _content(rng, size)
    if fake:
        img = _fake(img, rng, difficulty, family)
    return _postprocess(img, rng)


def family_of(index: int, families) -> str:
    """The family of fake number ``index`` (odd indices are fakes): the families take turns."""
    return families[(index // 2) % len(families)]


def check_families(families) -> tuple[str, ...]:
    """The families as a tuple, in the order given; DfsearchError naming an unknown or repeated one."""
    families = tuple(families)
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families or len(set(families)) < len(families):
        raise DfsearchError(f"--families {','.join(families)}: accepted: one or more of {', '.join(FAMILIES)}, "
                            f"each once (comma-separated)")
    return families


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
             difficulty: float = 0.5, families=DEFAULT_FAMILIES, progress: bool = True) -> Path:
    """Write the benchmark to ``out`` (replaced atomically) and return it.

    ``out/synth.json`` records the parameters (and the fakes per family and split); the images
    follow the generic layout, the fakes in ``fake/<family>/`` unless ``families`` is the default.
    """
    validate_params(n, size, seed, difficulty)
    families = check_families(families)
    nested = families != DEFAULT_FAMILIES
    per_family = {split: {f: 0 for f in families} for split in SPLIT_SEEDS}
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
        for f in families if nested else ():
            (tmp / split / "fake" / f).mkdir()
        for i in range(count):
            fake = i % 2 == 1
            family = family_of(i, families)
            im, quality = make_image(seed, split, i, fake, size, difficulty, family)
            folder = tmp / split / ("fake" if fake else "real")
            if fake:
                per_family[split][family] += 1
                folder = folder / family if nested else folder
            im.save(folder / f"{i:06d}.jpg", quality=quality)
            bar.update()
    bar.close()
    meta = dict(VERSION=VERSION, n=n, size=size, seed=seed, difficulty=difficulty, splits=sizes)
    if nested:
        meta.update(families=list(families), fakes_per_family=per_family)
    (tmp / "synth.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def default_dataset(*, n: int | None = None, size: int | None = None, seed: int | None = None,
                    difficulty: float | None = None, families=None, progress: bool = True) -> Path:
    """The cached embedded benchmark (generated on first use; later calls reuse it)."""
    p = {**DEFAULTS, **{k: v for k, v in dict(n=n, size=size, seed=seed, difficulty=difficulty).items()
                        if v is not None}}
    families = check_families(families or DEFAULT_FAMILIES)
    tag = "" if families == DEFAULT_FAMILIES else "-f" + "+".join(families)
    path = cache_dir() / f"synth-v{VERSION}-n{p['n']}-s{p['size']}-seed{p['seed']}-d{p['difficulty']}{tag}"
    if not (path / "synth.json").exists():
        print(f"dfsearch: generating the embedded synthetic dataset in {path} (once; cached)",
              file=sys.stderr)
        generate(path, progress=progress, families=families, **p)
    return path


def run(args) -> int:
    """``dfsearch synth OUT --n --size --seed --difficulty --families``."""
    out = generate(args.out, n=args.n, size=args.size, seed=args.seed, difficulty=args.difficulty,
                   families=args.families.split(","), progress=not args.json)
    meta = json.loads((out / "synth.json").read_text())
    if args.json:
        print(json.dumps({"out": str(out), **meta}))
    else:
        s = meta["splits"]
        print(f"wrote {sum(s.values())} images ({s['train']} train / {s['valid']} valid / {s['test']} test, "
              f"half real, half fake, {meta['size']}px, difficulty {meta['difficulty']}, fakes: "
              f"{', '.join(meta.get('families', DEFAULT_FAMILIES))}) to {out}")
    return 0
