"""The torch side of the model registry: build, freeze, normalise, score.

``create(arch, pretrained=False, num_classes=1, img_size=64)`` builds any registered architecture;
``freeze_to_top(model, k)`` leaves only the top ``k`` layer groups trainable (timm's group matcher,
through the public ``timm.models.group_parameters`` / ``group_modules``; the head is the top
group); ``data_config(arch, img_size)`` resolves the input size and normalisation in one place
(timm's ``resolve_data_config`` over the arch's pretrained config, ImageNet defaults without one).

``pretrained`` is ``False`` (random init), ``True`` (the arch's default published weights) or one
of its tags (timm's hub / cache; torchvision's for AlexNet), a weights file (``.safetensors`` /
``.pth`` / ``.bin``, loaded weights-only through timm's ``pretrained_cfg_overlay=dict(file=...)``),
or a directory holding ``<arch>.safetensors`` (or ``.pth`` / ``.bin``): the layout for offline
clusters, one file per architecture. Asking for weights that cannot be had fails with a message
that says how to provide them; it never falls back to a random init.
"""

from __future__ import annotations

import importlib
import os

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from timm.models import group_modules, group_parameters, load_state_dict

from dfsearch.errors import DfsearchError
from dfsearch.models import ModelSpec, filters, fit_img_size, get_spec, pretrained_kind, validate
from dfsearch.models.weights import how_to_provide

IMAGENET_MEAN = IMAGENET_DEFAULT_MEAN  # (0.485, 0.456, 0.406)
IMAGENET_STD = IMAGENET_DEFAULT_STD  # (0.229, 0.224, 0.225)


def _builder(spec: ModelSpec):
    """The class / function named by ``spec.builder`` (``"module:attr"``)."""
    module, _, attr = spec.builder.partition(":")
    return getattr(importlib.import_module(module), attr)


