"""Turning a DatasetIndex split into batches: decode, augment (torchvision.transforms.v2), skip bad files.

Unreadable images never crash a trial: the dataset returns ``None`` for them, the collate function
drops them and hands their (index, reason) to the loop, which reports them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from dfsearch.data.images import UnreadableImage, open_rgb
from dfsearch.data.views import View, spatial_ops


@dataclass
class Augment:
    """Training-time augmentation. Defaults: horizontal flip only.

    Nothing here resamples the image unless asked (rotation, rescale), since resampling can erase
    the pixel-level fingerprints a detector needs.
    """

    hflip: float = 0.5           # probability
    rotation: float = 0.0        # max degrees
    blur_p: float = 0.0          # probability of a Gaussian blur
    blur_sigma: float = 1.0      # max sigma
    noise_std: float = 0.0       # Gaussian noise std (on [0, 1] pixels)
    jpeg_p: float = 0.0          # probability of re-compression
    jpeg_quality: tuple[int, int] = (70, 95)
    color_jitter: float = 0.0    # brightness/contrast/saturation strength
    rescale: float = 0.0         # mild random-resized crop: zoom by 1 +- rescale (0: a plain crop)


def build_transform(view: View, mean, std, aug: Augment | None = None) -> T.Compose:
    """uint8 HWC PIL -> normalised float CHW tensor (``(K, C, H, W)`` for tiled evaluation);
    ``aug`` None means evaluation. ``view`` (``dfsearch.data.views``) chooses the pixels."""
    ops: list = [T.ToImage(), *spatial_ops(view, train=aug is not None, rescale=aug.rescale if aug else 0.0)]
    if aug is not None:
        if aug.hflip > 0:
            ops.append(T.RandomHorizontalFlip(aug.hflip))
        if aug.rotation > 0:
            ops.append(T.RandomRotation(aug.rotation))
        if aug.color_jitter > 0:
            s = aug.color_jitter
            ops.append(T.ColorJitter(brightness=s, contrast=s, saturation=s))
        if aug.jpeg_p > 0:
            ops.append(T.RandomApply([T.JPEG(tuple(int(q) for q in aug.jpeg_quality))], p=aug.jpeg_p))
    ops.append(T.ToDtype(torch.float32, scale=True))
    if aug is not None:
        if aug.blur_p > 0:
            ops.append(T.RandomApply([T.GaussianBlur(5, sigma=(0.1, max(0.1, aug.blur_sigma)))], p=aug.blur_p))
        if aug.noise_std > 0:
            ops.append(T.GaussianNoise(sigma=aug.noise_std, clip=True))
    ops.append(T.Normalize(mean=list(mean), std=list(std)))
    return T.Compose(ops)


class ImageList(torch.utils.data.Dataset):
    """Items ``[(sample_id, label), ...]`` under ``root``; ``__getitem__`` -> (x, label, i) or
    ``(None, reason, i)`` when the file cannot be decoded. With ``pixels`` (``data.decoded``: the
    same items decoded once on this node) the pixels come from there instead of the files; the
    transform sees the same uint8 RGB image either way."""

    def __init__(self, root: str, items: list, transform, pixels=None):
        self.root, self.items, self.transform, self.pixels = root, items, transform, pixels

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        sample_id, label = self.items[i]
        try:
            if self.pixels is not None:
                img = Image.fromarray(self.pixels.get(i))  # as a file gives it: the same tensors, bit for bit
            else:
                img = open_rgb(os.path.join(self.root, sample_id))
        except UnreadableImage as e:
            return None, e.reason, i
        return self.transform(img), int(label), i


def collate(batch):
    """Stack the good samples; return ``(x, y, idx, bad)`` with ``bad = [(i, reason), ...]``."""
    good = [b for b in batch if b[0] is not None]
    bad = [(b[2], b[1]) for b in batch if b[0] is None]
    if not good:
        return None, None, None, bad
    x = torch.stack([b[0] for b in good])
    y = torch.tensor([b[1] for b in good], dtype=torch.long)
    idx = torch.tensor([b[2] for b in good], dtype=torch.long)
    return x, y, idx, bad


class ShardSampler(torch.utils.data.Sampler):
    """Epoch-seeded shuffled shard of ``n`` items for rank ``rank`` of ``world`` (like
    DistributedSampler, but evaluation shards are not padded: every sample is seen exactly once).
    With ``weights``: each epoch draws ``n`` items with replacement in proportion to them (what
    ``torch.utils.data.WeightedRandomSampler`` does), then shards the draw, so the ranks see
    disjoint parts of one balanced epoch."""

    def __init__(self, n: int, rank: int, world: int, shuffle: bool, seed: int = 0, pad: bool = True,
                 weights=None):
        self.n, self.rank, self.world, self.shuffle, self.seed, self.pad = n, rank, world, shuffle, seed, pad
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def _indices(self):
        if self.weights is not None:
            order = np.random.default_rng([self.seed, self.epoch]).choice(self.n, self.n, p=self.weights)
        elif self.shuffle:
            g = np.random.default_rng([self.seed, self.epoch])
            order = g.permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.pad and self.n % self.world:
            order = np.concatenate([order, order[: self.world - self.n % self.world]])
        return order[self.rank :: self.world].tolist()

    def __iter__(self):
        return iter(self._indices())

    def __len__(self):
        return len(self._indices())


def balanced_weights(labels) -> np.ndarray:
    """Per-item sampling weights that give every class the same expected share (1 / class count)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    return 1.0 / counts[labels]


def make_loader(dataset, *, batch_size: int, rank: int, world: int, shuffle: bool, seed: int,
                workers: int = 0, pad: bool = True, pin_memory: bool = False, oversample: bool = False):
    """``oversample``: draw the training epoch class-balanced (``balanced_weights``) instead of
    shuffling it (the minority class is seen as often as the majority)."""
    weights = balanced_weights([label for _, label in dataset.items]) if oversample else None
    sampler = ShardSampler(len(dataset), rank, world, shuffle=shuffle, seed=seed, pad=pad, weights=weights)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=workers > 0, drop_last=False)
