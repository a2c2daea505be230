"""SmallCNN: the one custom architecture (registered as ``small_cnn``)."""

from __future__ import annotations

import torch
import torch.nn as nn


class SmallCNN(nn.Module):
    """A small custom CNN: [conv-BN-ReLU-pool] x3 -> dropout -> FC (seed 002's design, with BN).

    Implements timm's ``group_matcher`` contract so freezing works as for timm models.
    """

    def __init__(self, num_classes: int = 1, width: int = 32, drop_rate: float = 0.2, **_):
        super().__init__()
        w = width

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.stem = block(3, w)
        self.blocks = nn.Sequential(block(w, 2 * w), block(2 * w, 2 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(2 * w, num_classes)
        self.num_classes = num_classes

    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^stem", blocks=r"^blocks\.(\d+)")

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))
