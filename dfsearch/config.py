"""The one trial configuration, validated once at the boundary (pydantic), then trusted."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

METRICS = ("val_acc", "val_auc", "val_loss")


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
    unfrozen: Union[int, Literal["all"]] = "all"
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=10)
    optimizer: str = "adamw"
    warmup_epochs: float = Field(0.0, ge=0)
    aug: AugConfig = Field(default_factory=AugConfig)
    seed: int = Field(0, ge=0)
    oversample: bool = False
    metric: Literal["val_acc", "val_auc", "val_loss"] = "val_acc"
    amp: bool = True          # only used on GPU
    loader_workers: int = Field(0, ge=0, le=64)

    @model_validator(mode="after")
    def _check(self):
        from dfsearch import models

        models.validate(self.arch, self.num_classes, self.img_size)  # DfsearchError names the arch
        from timm.optim import list_optimizers

        if self.optimizer not in list_optimizers():
            raise ValueError(f"optimizer {self.optimizer!r} is not a timm optimizer; e.g. adamw, sgd, "
                             f"adam, lamb, rmsprop")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} must be < epochs {self.epochs}")
        return self


def score(metrics: dict, metric: str) -> float:
    """Higher is better, whatever the metric (so Ray and our own bookkeeping agree)."""
    v = float(metrics[metric])
    return -v if metric == "val_loss" else v
