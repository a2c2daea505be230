"""What a member looked at: a heatmap over the image, at the image's own size, values in [0, 1].

Two methods, chosen by the member's architecture, and the page names the one it shows:

* ``Grad-CAM`` (Selvaraju et al. 2017) for convolutional members: the last spatial feature map the
  network computes (the last module output of shape ``(N, C, H, W)`` with ``H, W > 1`` that is not
  an enlargement of its input, found with forward hooks, so any registered CNN works without a
  per-arch layer table), each channel weighted
  by the mean gradient of the member's log-odds on it, summed, ReLU;
* ``gradient saliency`` (Simonyan et al. 2014) for transformers (ViT, Swin), which have no spatial
  feature map to weight: ``max over channels |d log-odds / d input|``.

The explained score is the member's log-odds of *its own call*: of fake when its calibrated
P(fake) is >= 0.5, of real otherwise (Grad-CAM's ReLU keeps only what pushes towards the explained
class, so explaining "fake" on an image the member calls real would mostly show nothing).

The map is computed on what the member's network saw (``predict`` shows it the image through its
view: a centre crop, a grid of tiles, a resize, ``zoom``) and put back where those pixels came from
in the image: pixels the member never saw (outside a centre crop) are 0; where tiles overlap, the
mean. A hand-written hook (40 lines) rather than ``grad-cam`` from PyPI: that package pulls in
opencv-python and ttach for what is one weighted sum here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRANSFORMER_FAMILIES = ("vit", "swin")  # ``models.REGISTRY[arch].family``: no spatial feature map


@dataclass
class Heatmap:
    """``values``: ``(H, W)`` float64 in [0, 1] at the image's size (all 0: nothing in the image
    pushed the member towards its call); ``method``: what computed it, as the page labels it;
    ``target``: the call it explains, ``"fake"`` or ``"real"``."""

    values: np.ndarray
    method: str
    target: str


def method_for(arch: str) -> str:
    """``"grad-cam"`` or ``"saliency"`` for a member of architecture ``arch``."""
    from dfsearch import models

    family = models.REGISTRY[arch].family if arch in models.REGISTRY else ""
    return "saliency" if family in TRANSFORMER_FAMILIES else "grad-cam"


def _log_odds(out):
    """The network's log-odds of fake per input row, for either head layout (see ``prob_fake``)."""
    return out.float().squeeze(-1) if out.shape[-1] == 1 else (out[:, 1] - out[:, 0]).float()


def _grad_cam(model, x, sign: float) -> tuple[np.ndarray, str]:
    """Grad-CAM maps ``(K, h, w)`` for a batch ``x`` of ``K`` inputs, and the layer it used."""
    import torch

    acts: list = []

    def keep(module, inputs, out):
        if not (torch.is_tensor(out) and out.dim() == 4 and out.shape[2] > 1 and out.shape[3] > 1):
            return
        x_in = inputs[0] if inputs and torch.is_tensor(inputs[0]) else None
        # a map enlarged from a smaller one (AlexNet's adaptive pool to 6 x 6 from 1 x 1) holds no more
        # places than its input: the map to weight is the one before it
        if x_in is None or x_in.dim() != 4 or out.shape[2] * out.shape[3] <= x_in.shape[2] * x_in.shape[3]:
            acts.append((module, out))

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(keep) for m in leaves]
    try:
        with torch.enable_grad():
            score = sign * _log_odds(model(x.requires_grad_(True)))
            if not acts:
                raise RuntimeError(f"{type(model).__name__}: no spatial feature map to weight (Grad-CAM)")
            module, act = acts[-1]
            (grad,) = torch.autograd.grad(score.sum(), act)
    finally:
        for h in hooks:
            h.remove()
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1))
    name = next(n for n, m in model.named_modules() if m is module)
    return cam.detach().cpu().numpy(), name


def _saliency(model, x, sign: float) -> np.ndarray:
    """``max_c |d score / d x|`` per input, ``(K, H, W)``."""
    import torch

    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad((sign * _log_odds(model(x))).sum(), x)
    return grad.abs().amax(dim=1).cpu().numpy()


