"""Models: one registry, one factory.

``create(arch, pretrained=False, num_classes=1, img_size=64)`` builds any registered architecture;
``freeze_to_top(model, k)`` leaves only the top ``k`` layer groups trainable (timm's group matcher;
the head is the top group); ``data_config(arch, img_size)`` resolves the input size and
normalisation in one place (timm's ``resolve_model_data_config`` for timm models).

Adding an architecture is one ``register(...)`` line for any timm model, a small builder for a
custom one. ``pretrained`` is ``False`` (random init), ``True`` (timm's hub / cache path), a weights
file (``.safetensors`` / ``.pth`` / ``.bin``, loaded weights-only through timm's
``pretrained_cfg_overlay=dict(file=...)``), or a directory holding ``<arch>.safetensors`` (or
``.pth`` / ``.bin``). Asking for weights that cannot be had fails with a message that says how to
provide them; it never falls back to a random init.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn as nn
from timm.models._manipulate import group_modules, group_parameters

from dfsearch.errors import DfsearchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture. ``timm_name`` None means ``builder`` makes it."""

    name: str
    timm_name: str | None = None
    builder: Callable[..., nn.Module] | None = None
    takes_img_size: bool = False  # timm kwarg img_size (ViTs)
    min_img_size: int = 16
    extra: dict = field(default_factory=dict)  # fixed kwargs for timm.create_model


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


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


register(ModelSpec("small_cnn", builder=SmallCNN))
register(ModelSpec("resnet18", timm_name="resnet18"))
register(ModelSpec("mobilenetv2_100", timm_name="mobilenetv2_100"))
register(ModelSpec("vit_tiny_patch16_224", timm_name="vit_tiny_patch16_224", takes_img_size=True,
                   min_img_size=32))


def known_archs() -> list[str]:
    return sorted(REGISTRY)


def get_spec(arch: str) -> ModelSpec:
    if arch not in REGISTRY:
        raise DfsearchError(f"unknown arch {arch!r}; known: {', '.join(known_archs())}")
    return REGISTRY[arch]


def validate(arch: str, num_classes: int = 1, img_size: int = 64) -> ModelSpec:
    spec = get_spec(arch)
    if num_classes not in (1, 2):
        raise DfsearchError(f"num_classes {num_classes!r}: use 1 (sigmoid) or 2 (softmax)")
    if img_size < spec.min_img_size:
        raise DfsearchError(f"img_size {img_size} is too small for {arch}; need >= {spec.min_img_size}")
    if spec.takes_img_size and img_size % 16:
        raise DfsearchError(f"img_size {img_size} for {arch}: must be a multiple of the patch size 16")
    return spec


def resolve_weights_file(arch: str, pretrained: str | os.PathLike) -> Path:
    """A weights file, or ``<dir>/<arch>.<suffix>`` for a weights directory."""
    p = Path(pretrained).expanduser()
    if p.is_dir():
        for suffix in WEIGHT_SUFFIXES:
            if (p / f"{arch}{suffix}").is_file():
                return p / f"{arch}{suffix}"
        raise DfsearchError(
            f"weights directory {p} has no file for {arch}; expected one of "
            f"{', '.join(arch + s for s in WEIGHT_SUFFIXES)}")
    if not p.is_file():
        raise DfsearchError(f"pretrained weights file {p} does not exist; pass a "
                            f"{'/'.join(WEIGHT_SUFFIXES)} file or a directory holding <arch>.safetensors")
    return p


def _how_to_provide(arch: str) -> str:
    return (f"pretrained weights for {arch} are not available offline. Provide them one of these ways: "
            f"(1) download once with network access (timm caches them under $HF_HOME / ~/.cache/huggingface) "
            f"and copy that cache here; (2) pass a weights file: --pretrained /path/to/{arch}.safetensors "
            f"(.pth/.bin also accepted, loaded weights-only); (3) pass a directory holding {arch}.safetensors: "
            f"--pretrained /path/to/weights_dir; or use --pretrained none for a random init")


def _load_custom_weights(model: nn.Module, path: Path) -> None:
    """Weights-only load for non-timm architectures (head dropped if its shape differs)."""
    state = timm.models.load_state_dict(str(path), weights_only=True)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in state]
    if len(missing) == len(own):
        raise DfsearchError(f"weights file {path} has no tensor that matches {type(model).__name__}")
    model.load_state_dict(state, strict=False)


