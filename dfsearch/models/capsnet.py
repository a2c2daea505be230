"""A capsule network with dynamic routing (Sabour, Frosst & Hinton 2017, "Dynamic Routing Between
Capsules"), as the seed projects used, with a binary real/fake head.

two 3x3 conv-BN-ReLU layers at stride 1 (they see the native pixels) and a 2x2 max-pool ->
primary capsules (3x3 conv + BN, stride 2, vectors of ``primary_dim``, squashed) -> adaptive
average pooling to a ``grid`` x ``grid`` map, which bounds
the number of input capsules (and the transformation weights) whatever the input size -> two class
capsules (real, fake) of ``class_dim``, routed by agreement for ``routing_iterations``.

The paper classifies by capsule length (the probability that the entity exists) with a margin
loss. Here the head turns the two lengths into logits, ``scale * (|v_fake| - |v_real|)`` for one
logit or ``scale * (|v_real|, |v_fake|)`` for two, so that the capsule net trains with the same
loss, metrics and ensembling as every other architecture; ``scale`` is learnt (lengths live in
[0, 1), too narrow a range for a logit).

Why not the paper's 9x9 convs without normalisation: on the embedded benchmark (64 px, 120 steps of
64, the zoo bench's budget) that front end never left ln 2 (val AUC 0.49 at lr 3e-3, 0.55 with BN
added at 1e-3); the 3x3 conv-BN front end learns (0.59-0.60 at lr 1e-3 / 3e-3) and costs less
(~120 s against ~200 s for the budget). Capsule-Forensics (Nguyen, Yamagishi & Echizen 2019), the
capsule detector of forged faces, likewise puts a convolutional (VGG) front end before its capsules.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 1: keep the direction, map the length into [0, 1): ``|s|^2 / (1 + |s|^2) * s / |s|``."""
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1.0 + n2) * s / torch.sqrt(n2 + eps)


def route(u_hat: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Routing by agreement (Procedure 1). ``u_hat``: ``(B, I, J, D)``, what each of I input capsules
    predicts for each of J output capsules; returns the output capsules ``v``: ``(B, J, D)``.

    The logits ``b`` start at 0 (each input capsule couples equally to every output); each
    iteration couples an input capsule more to the outputs its prediction agrees with (dot
    product with ``v``).
    """
    b = torch.zeros(u_hat.shape[:3], dtype=u_hat.dtype, device=u_hat.device)
    for r in range(iterations):
        c = b.softmax(dim=2)  # coupling coefficients: over the output capsules
        v = squash((c.unsqueeze(-1) * u_hat).sum(dim=1))
        if r < iterations - 1:
            b = b + (u_hat * v.unsqueeze(1)).sum(dim=-1)
    return v


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CapsNet(nn.Module):
    """Capsule network for real/fake (``group_matcher``: stem, primary capsules, class capsules)."""

    def __init__(self, num_classes: int = 1, stem_channels: int = 64, primary_caps: int = 16,
                 primary_dim: int = 8, class_dim: int = 16, grid: int = 8, routing_iterations: int = 3, **_):
        super().__init__()
        self.num_classes, self.primary_dim, self.iterations = num_classes, primary_dim, routing_iterations
        self.stem = nn.Sequential(_conv_bn_relu(3, stem_channels // 2), _conv_bn_relu(stem_channels // 2, stem_channels),
                                  nn.MaxPool2d(2))
        self.primary = nn.Sequential(nn.Conv2d(stem_channels, primary_caps * primary_dim, 3, stride=2, padding=1,
                                               bias=False), nn.BatchNorm2d(primary_caps * primary_dim))
        self.pool = nn.AdaptiveAvgPool2d(grid)
        n_in = primary_caps * grid * grid
        # one transformation matrix per (input capsule, class capsule), as in the paper
        self.weight = nn.Parameter(0.05 * torch.randn(n_in, 2, class_dim, primary_dim))
        self.scale = nn.Parameter(torch.tensor(5.0))

    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^stem", blocks=r"^primary")  # weight, scale: the top group (the head)

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """The two class capsules ``(B, 2, class_dim)``: index 0 real, 1 fake."""
        u = self.pool(self.primary(self.stem(x)))                        # B, caps*dim, g, g
        b = u.shape[0]
        u = u.view(b, -1, self.primary_dim, u.shape[-2] * u.shape[-1])   # B, caps, dim, g*g
        u = squash(u.permute(0, 1, 3, 2).reshape(b, -1, self.primary_dim))  # B, I, dim
        u_hat = torch.einsum("ijdk,bik->bijd", self.weight, u)           # B, I, 2, class_dim
        return route(u_hat, self.iterations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = self.capsules(x).norm(dim=-1)                          # B, 2
        if self.num_classes == 1:
            return self.scale * (lengths[:, 1:] - lengths[:, :1])
        return self.scale * lengths