def _offsets(view, height: int, width: int) -> list[tuple[int, int]]:
    """The image coordinates of the top-left pixel of each crop the view takes (``crop`` policy):
    as ``CenterCrop`` and ``views.Tiles`` take them, a negative offset where they pad."""
    from dfsearch.data.views import tile_origins

    c = view.crop

    def centre(side):
        return int(round((side - c) / 2.0)) if side >= c else -((c - side) // 2)

    if view.eval_view == "tiles":
        pad_h, pad_w = (-((c - height) // 2) if height < c else 0), (-((c - width) // 2) if width < c else 0)
        if min(height, width) < c:  # Tiles pads (centre) only the short side(s) to the crop first
            height, width = max(height, c), max(width, c)
        return [(pad_h + top, pad_w + left) for top in tile_origins(height, c, view.eval_tiles)
                for left in tile_origins(width, c, view.eval_tiles)]
    return [(centre(height), centre(width))]


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)[None, None]
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


def to_image(maps: np.ndarray, view, height: int, width: int) -> np.ndarray:
    """Per-input maps ``(K, h, w)`` (on the network's input, any resolution) put back on the image:
    ``(height, width)``, the mean where inputs overlap, 0 where no input came from, scaled to [0, 1]."""
    total, count = np.zeros((height, width)), np.zeros((height, width))
    if view.policy in ("resize", "native"):  # the whole image, resampled (or as it is)
        total += sum(_resize(m, height, width) for m in maps)
        count += len(maps)
    else:
        c = view.crop
        for m, (top, left) in zip(maps, _offsets(view, height, width), strict=True):
            patch = _resize(m, c, c)  # the input is c x c native pixels (zoom only replicates them)
            t0, l0 = max(top, 0), max(left, 0)
            t1, l1 = min(top + c, height), min(left + c, width)
            total[t0:t1, l0:l1] += patch[t0 - top:t1 - top, l0 - left:l1 - left]
            count[t0:t1, l0:l1] += 1
    out = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    top = out.max()
    return out / top if top > 0 else out


def explain(member, image, prob_fake: float, device: str = "cpu", transform=None) -> Heatmap:
    """The heatmap of ``member`` (a ``predict.Member``) on a decoded RGB PIL ``image``, explaining
    its call at its calibrated ``prob_fake`` (>= 0.5: fake). ``transform``: the member's evaluation
    transform (``build_transform(*member.preprocessing)``), built here when not given."""
    from dfsearch.data.loading import build_transform

    if transform is None:
        transform = build_transform(*member.preprocessing)
    target = "fake" if prob_fake >= 0.5 else "real"
    # the member's Platt map may have a negative slope: then raw log-odds up is calibrated P(fake) down
    sign = (1.0 if target == "fake" else -1.0) * (1.0 if member.slope >= 0 else -1.0)
    x = transform(image).to(device)
    x = x if x.dim() == 4 else x[None]  # tiles: (K, C, h, w); one view: (C, h, w)
    if method_for(member.arch) == "saliency":
        maps, method = _saliency(member.model, x, sign), "gradient saliency"
    else:
        maps, layer = _grad_cam(member.model, x, sign)
        method = f"Grad-CAM ({layer})"
    width, height = image.size
    return Heatmap(to_image(maps, member.view, height, width), method, target)


def overlay(image, heat: np.ndarray, alpha: float = 0.5, min_side: int = 256):
    """``image`` with ``heat`` (``(H, W)`` in [0, 1]) blended over it in a colour map, enlarged
    (nearest neighbour: pixels stay visible as pixels) to at least ``min_side`` for the page."""
    from matplotlib import colormaps
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    colour = colormaps["jet"](heat)[..., :3]
    out = Image.fromarray(np.uint8(np.round(255 * ((1 - alpha) * rgb + alpha * colour))))
    scale = max(1, -(-min_side // min(out.size)))
    return out.resize((out.width * scale, out.height * scale), Image.NEAREST) if scale > 1 else out