def create(arch: str, pretrained: bool | str | os.PathLike = False, num_classes: int = 1,
           img_size: int = 64, **kwargs) -> nn.Module:
    """Build ``arch`` for binary real/fake classification.

    ``num_classes`` 1 -> one logit (sigmoid = P(fake)); 2 -> two logits (softmax[:, 1] = P(fake)).
    Raises DfsearchError for an unknown arch, bad sizes, or pretrained weights that cannot be had.
    """
    spec = validate(arch, num_classes, img_size)
    if pretrained in (None, "", "none", "None", "false", "False"):
        pretrained = False
    weights = None if isinstance(pretrained, bool) else resolve_weights_file(arch, pretrained)

    if spec.builder is not None:
        if pretrained is True:
            raise DfsearchError(f"{arch} has no published pretrained weights; pass a weights file or "
                                f"directory with --pretrained PATH, or use --pretrained none")
        model = spec.builder(num_classes=num_classes, **kwargs)
        if weights is not None:
            _load_custom_weights(model, weights)
        return model

    kw = dict(spec.extra, num_classes=num_classes, **kwargs)
    if spec.takes_img_size:
        kw["img_size"] = img_size
    if weights is not None:
        kw["pretrained_cfg_overlay"] = dict(file=str(weights))
    try:
        return timm.create_model(spec.timm_name, pretrained=bool(pretrained), **kw)
    except DfsearchError:
        raise
    except Exception as e:
        if weights is not None:
            raise DfsearchError(f"could not load pretrained weights for {arch} from {weights}: {e}") from e
        if pretrained:
            raise DfsearchError(f"{_how_to_provide(arch)} (underlying error: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]})") from e
        raise


def data_config(arch: str, img_size: int) -> dict:
    """Input size and normalisation for ``arch``: timm's resolved config for timm models."""
    spec = get_spec(arch)
    if spec.timm_name is None:
        return dict(input_size=(3, img_size, img_size), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    cfg = timm.get_pretrained_cfg(spec.timm_name)
    mean = tuple(cfg.mean) if cfg and cfg.mean else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg and cfg.std else IMAGENET_STD
    return dict(input_size=(3, img_size, img_size), mean=mean, std=std)


def layer_groups(model: nn.Module) -> dict[int, list[str]]:
    """Parameter names per layer group, bottom (stem) to top (head), via the model's group matcher."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return {i: names for i, (_, names) in enumerate(sorted(groups.items()))}


def num_groups(arch: str) -> int:
    """How many layer groups ``arch`` has (the upper bound for ``unfrozen``)."""
    return len(layer_groups(create(arch, num_classes=1, img_size=max(64, get_spec(arch).min_img_size))))


def freeze_to_top(model: nn.Module, k: int | str | None) -> dict:
    """Freeze all but the top ``k`` layer groups (``None`` / ``"all"``: train everything).

    Frozen groups get ``requires_grad=False`` and their BatchNorm layers become timm's
    ``FrozenBatchNorm2d`` (running statistics frozen too). Returns
    ``{"groups": G, "unfrozen": k, "trainable_params": N, "total_params": M}``.
    """
    groups = layer_groups(model)
    n = len(groups)
    if k is None or k == "all":
        k = n
    if not isinstance(k, int) or not 1 <= k <= n:
        raise DfsearchError(f"unfrozen={k!r}: this model has {n} layer groups; use 1..{n} or 'all'")
    frozen_ids = [g for g in groups if g < n - k]
    frozen_params = {name for g in frozen_ids for name in groups[g]}
    for name, p in model.named_parameters():
        if name in frozen_params:
            p.requires_grad_(False)
    if frozen_ids:
        mods = group_modules(model, model.group_matcher(coarse=True))
        ordered = [names for _, names in sorted(mods.items())]
        bn_types = (nn.BatchNorm2d, nn.SyncBatchNorm, timm.layers.BatchNormAct2d)
        bn_names = [m for g in frozen_ids if g < len(ordered) for m in ordered[g]
                    if isinstance(model.get_submodule(m), bn_types)]
        if bn_names:
            timm.utils.freeze(model, bn_names, include_bn_running_stats=True)
    return dict(groups=n, unfrozen=k, trainable_params=count_params(model, trainable=True),
                total_params=count_params(model))


def count_params(model: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def prob_fake(logits: torch.Tensor) -> torch.Tensor:
    """P(fake) from the model's output, for either head layout."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits.float().squeeze(-1))
    return torch.softmax(logits.float(), dim=-1)[:, 1]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits.float().squeeze(-1), labels.float())
    return nn.functional.cross_entropy(logits.float(), labels.long())
