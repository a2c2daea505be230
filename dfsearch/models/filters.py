"""Fixed input filters: what the network's first layer is given of the pixels (``input_filter``).

``none`` is the image itself. ``srm`` is three high-pass residuals of it: the image minus what its
neighbourhood predicts, through the three SRM kernels of steganalysis (Fridrich & Kodovsky 2012,
"Rich Models for Steganalysis of Digital Images") as Zhou et al. (CVPR 2018, "Learning Rich Features
for Image Manipulation Detection") feed them to a detector's noise stream, each kernel summed over
R, G and B: a 5 x 5 second-order "KV" kernel, a 3 x 3 second-order one and a first-order horizontal
one. Why: a generator's traces (the x2 upsampling of a GAN decoder, a face swap's blending boundary,
another sensor's noise) live in exactly that residual, and image content, which a detector must
ignore, is most of what the residual removes. A network given the residual need not learn the
high-pass itself first: from scratch in the cpu profile's budget ViT-Tiny goes from val AUC 0.51 to
0.78 on the embedded benchmark (``bench/zoo.py``, BENCHMARKS.md section 7); Luo et al. (CVPR 2021)
use the same SRM residual for face-forgery detection across datasets.

The filter runs inside the model, as a forward pre-hook on its input (``attach``): it holds no
parameter or buffer, so a model's layer groups, state dict and pretrained loading are those of the
plain architecture, and every place that builds a model from a checkpoint's config (predict, the
ensemble, an export) gets the same filter by passing ``input_filter`` to ``models.create``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# a residual of a natural image is ~0.05-0.25 of the normalised image's std; x4 brings it to the
# order of 1 that a first layer's init expects (on the embedded benchmark, real 0.2-1, fakes 0.5-1.2)
GAIN = 4.0


def srm_kernels() -> torch.Tensor:
    """The three SRM kernels as one conv weight (3 out, 3 in, 5, 5): each output channel is one
    kernel applied to the mean of R, G, B. Every kernel sums to zero: a flat image gives 0."""
    kv = torch.tensor([[-1, 2, -2, 2, -1],
                       [2, -6, 8, -6, 2],
                       [-2, 8, -12, 8, -2],
                       [2, -6, 8, -6, 2],
                       [-1, 2, -2, 2, -1]], dtype=torch.float32) / 12
    second = torch.zeros(5, 5)
    second[1:4, 1:4] = torch.tensor([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], dtype=torch.float32) / 4
    first = torch.zeros(5, 5)
    first[2, 1:4] = torch.tensor([1, -2, 1], dtype=torch.float32) / 2
    return torch.stack([kv, second, first])[:, None].repeat(1, 3, 1, 1) / 3


def srm(x: torch.Tensor) -> torch.Tensor:
    """The SRM residuals of a batch (N, 3, H, W), same shape; edges reflected, so the size is kept."""
    w = srm_kernels().to(device=x.device, dtype=x.dtype)
    return GAIN * F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), w)


FILTERS = {"srm": srm}


class _PreHook:
    """``module(x, ...)`` sees ``filter(x)``; a plain callable (picklable), not a submodule."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, module, args):
        return (FILTERS[self.name](args[0]), *args[1:])


def attach(model: nn.Module, name: str) -> nn.Module:
    """``model`` with the input filter ``name`` (``none``: unchanged); ``model.input_filter`` says which."""
    if name != "none":
        model.register_forward_pre_hook(_PreHook(name))
    model.input_filter = name
    return model
