"""Search spaces are data: ``search_spaces/*.yaml``, loaded once, validated, then trusted.

A space file::

    metric: val_acc                 # val_acc | val_auc | val_loss (what TPE optimises and trials report)
    prune_metric: val_auc           # optional: what ASHA compares at its rungs (default: metric)
    profiles:                       # budgets; pick one with --profile (default: gpu if GPUs, else cpu)
      cpu: {num_samples: 10, max_epochs: 3, grace_period: 1, reduction_factor: 2, img_size: 64,
            workers_per_trial: 2, steps_per_epoch: null}
      gpu: {...}
    archs:                          # conditional space: each architecture has its own ranges
      resnet18:
        lr: {log_uniform: [1.0e-4, 3.0e-3]}
        weight_decay: {log_uniform: [1.0e-6, 1.0e-2]}
        unfrozen: {int: [1, all]}   # bounded by the arch's real layer-group count
        batch_size: {choice: [32, 64]}
        optimizer: {choice: [adamw, sgd]}
        aug: {hflip: {choice: [0.0, 0.5]}, rotation: {uniform: [0, 10]}, ...}

or a family file that reuses another: ``base: all_models.yaml`` plus ``only: [resnet18]`` (and
optionally its own ``metric`` / ``prune_metric`` / ``profiles`` / ``archs``, which replace the base's
entry of that arch). Top-level keys starting with ``x-`` are ignored: they hold blocks that YAML
anchors share between archs (``x-aug: &aug {...}``, then ``aug: *aug``).

Per arch besides the optimiser ranges: ``pretrained`` (false, true = the arch's default tag, a tag
of ``dfsearch models``, a weights file or a directory of ``<arch>.safetensors``), ``layer_decay``,
``input_policy`` (auto | crop | resize | native: ``dfsearch.data.views``), ``eval_view``
(center | tiles), ``eval_tiles``, ``zoom`` (each pixel of the view as zoom x zoom input pixels),
``input_filter`` (none | srm: high-pass residuals before the first layer, ``dfsearch.models.filters``). A
profile's ``img_size`` is raised to an arch's minimum where it is below it, and to a multiple of the
trial's zoom (``models.fit_img_size``).

A parameter is a constant or one of ``{log_uniform: [lo, hi]}``, ``{uniform: [lo, hi]}``,
``{int: [lo, hi]}`` (hi may be ``all`` for ``unfrozen``), ``{choice: [a, b, ...]}``.
``SpaceSampler`` turns a space into Optuna's define-by-run function (parameter names
``arch``, ``<arch>/lr``, ``<arch>/aug/hflip``, ...: distinct per arch, so TPE models them apart).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dfsearch import models
from dfsearch.config import AugConfig, TrainConfig
from dfsearch.errors import DfsearchError
from dfsearch.paths import SPACES_DIR

KINDS = ("log_uniform", "uniform", "int", "choice")
TUNABLE = ("lr", "weight_decay", "unfrozen", "batch_size", "optimizer", "warmup_epochs", "pretrained",
           "num_classes", "oversample", "layer_decay", "input_policy", "eval_view", "eval_tiles", "zoom",
           "input_filter")
AUG_KEYS = tuple(AugConfig.model_fields)


class Profile(BaseModel):
    """Budgets for one kind of machine/data."""

    model_config = ConfigDict(extra="forbid")
    num_samples: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)
    img_size: int = Field(64, ge=16)
    workers_per_trial: int = Field(1, ge=1)
    steps_per_epoch: Optional[int] = Field(None, ge=1)  # cap on optimisation steps per epoch
    # DataLoader processes per Train worker (decode + augment); "auto": TrainConfig.loader_workers
    loader_workers: Union[Annotated[int, Field(ge=0, le=64)], Literal["auto"]] = 0
    decode_cache: Literal["auto", "on", "off"] = "auto"  # TrainConfig.decode_cache (data.decoded)


class SpaceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: Optional[str] = None
    only: Optional[list[str]] = None
    metric: Optional[Literal["val_acc", "val_auc", "val_loss"]] = None
    prune_metric: Optional[Literal["val_acc", "val_auc", "val_loss"]] = None
    profiles: dict[str, Profile] = {}
    archs: dict[str, dict[str, Any]] = {}


def metric_mode(metric: str) -> str:
    return "min" if metric == "val_loss" else "max"


class Space:
    """A validated search space: ``metric`` and ``mode`` (what TPE optimises), ``prune_metric``
    and ``prune_mode`` (what ASHA compares at its rungs), ``profiles``, and ``archs`` mapping each
    arch to ``{param: spec}`` where spec is a constant or ``(kind, args)``."""

    def __init__(self, name: str, path: Path, metric: str, profiles: dict[str, Profile], archs: dict,
                 prune_metric: str | None = None):
        self.name, self.path, self.metric, self.profiles, self.archs = name, path, metric, profiles, archs
        self.mode = metric_mode(metric)
        self.prune_metric = prune_metric or metric
        self.prune_mode = metric_mode(self.prune_metric)

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise DfsearchError(f"{self.path}: no profile {name!r}; available: {', '.join(self.profiles)}")
        return self.profiles[name]

    def check_views(self, profile_name: str, image_sizes) -> None:
        """DfsearchError when an input policy of the space cannot work on images of
        ``image_sizes`` at the profile's size (a crop larger than the images, ``native`` on mixed
        sizes): before any trial starts."""
        from dfsearch.data import views

        sizes = list(image_sizes)
        size = self.profile(profile_name).img_size
        for arch, params in self.archs.items():
            # a range's ends suffice: the smallest zoom takes the largest crop
            for policy in _extreme_values(params.get("input_policy", "auto")):
                for zoom in _extreme_values(params.get("zoom", 1)):
                    views.resolve(policy, models.fit_img_size(arch, size, zoom), sizes, zoom=zoom,
                                  where=f"{self.path}: field archs.{arch}.input_policy (profile {profile_name})")

    def weight_requests(self) -> list[tuple[str, str]]:
        """``(arch, tag)`` for every published-weights tag a trial of this space could ask for."""
        from dfsearch import models

        out = []
        for arch, params in self.archs.items():
            spec = params.get("pretrained", False)
            for value in _extreme_values(spec):  # a constant or a choice (no range takes a weights value)
                kind, tag = models.pretrained_kind(arch, value)
                if kind == "tag" and (arch, tag) not in out:
                    out.append((arch, tag))
        return out

    def check_weights(self, timeout: float = 5.0) -> None:
        """DfsearchError, naming the field, when published weights the space asks for are neither
        cached here nor downloadable (dfsearch/models/weights.py): before Ray starts."""
        from dfsearch.models import weights

        for arch, tag in self.weight_requests():
            try:
                weights.check_available(arch, tag, timeout)
            except DfsearchError as e:
                raise DfsearchError(f"{self.path}: field archs.{arch}.pretrained: {e}") from None

    def train_config(self, config: dict, profile: Profile, seed: int = 0) -> TrainConfig:
        """The TrainConfig of one trial from Tune's (unflattened) config."""
        arch = config["arch"]
        params = dict(config.get(arch, {}))
        aug = params.pop("aug", {})
        size = models.fit_img_size(arch, profile.img_size, int(params.get("zoom", 1)))
        return TrainConfig(arch=arch, img_size=size, epochs=profile.max_epochs,
                           metric=self.metric, seed=seed, aug=AugConfig(**aug),
                           loader_workers=profile.loader_workers, decode_cache=profile.decode_cache, **params)


