"""Can the published weights a space asks for be had? Checked on the driver before Ray starts.

``check_available(arch, tag)`` returns quietly when the weights are in the local cache (the
Hugging Face hub cache for timm's ``hf_hub_id`` weights, ``$TORCH_HOME/hub/checkpoints`` for
URL-only ones such as AlexNet's and Xception's) or, when the hub is not switched off
(``HF_HUB_OFFLINE``), when their server answers a metadata request within ``timeout`` seconds.
Otherwise it raises DfsearchError naming the arch, the tag and how to provide the weights: an
offline cluster would otherwise learn it from the first trial's traceback, minutes later.

The check runs on the driver: on a multi-node cluster every node needs the same cache (or a
shared ``pretrained: DIR``), which this cannot see.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from dfsearch.errors import DfsearchError
from dfsearch.models import get_spec

HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader looks for, in order


def how_to_provide(arch: str) -> str:
    return (f"pretrained weights for {arch} are not available offline. Provide them one of these ways: "
            f"(1) download once with network access (timm caches them under $HF_HOME / ~/.cache/huggingface, "
            f"torchvision under $TORCH_HOME) and copy that cache here; (2) a weights file: "
            f"pretrained: /path/to/{arch}.safetensors (.pth/.bin also accepted, loaded weights-only); "
            f"(3) a directory holding {arch}.safetensors: pretrained: /path/to/weights_dir; "
            f"or pretrained: false for a random init")


def sources(arch: str, tag: str) -> tuple[str | None, str | None]:
    """``(hf_hub_id, url)`` of ``arch``'s weights ``tag`` (timm's pretrained config; AlexNet: torchvision's URL)."""
    spec = get_spec(arch)
    if spec.timm_name is None:
        from torchvision.models import AlexNet_Weights  # the one non-timm arch with published weights

        return None, AlexNet_Weights.IMAGENET1K_V1.url
    import timm

    cfg = timm.models.get_pretrained_cfg(f"{spec.timm_name}.{tag}")
    if cfg is None:
        raise DfsearchError(f"pretrained {tag!r} for {arch}: timm has no such weights")
    return cfg.hf_hub_id or None, cfg.url or None


def _in_hub_cache(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in HUB_FILES)


def _in_torch_cache(url: str) -> bool:
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file()


def _hub_answers(repo: str, timeout: float) -> bool:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(repo, HUB_FILES[0]), timeout=timeout)
        return True
    except Exception:
        return False


def _url_answers(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:
        return False


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def check_available(arch: str, tag: str, timeout: float = 5.0) -> str:
    """Where ``arch.tag`` would come from (``"cache"`` or ``"network"``); DfsearchError if from nowhere."""
    repo, url = sources(arch, tag)
    offline = _hub_offline()
    if (repo and _in_hub_cache(repo)) or (url and _in_torch_cache(url)):
        return "cache"
    if not offline and ((repo and _hub_answers(repo, timeout)) or (url and _url_answers(url, timeout))):
        return "network"
    where = " or ".join(x for x in (repo and f"the Hugging Face hub ({repo})", url) if x)
    raise DfsearchError(f"{how_to_provide(arch)} (tag {tag}: not in the local cache, and {where} "
                        f"{'is switched off by HF_HUB_OFFLINE' if offline else 'did not answer'})")
