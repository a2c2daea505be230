"""Checkpoint folders: weights (safetensors), training state (weights-only torch file), config (JSON).

Layout of one checkpoint folder::

    model.safetensors   the model's state dict (unwrapped from DDP)
    train_state.pt      optimizer / scheduler state, epoch, best score (loaded with weights_only=True)
    config.json         the TrainConfig plus resolved data config (input size, mean, std)
    meta.json           epoch, metrics, best epoch, skipped files
    predictions.parquet val/test probabilities (only in the checkpoint of a best epoch)

Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from timm.utils import unwrap_model

from dfsearch import models
from dfsearch.config import TrainConfig
from dfsearch.errors import DfsearchError

WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
CONFIG = "config.json"
META = "meta.json"


def save(folder: str | Path, model, config: dict, meta: dict, train_state: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap_model(model).state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    if train_state is not None:
        torch.save(train_state, folder / STATE)
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return folder


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise DfsearchError(f"checkpoint {folder}: missing {CONFIG}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DfsearchError(f"checkpoint {path}: not valid JSON ({e})") from e


def load_weights(folder: str | Path) -> dict:
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise DfsearchError(f"checkpoint {folder}: missing {WEIGHTS}")
    try:
        return load_file(str(path))
    except Exception as e:
        raise DfsearchError(f"checkpoint {path}: corrupted or unreadable weights ({e})") from e


def load_train_state(folder: str | Path) -> dict | None:
    path = Path(folder) / STATE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def build_model(config: dict) -> torch.nn.Module:
    """The model described by a checkpoint's config, randomly initialised but with the same
    structure (frozen groups included), ready for ``load_state_dict``."""
    c = TrainConfig(**config["train"])
    model = models.create(c.arch, pretrained=False, num_classes=c.num_classes, img_size=c.img_size,
                          input_filter=c.input_filter)
    models.freeze_to_top(model, c.unfrozen)
    return model


def load_model(folder: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, config) from a checkpoint folder; weights only, strict."""
    config = read_config(folder)
    model = build_model(config)
    try:
        model.load_state_dict(load_weights(folder), strict=True)
    except RuntimeError as e:
        raise DfsearchError(f"checkpoint {folder}: weights do not match {config['train']['arch']} ({e})") from e
    return model.to(device).eval(), config