def _load_matching(model: nn.Module, state: dict, source: str) -> None:
    """Load the tensors of ``state`` whose names and shapes match (a pretrained head of another
    class count is left out) into a non-timm architecture."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not state:
        raise DfsearchError(f"weights {source} have no tensor that matches {type(model).__name__}")
    model.load_state_dict(state, strict=False)


def _create_custom(spec: ModelSpec, kind: str, value, num_classes: int, **kwargs) -> nn.Module:
    model = _builder(spec)(num_classes=num_classes, **kwargs)
    if kind == "tag":  # the builder's own published weights (torchvision's, for AlexNet)
        try:
            state = model.pretrained_state_dict()
        except Exception as e:
            raise DfsearchError(f"{how_to_provide(spec.name)} (underlying error: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
        _load_matching(model, state, f"{spec.name}.{value}")
    elif kind == "path":
        _load_matching(model, load_state_dict(value, weights_only=True), value)
    return model


def create(arch: str, pretrained: bool | str | os.PathLike = False, num_classes: int = 1,
           img_size: int = 64, input_filter: str = "none", **kwargs) -> nn.Module:
    """Build ``arch`` for binary real/fake classification.

    ``num_classes`` 1 -> one logit (sigmoid = P(fake)); 2 -> two logits (softmax[:, 1] = P(fake)).
    ``pretrained``: false, true (the arch's default published weights), one of its tags
    (``ModelSpec.pretrained_tags``), a weights file, or a directory holding ``<arch>.safetensors``
    (or .pth/.pt/.bin); files are loaded weights-only. ``input_filter``: ``none`` or ``srm``
    (high-pass residuals before the first layer, ``dfsearch.models.filters``; no parameters, so the
    state dict is the plain arch's). Raises DfsearchError for an unknown arch, bad sizes, or
    weights that cannot be had (never a silent random init).
    """
    if input_filter not in ("none", *filters.FILTERS):
        raise DfsearchError(f"input_filter {input_filter!r}: accepted: none, {', '.join(filters.FILTERS)}")
    return filters.attach(_create(arch, pretrained, num_classes, img_size, **kwargs), input_filter)


def _create(arch: str, pretrained, num_classes: int, img_size: int, **kwargs) -> nn.Module:
    spec = validate(arch, num_classes, img_size)
    kind, value = pretrained_kind(arch, pretrained)  # validates the weights asked for (once: it stats files)
    if spec.builder is not None:
        return _create_custom(spec, kind, value, num_classes, **kwargs)
    kw = dict(spec.extra, num_classes=num_classes, **kwargs)
    if spec.takes_img_size:
        kw["img_size"] = img_size
    name = f"{spec.timm_name}.{value}" if kind == "tag" else spec.timm_name
    if kind == "path":
        kw["pretrained_cfg_overlay"] = dict(file=value)
    try:
        return init_head(timm.create_model(name, pretrained=kind != "none", **kw))
    except DfsearchError:
        raise
    except Exception as e:
        if kind == "path":
            raise DfsearchError(f"could not load pretrained weights for {arch} from {value}: {e}") from e
        if kind == "tag":
            raise DfsearchError(f"{how_to_provide(arch)} (underlying error: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
        raise


HEAD_STD = 0.01


def init_head(model: nn.Module) -> nn.Module:
    """The timm model with its classifier drawn N(0, ``HEAD_STD``), bias 0. Our 1 or 2 classes are
    never a published head's, so the head is always new (timm drops a pretrained one of another
    class count), and its family's init can be far off for one output. Why: timm's EfficientNet /
    MobileNet init draws the classifier U(-1/sqrt(out), 1/sqrt(out)), for one output U(-1, 1) over
    1280 features: MobileNetV2's initial logits have std ~7, and from scratch (or fine-tuning) the
    training loss stayed above chance (> ln 2) for the cpu profile's whole budget; InceptionV3's
    trunc-normal(0.1) head does the same over 2048 features. A small head starts every family at
    p ~ 0.5 (BiT and timm's ``head_init_scale`` do the same for transfer)."""
    layers = [m for m in model.get_classifier().modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if layers:  # the last one emits the logits
        nn.init.trunc_normal_(layers[-1].weight, std=HEAD_STD)
        if layers[-1].bias is not None:
            nn.init.zeros_(layers[-1].bias)
    return model


def data_config(arch: str, img_size: int) -> dict:
    """``{"input_size": (3, S, S), "mean": ..., "std": ...}`` for ``arch`` at ``img_size``.

    timm's ``resolve_data_config`` over the arch's pretrained config (a timm arch's weights were
    trained with its mean/std, e.g. 0.5/0.5 for the ViT); ImageNet defaults for a custom arch.
    """
    spec = get_spec(arch)
    cfg = timm.get_pretrained_cfg(spec.timm_name) if spec.timm_name else None
    dc = resolve_data_config(args=dict(img_size=int(img_size)), pretrained_cfg=cfg.to_dict() if cfg else None)
    return dict(input_size=tuple(dc["input_size"]), mean=tuple(dc["mean"]), std=tuple(dc["std"]))


def layer_groups(model: nn.Module) -> dict[int, list[str]]:
    """Parameter names per layer group, bottom (stem) to top (head), via the model's group matcher."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return {i: names for i, (_, names) in enumerate(sorted(groups.items()))}


def describe(arch: str) -> dict:
    """What ``dfsearch models`` shows of ``arch``: its registry facts, its parameter count and
    layer groups (counted on a model built on the meta device: no memory, no init cost) and its
    normalisation."""
    spec = get_spec(arch)
    with torch.device("meta"):
        model = create(arch, img_size=fit_img_size(arch, 64))
    dc = data_config(arch, spec.input_size)
    return dict(name=arch, family=spec.family, source=spec.source, params=count_params(model),
                groups=len(layer_groups(model)), input_size=spec.input_size, min_img_size=spec.min_img_size,
                size_multiple=spec.size_multiple, mean=list(dc["mean"]), std=list(dc["std"]),
                pretrained_tags=list(spec.pretrained_tags))


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
