"""Models: a torch-free registry here, the torch side in ``factory`` (timm's package layout).

Importing this package imports neither torch nor timm: ``known_archs()``, ``get_spec(arch)``,
``num_groups(arch)``, ``fit_img_size(arch, size)``, ``pretrained_kind(arch, pretrained)`` and
``validate(arch, num_classes, img_size, pretrained)`` answer from the registry alone, so a command
can reject bad input before paying for torch. Each entry's builder is a ``"module:attr"`` string,
imported only when a model is built.

The torch-side names (``create``, ``freeze_to_top``, ``data_config``, ``layer_groups``,
``describe``, ``count_params``, ``prob_fake``, ``loss_fn``, ...) are
attributes of this package too, loaded from ``dfsearch.models.factory`` on first use (PEP 562), so
``models.create(...)`` works as it always did.

Adding an architecture is one ``register(ModelSpec(...))`` line: ``timm_name=`` for any timm model,
``builder="pkg.module:Class"`` for a custom one (which implements timm's ``group_matcher``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from dfsearch.errors import DfsearchError


@dataclass(frozen=True)
class ModelSpec:
    """One architecture, and the facts about it a command needs before torch is imported.

    The facts are recorded here (not asked of timm at run time, which would import torch) and
    checked against the real models and timm's pretrained configs by ``tests/test_models.py``.
    ``timm_name`` None means ``builder`` (``"module:attr"``) makes it.
    """

    name: str
    family: str                        # the search_spaces/<family>.yaml that searches it alone
    timm_name: str | None = None
    builder: str | None = None
    source: str = "timm"               # whose implementation: timm | torchvision | dfsearch
    groups: int = 0                    # layer groups, stem to head (timm's coarse group matcher)
    input_size: int = 224              # the side its pretrained weights were trained at
    min_img_size: int = 32             # the smallest side it accepts
    size_multiple: int = 1             # the side must be a multiple of this (a ViT's patch)
    takes_img_size: bool = False       # built for one input size (timm kwarg img_size: ViT, Swin)
    pretrained_tags: tuple[str, ...] = ()  # published weights; the first is what ``pretrained: true`` loads
    extra: dict = field(default_factory=dict)  # fixed kwargs for timm.create_model


REGISTRY: dict[str, ModelSpec] = {}
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # what ``pretrained: PATH`` may name


def register(spec: ModelSpec) -> ModelSpec:
    if (spec.timm_name is None) == (spec.builder is None):
        raise ValueError(f"ModelSpec {spec.name!r}: give exactly one of timm_name, builder")
    REGISTRY[spec.name] = spec
    return spec


def _timm(name: str, family: str, groups: int, tags: tuple, **kw) -> ModelSpec:
    return register(ModelSpec(name, family, timm_name=name, groups=groups, pretrained_tags=tags, **kw))


# The seed projects' architectures. Minimum sizes as measured (a forward pass at that side works, one
# below fails), except the ViTs' and Swin's (built for one size): 32 px, two patches / windows a side,
# a floor chosen here (timm builds them smaller). Input sizes, normalisation and tags from timm
# 1.0's pretrained configs.
register(ModelSpec("small_cnn", "cnn", builder="dfsearch.models.small_cnn:SmallCNN", source="dfsearch",
                   groups=4, input_size=64, min_img_size=16))
_timm("resnet18", "resnet", 6, ("a1_in1k", "a2_in1k", "a3_in1k", "tv_in1k", "gluon_in1k", "fb_ssl_yfcc100m_ft_in1k",
                                "fb_swsl_ig1b_ft_in1k"), min_img_size=16)
_timm("resnet50", "resnet", 6, ("a1_in1k", "a1h_in1k", "a2_in1k", "a3_in1k", "tv_in1k", "tv2_in1k", "ra_in1k",
                                "gluon_in1k", "fb_ssl_yfcc100m_ft_in1k", "fb_swsl_ig1b_ft_in1k"), min_img_size=16)
_timm("mobilenetv2_100", "mobilenet", 9, ("ra_in1k",), min_img_size=16)
_timm("efficientnet_b0", "efficientnet", 9, ("ra_in1k", "ra4_e3600_r224_in1k"), min_img_size=16)
_timm("legacy_xception", "xception", 15, ("tf_in1k",), input_size=299, min_img_size=16)
_timm("vgg16", "vgg", 14, ("tv_in1k",), min_img_size=32)
_timm("vgg19", "vgg", 17, ("tv_in1k",), min_img_size=32)
_timm("densenet121", "densenet", 6, ("ra_in1k", "tv_in1k"), min_img_size=29)
_timm("inception_v3", "inception", 14, ("tv_in1k", "tf_in1k", "tf_adv_in1k", "gluon_in1k"), input_size=299,
      min_img_size=75)
_timm("vit_tiny_patch16_224", "vit", 14, ("augreg_in21k_ft_in1k", "augreg_in21k"), min_img_size=32,
      size_multiple=16, takes_img_size=True)
_timm("vit_small_patch16_224", "vit", 14, ("augreg_in21k_ft_in1k", "augreg_in21k", "augreg_in1k", "dino"),
      min_img_size=32, size_multiple=16, takes_img_size=True)
_timm("vit_base_patch16_224", "vit", 14, ("augreg2_in21k_ft_in1k", "augreg_in21k_ft_in1k", "augreg_in21k",
                                          "augreg_in1k", "orig_in21k_ft_in1k", "orig_in21k", "dino", "mae",
                                          "sam_in1k"), min_img_size=32, size_multiple=16, takes_img_size=True)
_timm("swin_tiny_patch4_window7_224", "swin", 6, ("ms_in1k", "ms_in22k_ft_in1k", "ms_in22k"), min_img_size=32,
      size_multiple=32, takes_img_size=True)
register(ModelSpec("alexnet", "alexnet", builder="dfsearch.models.alexnet:AlexNet", source="torchvision",
                   groups=6, min_img_size=63, pretrained_tags=("tv_in1k",)))
register(ModelSpec("capsnet", "capsnet", builder="dfsearch.models.capsnet:CapsNet", source="dfsearch",
                   groups=3, input_size=64, min_img_size=16))


def known_archs() -> list[str]:
    return sorted(REGISTRY)


def get_spec(arch: str) -> ModelSpec:
    if arch not in REGISTRY:
        raise DfsearchError(f"unknown arch {arch!r}; known: {', '.join(known_archs())}")
    return REGISTRY[arch]


def num_groups(arch: str) -> int:
    """How many layer groups ``arch`` has: the upper bound for ``unfrozen`` (torch-free)."""
    return get_spec(arch).groups


def fit_img_size(arch: str, img_size: int, zoom: int = 1) -> int:
    """``img_size`` raised to what ``arch`` accepts (its minimum, a multiple of its patch and of
    ``zoom``, the input policy's pixel replication): a profile's size is a budget for every arch,
    and the few that cannot take it (InceptionV3 below 75 px) train at their smallest size
    instead; the trial's config records the size it used."""
    import math

    spec = get_spec(arch)
    size = max(img_size, spec.min_img_size)
    multiple = math.lcm(spec.size_multiple, zoom)
    return -(-size // multiple) * multiple


NO_WEIGHTS = (None, False, "", "none", "None", "false", "False")


def pretrained_kind(arch: str, pretrained) -> tuple[str, str | None]:
    """What ``pretrained`` asks of ``arch``: ``("none", None)``, ``("tag", TAG)`` (``True``: the
    default tag) or ``("path", PATH)``, a weights file or a directory holding ``<arch>.safetensors``.
    Raises DfsearchError for a tag the arch does not publish or a path that holds no weights for it
    (torch-free: a space is checked before Ray or torch start)."""
    spec = get_spec(arch)
    if pretrained in NO_WEIGHTS:
        return "none", None
    tags = spec.pretrained_tags
    if pretrained is True or pretrained in ("true", "True", "default"):
        if not tags:
            raise DfsearchError(f"pretrained for {arch}: it has no published weights; give a weights file or "
                                f"a directory holding {arch}.safetensors, or pretrained: false")
        return "tag", tags[0]
    value = str(pretrained)
    if value in tags:
        return "tag", value
    path = Path(value).expanduser()
    if path.is_dir():
        for suffix in WEIGHT_SUFFIXES:
            if (path / f"{arch}{suffix}").is_file():
                return "path", str(path / f"{arch}{suffix}")
        raise DfsearchError(f"pretrained {value}: the weights directory has no file for {arch}; expected "
                            f"{path / (arch + '.safetensors')} (or {', '.join(arch + s for s in WEIGHT_SUFFIXES[1:])})")
    if path.is_file():
        return "path", str(path)
    if "/" in value or value.endswith(WEIGHT_SUFFIXES):
        raise DfsearchError(f"pretrained weights file {path} does not exist ({arch}); pass a "
                            f"{'/'.join(WEIGHT_SUFFIXES)} file or a directory holding {arch}.safetensors")
    raise DfsearchError(f"pretrained {value!r} for {arch}: not a tag of its published weights "
                        f"({', '.join(tags) or 'none'}), nor a weights file or directory")


def validate(arch: str, num_classes: int = 1, img_size: int = 64, pretrained=None) -> ModelSpec:
    """The spec of ``arch`` if it can be built with these sizes and weights, else DfsearchError (torch-free)."""
    spec = get_spec(arch)
    if num_classes not in (1, 2):
        raise DfsearchError(f"num_classes {num_classes!r}: use 1 (sigmoid) or 2 (softmax)")
    if img_size < spec.min_img_size:
        raise DfsearchError(f"img_size {img_size} is too small for {arch}; need >= {spec.min_img_size}")
    if img_size % spec.size_multiple:
        what = "the patch size " if spec.family == "vit" else ""
        raise DfsearchError(f"img_size {img_size} for {arch}: must be a multiple of {what}{spec.size_multiple}")
    pretrained_kind(arch, pretrained)
    return spec


# ----------------------------------------------------------------------------- lazy torch side

_LAZY = {
    **{name: "dfsearch.models.factory" for name in (
        "create", "freeze_to_top", "data_config", "layer_groups", "count_params", "describe",
        "prob_fake", "loss_fn", "IMAGENET_MEAN", "IMAGENET_STD")},
    "SmallCNN": "dfsearch.models.small_cnn",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
