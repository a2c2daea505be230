"""What the network sees of an image: the input policy, resolved in one place.

Fake-image detectors live on pixel-level traces (upsampling, blending, noise). Resizing a whole
image resamples every pixel and erases them, so the default is to show a network crops at the
image's native resolution (Wang et al. 2020, "CNN-generated images are surprisingly easy to spot...
for now": random 224 crops of 256 px images for training, a centre crop at test, no resizing).

Policies (``TrainConfig.input_policy``):

* ``crop``: training sees a random ``img_size`` crop, evaluation and ``dfsearch predict`` a centre
  crop (``eval_view: center``) or the mean over an ``eval_tiles`` x ``eval_tiles`` grid of crops
  spread over the image (``eval_view: tiles``); no pixel is resampled;
* ``resize``: the whole image resized to ``img_size`` (bilinear, antialiased), for training and
  evaluation: what plain image classifiers do;
* ``native``: the whole image as it is; ``img_size`` becomes the images' own side (they must be
  square and of one size, to be batched);
* ``auto`` (the default): ``crop`` when the images are at least the crop on both sides, else
  ``resize`` (images smaller than the network's input cannot be cropped to it).

``zoom`` (an integer, 1 by default): every pixel of the view becomes a ``zoom`` x ``zoom`` block of
identical input pixels (nearest-neighbour, exact: no value is interpolated), so a crop is
``img_size / zoom`` native pixels (``resize``: the image resized to ``img_size / zoom``). Why:
most ImageNet networks downsample x4 before their second layer (a stride-2 stem and a max-pool),
which suits 224 px photographs but throws away the pixel-level trace a fake is found by when the
images are small; zoom 2 lets the stem's stride fall on replicated pixels instead of native ones,
at the same compute (a ResNet-18 from scratch on the embedded benchmark, in the cpu budget: val
AUC 0.53 at zoom 1, 0.62 at zoom 2 with the small head of ``models.factory.init_head``;
``bench/zoo.py``, BENCHMARKS.md section 7).

``resolve`` turns ``auto`` into a concrete policy at the boundary (before Ray), from the sizes of
a sample of the dataset's images; the workers, the checkpoint's config and ``predict`` only ever
see the concrete one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from dfsearch.errors import DfsearchError

POLICIES = ("auto", "crop", "resize", "native")
EVAL_VIEWS = ("center", "tiles")


@dataclass(frozen=True)
class View:
    """A concrete input policy: what ``build_transform`` needs."""

    policy: str        # crop | resize | native
    img_size: int      # the network's input side
    eval_view: str = "center"
    eval_tiles: int = 2
    zoom: int = 1      # input pixels per pixel of the view, per side

    @property
    def crop(self) -> int:
        """The side of the image region the network sees, in native pixels."""
        return self.img_size // self.zoom


def check_zoom(policy: str, img_size: int, zoom: int) -> None:
    """DfsearchError unless ``zoom`` divides ``img_size`` (``native``: any zoom, the input is the
    images' side times it)."""
    if zoom < 1 or (policy != "native" and img_size % zoom):
        raise DfsearchError(f"zoom {zoom}: accepted: an integer >= 1 that divides the img_size ({img_size})")


def resolve(policy: str, img_size: int, image_sizes: Iterable[tuple[int, int]], *,
            eval_view: str = "center", eval_tiles: int = 2, zoom: int = 1, where: str = "input_policy") -> View:
    """The concrete view of ``policy`` for images of ``image_sizes`` (``(width, height)``, a
    sample of the dataset's). Raises DfsearchError naming ``where`` when the policy cannot work on
    these images (a crop larger than the images, ``native`` on images of mixed or non-square sizes,
    a ``zoom`` the policy or size cannot take)."""
    if policy not in POLICIES:
        raise DfsearchError(f"{where} {policy!r}: accepted: {', '.join(POLICIES)}")
    if eval_view not in EVAL_VIEWS:
        raise DfsearchError(f"eval_view {eval_view!r}: accepted: {', '.join(EVAL_VIEWS)}")
    check_zoom(policy, img_size, zoom)
    sizes = sorted(set(image_sizes))
    if not sizes:  # nothing to look at (no data given yet): the policy as asked, auto as crop
        return View("crop" if policy == "auto" else policy, img_size, eval_view, eval_tiles, zoom)
    smallest = min(min(w, h) for w, h in sizes)
    crop = img_size // zoom
    if policy == "auto":
        policy = "crop" if smallest >= crop else "resize"
    if policy == "crop" and smallest < crop:
        w, h = min(sizes, key=lambda s: min(s))
        raise DfsearchError(f"{where} crop: a {crop} px crop is larger than the images ({w}x{h} px "
                            f"seen); use an img_size <= {smallest * zoom}, or input_policy resize")
    if policy == "native":
        if len(sizes) > 1 or sizes[0][0] != sizes[0][1]:
            shown = ", ".join(f"{w}x{h}" for w, h in sizes[:4])
            raise DfsearchError(f"{where} native: needs square images of one size to batch them; seen {shown}; "
                                f"use input_policy crop")
        img_size = sizes[0][0] * zoom
    return View(policy, img_size, eval_view, eval_tiles, zoom)


def view_of(cfg, image_sizes: Iterable[tuple[int, int]]) -> View:
    """The concrete view of a ``TrainConfig`` for images of ``image_sizes``."""
    return resolve(cfg.input_policy, cfg.img_size, image_sizes, eval_view=cfg.eval_view, eval_tiles=cfg.eval_tiles,
                   zoom=cfg.zoom)


def tile_origins(side: int, size: int, n: int) -> list[int]:
    """``n`` crop origins of ``size`` evenly spread over ``side`` (the first at 0, the last at
    ``side - size``); one centred origin for ``n == 1`` or an image no larger than the crop."""
    if n == 1 or side <= size:
        return [max(0, (side - size) // 2)]
    return [round(i * (side - size) / (n - 1)) for i in range(n)]


def spatial_ops(view: View, train: bool, rescale: float = 0.0) -> list:
    """The torchvision.transforms.v2 ops that choose the pixels the network sees. ``rescale`` > 0
    (training only): a mild random-resized crop instead of the plain one (``RandomRescaledCrop``)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    s, c = view.img_size, view.crop
    # nearest-exact at an integer factor replicates each pixel zoom x zoom times (no interpolation)
    zoom = [T.Resize((s, s), interpolation=InterpolationMode.NEAREST_EXACT)] if view.zoom > 1 else []
    if view.policy == "native":
        return zoom
    if view.policy == "resize":
        return [T.Resize((c, c), antialias=True)] + ([RandomRescaledCrop(c, rescale)] if train and rescale else []) + zoom
    if train:
        return [RandomRescaledCrop(c, rescale) if rescale else T.RandomCrop(c, pad_if_needed=True)] + zoom
    if view.eval_view == "tiles":
        return [Tiles(c, view.eval_tiles)] + zoom
    return [T.CenterCrop(c)] + zoom


class RandomRescaledCrop:
    """A random square of side ``size * f``, ``f`` uniform in ``[1 - rescale, 1 + rescale]`` (at
    most the image's short side), resized to ``size``: torchvision's RandomResizedCrop with its
    scale measured against the crop, not the image, so that it stays mild (a few per cent of
    rescaling; a strong one smears the fingerprint). Draws from torch's RNG: seeded as the rest."""

    def __init__(self, size: int, rescale: float):
        self.size, self.rescale = size, rescale

    def __call__(self, img):
        import torch
        from torchvision.transforms.v2 import functional as F

        h, w = F.get_size(img)
        f = 1 - self.rescale + 2 * self.rescale * float(torch.rand(()))
        side = max(1, min(round(self.size * f), h, w))
        top = int(torch.randint(0, h - side + 1, ()))
        left = int(torch.randint(0, w - side + 1, ()))
        return F.resized_crop(img, top, left, side, side, [self.size, self.size], antialias=True)

    def __repr__(self):
        return f"RandomRescaledCrop(size={self.size}, rescale={self.rescale})"


class Tiles:
    """An ``n`` x ``n`` grid of ``size`` crops spread over the image, stacked: ``(n*n, C, size, size)``.
    ``predict_probs`` averages the network's probabilities over them."""

    def __init__(self, size: int, n: int):
        self.size, self.n = size, n

    def __call__(self, img):
        import torch
        from torchvision.transforms.v2 import functional as F

        h, w = F.get_size(img)
        if min(h, w) < self.size:  # smaller than a crop: padded, as CenterCrop does
            img = F.center_crop(img, [max(h, self.size), max(w, self.size)])
            h, w = F.get_size(img)
        crops = [F.crop(img, top, left, self.size, self.size)
                 for top in tile_origins(h, self.size, self.n) for left in tile_origins(w, self.size, self.n)]
        return torch.stack([torch.as_tensor(c) for c in crops])

    def __repr__(self):
        return f"Tiles(size={self.size}, n={self.n})"


def predict_probs(model, x):
    """P(fake) per image for a batch ``x`` of ``(B, C, H, W)``, or of ``(B, K, C, H, W)`` views of
    each image (``Tiles``), averaged over the K views."""
    from dfsearch.models import prob_fake

    if x.dim() == 5:
        b, k = x.shape[:2]
        return prob_fake(model(x.flatten(0, 1))).view(b, k).mean(dim=1)
    return prob_fake(model(x))
