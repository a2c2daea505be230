"""What a model costs at predict time: every member of an ensemble runs on every image.

``checkpoint_cost(folder)`` is one checkpoint's parameter count (from the safetensors header, no
tensor read) and its measured images/s through the view it evaluates with (tiles: one forward
pass per tile), on this machine's CPU (or ``device``). ``combined(costs)``: a blend of several
runs all of them, so its images/s is ``1 / sum(1 / images_per_s)``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

BATCH = 16


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm statistics, not parameters


def count_params(folder: str | Path) -> int:
    """Parameters stored in ``folder/model.safetensors``, from its header alone (BatchNorm's
    running statistics are stored beside them and left out)."""
    from safetensors import safe_open

    from dfsearch.checkpoint import WEIGHTS

    with safe_open(str(Path(folder) / WEIGHTS), "np") as f:
        return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith(BUFFERS)))


def images_per_s(folder: str | Path, device: str = "cpu", batches: int = 2) -> float:
    """Images/s of the checkpoint's model in eval mode at its evaluation view: a warm-up batch,
    then ``batches`` timed batches of ``BATCH`` random images (the forward pass only: decoding is
    the same for every model)."""
    import torch

    from dfsearch.checkpoint import load_model
    from dfsearch.data.views import predict_probs

    model, config = load_model(folder, device=device)
    train = config["train"]
    side = int(config.get("data", {}).get("input_size", [3, train["img_size"]])[-1])
    tiles = int(train.get("eval_tiles", 2)) ** 2 if train.get("eval_view") == "tiles" else 0
    shape = (BATCH, tiles, 3, side, side) if tiles else (BATCH, 3, side, side)
    x = torch.rand(shape, device=device)
    with torch.no_grad():
        predict_probs(model, x)
        t0 = time.perf_counter()
        for _ in range(batches):
            predict_probs(model, x)
        return BATCH * batches / (time.perf_counter() - t0)


def checkpoint_cost(folder: str | Path, device: str = "cpu") -> dict:
    return {"params": count_params(folder), "images_per_s": images_per_s(folder, device)}


def combined(costs: list[dict]) -> dict:
    """The cost of running all of ``costs`` on every image."""
    return {"members": len(costs), "params": sum(c["params"] for c in costs),
            "images_per_s": 1.0 / sum(1.0 / c["images_per_s"] for c in costs)}