def available() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def _resolve_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p.resolve()
    q = SPACES_DIR / f"{name_or_path}.yaml"
    if q.exists():
        return q
    raise DfsearchError(f"unknown search space {str(name_or_path)!r}; available: {', '.join(available())} "
                        f"(or a path to a .yaml file)")


def _read(path: Path) -> SpaceFile:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DfsearchError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise DfsearchError(f"{path}: expected a mapping with keys metric, profiles, archs (or base, only)")
    raw = {k: v for k, v in raw.items() if not str(k).startswith("x-")}  # blocks for YAML anchors
    try:
        return SpaceFile(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(map(str, err["loc"]))
        accepted = {"extra_forbidden": f"accepted keys here: {', '.join(_accepted_keys(err['loc']))}"}
        hint = accepted.get(err["type"], "")
        raise DfsearchError(f"{path}: field {loc}: {err['msg']}" + (f"; {hint}" if hint else "")) from None


def _accepted_keys(loc) -> list[str]:
    if len(loc) >= 3 and loc[0] == "profiles":
        return list(Profile.model_fields)
    return list(SpaceFile.model_fields)


def _check_param(path: Path, where: str, key: str, spec, arch: str):
    """Validate one parameter spec; returns a constant or (kind, args)."""
    from dfsearch import models

    if not isinstance(spec, dict):
        return spec
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise DfsearchError(f"{path}: field {where}: {spec!r} is not a parameter spec; use a constant or "
                            f"one of {{{' | '.join(k + ': ...' for k in KINDS)}}}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise DfsearchError(f"{path}: field {where}.choice: need a non-empty list")
        return (kind, list(args))
    if not isinstance(args, list) or len(args) != 2:
        raise DfsearchError(f"{path}: field {where}.{kind}: need [low, high]")
    lo, hi = args
    if kind == "int" and hi == "all":
        if key != "unfrozen":
            raise DfsearchError(f"{path}: field {where}: 'all' is only accepted as the upper bound of unfrozen")
        hi = models.num_groups(arch)
    try:
        lo, hi = (int(lo), int(hi)) if kind == "int" else (float(lo), float(hi))
    except (TypeError, ValueError):
        raise DfsearchError(f"{path}: field {where}.{kind}: bounds {args!r} must be numbers") from None
    if not lo <= hi or (kind == "log_uniform" and lo <= 0):
        raise DfsearchError(f"{path}: field {where}.{kind}: bad range [{lo}, {hi}]; need low <= high"
                            + (" and low > 0" if kind == "log_uniform" else ""))
    if key == "unfrozen":
        n = models.num_groups(arch)
        if lo < 1 or hi > n:
            raise DfsearchError(f"{path}: field {where}.int: [{lo}, {hi}] is outside 1..{n} "
                                f"({arch} has {n} layer groups; 'all' means {n})")
    return (kind, (lo, hi))


def _extreme_values(spec):
    """A constant as ``[value]``, a choice's options, a range's two ends."""
    if not isinstance(spec, tuple):
        return [spec]
    kind, args = spec
    return list(args)


def _check_arch(path: Path, arch: str, params: dict) -> dict:
    from dfsearch import models

    if arch not in models.REGISTRY:
        raise DfsearchError(f"{path}: field archs.{arch}: unknown arch; known: {', '.join(models.known_archs())}")
    if not isinstance(params, dict):
        raise DfsearchError(f"{path}: field archs.{arch}: expected a mapping of parameters")
    out = {}
    for key, spec in params.items():
        where = f"archs.{arch}.{key}"
        if key == "aug":
            if not isinstance(spec, dict):
                raise DfsearchError(f"{path}: field {where}: expected a mapping; keys: {', '.join(AUG_KEYS)}")
            aug = {}
            for k, s in spec.items():
                if k not in AUG_KEYS:
                    raise DfsearchError(f"{path}: field {where}.{k}: unknown; accepted: {', '.join(AUG_KEYS)}")
                aug[k] = _check_param(path, f"{where}.{k}", k, s, arch)
            out["aug"] = aug
        elif key in TUNABLE:
            out[key] = _check_param(path, where, key, spec, arch)
        else:
            raise DfsearchError(f"{path}: field {where}: unknown parameter; accepted: {', '.join(TUNABLE + ('aug',))}")
    # every value a trial could draw must make a valid TrainConfig: check the corners now
    corners = {k: _extreme_values(v) for k, v in out.items() if k != "aug"}
    aug_corners = {k: _extreme_values(v) for k, v in out.get("aug", {}).items()}
    for i in range(2):
        pick = {k: v[min(i, len(v) - 1)] for k, v in corners.items()}
        aug = {k: v[min(i, len(v) - 1)] for k, v in aug_corners.items()}
        try:
            TrainConfig(arch=arch, epochs=max(2, math.ceil(float(pick.get("warmup_epochs", 0))) + 1),
                        img_size=models.fit_img_size(arch, TrainConfig.model_fields["img_size"].default,
                                                     int(pick.get("zoom", 1))),
                        aug=AugConfig(**aug), **pick)
        except ValidationError as e:
            err = e.errors()[0]
            sub = "aug." if e.title == AugConfig.__name__ else ""  # AugConfig's loc omits its own key
            raise DfsearchError(f"{path}: field archs.{arch}.{sub}{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        except DfsearchError as e:
            raise DfsearchError(f"{path}: field archs.{arch}: {e}") from None
    return out


def load(name_or_path: str | Path) -> Space:
    """Load and validate a space by name (``search_spaces/NAME.yaml``) or path."""
    from dfsearch import models

    path = _resolve_path(name_or_path)
    f = _read(path)
    metric, prune_metric, profiles, archs_raw = f.metric, f.prune_metric, dict(f.profiles), dict(f.archs)
    if f.base:
        base = load(path.parent / f.base if not Path(f.base).is_absolute() else f.base)
        if prune_metric is None and metric is None:  # a family file that sets neither prunes as its base does
            prune_metric = base.prune_metric
        metric = metric or base.metric
        profiles = {**base.profiles, **profiles}
        archs = dict(base.archs)
        for arch, params in archs_raw.items():
            archs[arch] = _check_arch(path, arch, params)
    else:
        archs = {arch: _check_arch(path, arch, params) for arch, params in archs_raw.items()}
    if f.only is not None:
        missing = [a for a in f.only if a not in archs]
        if missing:
            raise DfsearchError(f"{path}: field only: {missing} not in the space; available: {', '.join(archs)}")
        archs = {a: archs[a] for a in f.only}
    if not archs:
        raise DfsearchError(f"{path}: field archs: no architectures; known: {', '.join(models.known_archs())}")
    if not profiles:
        raise DfsearchError(f"{path}: field profiles: need at least one profile (e.g. cpu, gpu)")
    for pname, prof in profiles.items():
        if prof.grace_period > prof.max_epochs:
            raise DfsearchError(f"{path}: field profiles.{pname}.grace_period: {prof.grace_period} > "
                                f"max_epochs {prof.max_epochs}; need 1 <= grace_period <= max_epochs")
    return Space(path.stem, path, metric or "val_acc", profiles, archs, prune_metric)


class SpaceSampler:
    """Optuna define-by-run function for a Space (a picklable object, as Tune checkpoints it)."""

    def __init__(self, archs: dict):
        self.archs = archs

    def __call__(self, trial) -> dict:
        arch = trial.suggest_categorical("arch", list(self.archs))
        constants: dict = {}
        for key, spec in self.archs[arch].items():
            if key == "aug":
                for k, s in spec.items():
                    v = self._suggest(trial, f"{arch}/aug/{k}", s)
                    if v is not _SUGGESTED:
                        constants[f"{arch}/aug/{k}"] = v
            else:
                v = self._suggest(trial, f"{arch}/{key}", spec)
                if v is not _SUGGESTED:
                    constants[f"{arch}/{key}"] = v
        return constants

    @staticmethod
    def _suggest(trial, name, spec):
        if not isinstance(spec, tuple):
            return spec  # a constant: returned to Tune, not a search dimension
        kind, args = spec
        if kind == "log_uniform":
            trial.suggest_float(name, args[0], args[1], log=True)
        elif kind == "uniform":
            trial.suggest_float(name, args[0], args[1])
        elif kind == "int":
            trial.suggest_int(name, args[0], args[1])
        else:
            trial.suggest_categorical(name, args)
        return _SUGGESTED


_SUGGESTED = object()
