"""Models: a torch-free registry here, the torch side in ``factory`` (timm's package layout).

Importing this package imports neither torch nor timm: ``known_archs()``, ``get_spec(arch)`` and
``validate(arch, num_classes, img_size)`` answer from the registry alone, so a command can reject
bad input before paying for torch. Each entry's builder is a ``"module:attr"`` string, imported
only when a model is built.

The torch-side names (``create``, ``freeze_to_top``, ``data_config``, ``layer_groups``,
``num_groups``, ``count_params``, ``prob_fake``, ``loss_fn``, ``resolve_weights_file``, ...) are
attributes of this package too, loaded from ``dfsearch.models.factory`` on first use (PEP 562), so
``models.create(...)`` works as it always did.

Adding an architecture is one ``register(ModelSpec(...))`` line: ``timm_name=`` for any timm model,
``builder="pkg.module:Class"`` for a custom one (which implements timm's ``group_matcher``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from dfsearch.errors import DfsearchError


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture. ``timm_name`` None means ``builder`` (``"module:attr"``) makes it."""

    name: str
    timm_name: str | None = None
    builder: str | None = None
    takes_img_size: bool = False  # timm kwarg img_size (ViTs)
    min_img_size: int = 16
    extra: dict = field(default_factory=dict)  # fixed kwargs for timm.create_model


REGISTRY: dict[str, ModelSpec] = {}
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # what ``--pretrained PATH`` may name


def register(spec: ModelSpec) -> ModelSpec:
    if (spec.timm_name is None) == (spec.builder is None):
        raise ValueError(f"ModelSpec {spec.name!r}: give exactly one of timm_name, builder")
    REGISTRY[spec.name] = spec
    return spec


register(ModelSpec("small_cnn", builder="dfsearch.models.small_cnn:SmallCNN"))
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
    """The spec of ``arch`` if it can be built with these sizes, else DfsearchError (torch-free)."""
    spec = get_spec(arch)
    if num_classes not in (1, 2):
        raise DfsearchError(f"num_classes {num_classes!r}: use 1 (sigmoid) or 2 (softmax)")
    if img_size < spec.min_img_size:
        raise DfsearchError(f"img_size {img_size} is too small for {arch}; need >= {spec.min_img_size}")
    if spec.takes_img_size and img_size % 16:
        raise DfsearchError(f"img_size {img_size} for {arch}: must be a multiple of the patch size 16")
    return spec


# ----------------------------------------------------------------------------- lazy torch side

_LAZY = {
    **{name: "dfsearch.models.factory" for name in (
        "create", "freeze_to_top", "data_config", "layer_groups", "num_groups", "count_params",
        "prob_fake", "loss_fn", "resolve_weights_file", "IMAGENET_MEAN", "IMAGENET_STD")},
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
