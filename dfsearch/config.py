"""The one trial configuration, validated once at the boundary (pydantic), then trusted."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

METRICS = ("val_acc", "val_auc", "val_loss")
# The timm optimizers (``timm.optim.create_optimizer_v2(opt=...)``) a trial may use. A constant, not
# ``timm.optim.list_optimizers()``: that imports torch (seconds), and this check runs at the CLI
# boundary before torch; the constant also leaves out timm's names that need optional packages
# (bnb*: bitsandbytes, fused*: apex), which would only fail mid-trial. tests/test_models.py checks
# that every name here is still in timm's list.
OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "nesterov", "rmsprop", "rmsproptf", "lamb", "lars",
              "lion", "radam", "nadam", "nadamw", "adabelief", "adamp", "sgdp", "adan", "adopt", "laprop",
              "madgrad", "novograd", "adafactor", "adagrad", "adadelta", "adamax")


class AugConfig(BaseModel):
    """Training augmentation (see ``dfsearch.data.loading.Augment``)."""

    model_config = ConfigDict(extra="forbid")
    hflip: float = Field(0.5, ge=0, le=1)
    rotation: float = Field(0.0, ge=0, le=180)
    blur_p: float = Field(0.0, ge=0, le=1)
    blur_sigma: float = Field(1.0, gt=0, le=10)
    noise_std: float = Field(0.0, ge=0, le=0.5)
    jpeg_p: float = Field(0.0, ge=0, le=1)
    jpeg_quality: tuple[int, int] = (70, 95)
    color_jitter: float = Field(0.0, ge=0, le=1)
    rescale: float = Field(0.0, ge=0, le=0.5)

    @field_validator("jpeg_quality")
    @classmethod
    def _quality(cls, v):
        lo, hi = v
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg_quality {list(v)}: need [lo, hi] with 1 <= lo <= hi <= 100")
        return v


class TrainConfig(BaseModel):
    """Everything one trial needs besides the data index. Plain JSON round-trips."""

    model_config = ConfigDict(extra="forbid")
    arch: str = "small_cnn"
    pretrained: Union[bool, str] = False
    num_classes: Literal[1, 2] = 1
    img_size: int = Field(64, ge=16, le=1024)
    # what the network sees (dfsearch.data.views): auto -> crop at native resolution when the
    # images are large enough, else resize; the worker records the concrete policy it used
    input_policy: Literal["auto", "crop", "resize", "native"] = "auto"
    eval_view: Literal["center", "tiles"] = "center"
    eval_tiles: int = Field(2, ge=1, le=8)  # tiles per side for eval_view tiles
    zoom: int = Field(1, ge=1, le=8)  # each pixel of the view as zoom x zoom input pixels (dfsearch.data.views)
    # a fixed filter inside the model, before its first layer (dfsearch.models.filters): srm = three
    # high-pass residuals, where the generator's traces are and the image content is not
    input_filter: Literal["none", "srm"] = "none"
    unfrozen: Union[int, Literal["all"]] = "all"
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=10)
    optimizer: str = "adamw"
    warmup_epochs: float = Field(0.0, ge=0)
    # layer-wise lr decay (timm param_groups_layer_decay, BEiT): each group below the head
    # learns layer_decay times slower than the one above it; None: one lr for all
    layer_decay: Optional[float] = Field(None, gt=0, le=1)
    aug: AugConfig = Field(default_factory=AugConfig)
    seed: int = Field(0, ge=0)
    oversample: bool = False
    metric: Literal["val_acc", "val_auc", "val_loss"] = "val_acc"
    amp: bool = True          # only used on GPU
    # DataLoader processes per worker (decode + augment); "auto": on a GPU, the node's CPUs per GPU
    # less the training process (at most 8); on CPU 0 (they would compete with the training threads)
    loader_workers: Union[Annotated[int, Field(ge=0, le=64)], Literal["auto"]] = 0
    # decode every image once per node into a local uint8 cache (data.decoded): auto = when it takes
    # at most a quarter of the free local disk
    decode_cache: Literal["auto", "on", "off"] = "auto"

    @model_validator(mode="after")
    def _check(self):
        from dfsearch import models  # the registry: torch-free
        from dfsearch.data import views

        models.validate(self.arch, self.num_classes, self.img_size, self.pretrained)  # DfsearchError names the arch
        views.check_zoom(self.input_policy, self.img_size, self.zoom)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is not accepted; accepted: {', '.join(OPTIMIZERS)}")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} must be < epochs {self.epochs}")
        return self

