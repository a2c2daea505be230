"""Search spaces as data: the shipped YAML files load, the Optuna sampler always yields a valid
TrainConfig, and every kind of bad file fails with a DfsearchError naming file, field and what is
accepted."""

import pickle
from pathlib import Path

import optuna
import pytest
import yaml

from dfsearch import models, search_space
from dfsearch.config import TrainConfig
from dfsearch.errors import DfsearchError
from dfsearch.search_space import SPACES_DIR, Space, SpaceSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def shipped() -> dict[str, Space]:
    """Every shipped space, loaded once by name."""
    return {p.stem: search_space.load(p.stem) for p in SHIPPED}


def test_shipped_spaces_are_listed():
    assert {"all_models", "cnn", "resnet", "mobilenet", "vit"} <= set(search_space.available())
    assert [p.stem for p in SHIPPED] == search_space.available()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_space_loads(path, shipped):
    by_path = search_space.load(path) if path.stem == "cnn" else shipped[path.stem]  # one by path
    by_name = shipped[path.stem]
    assert isinstance(by_path, Space)
    assert by_path.path == by_name.path == path.resolve()
    assert by_path.archs == by_name.archs
    assert by_path.name == path.stem
    assert by_path.archs and set(by_path.archs) <= set(models.known_archs())
    assert by_path.metric in ("val_acc", "val_auc", "val_loss")
    assert by_path.mode == ("min" if by_path.metric == "val_loss" else "max")
    assert {"cpu", "gpu"} <= set(by_path.profiles)
    for prof in by_path.profiles.values():
        assert 1 <= prof.grace_period <= prof.max_epochs


def test_family_files_reuse_the_full_space(shipped):
    full = shipped["all_models"]
    assert set(full.archs) == set(models.known_archs())
    families = {}
    for arch in models.known_archs():
        families.setdefault(models.get_spec(arch).family, set()).add(arch)
    for name, archs in families.items():  # every arch's family file searches its family alone
        fam = shipped[name]
        assert set(fam.archs) == archs, name
        assert all(fam.archs[a] == full.archs[a] for a in archs)
        assert fam.profiles == full.profiles and fam.metric == full.metric
    assert set(shipped["demo"].archs) == {"small_cnn", "resnet18", "mobilenetv2_100", "vit_tiny_patch16_224"}
    assert all(p["input_filter"] == "srm" for p in full.archs.values())
    tune = shipped["finetune"]
    assert all(p["input_filter"] == ("choice", ["none", "srm"]) for p in tune.archs.values())
    assert all(p["pretrained"] is True and p["layer_decay"][0] == "uniform" for p in tune.archs.values())


def test_unfrozen_all_resolves_to_the_real_group_count(shipped):
    assert all(p["unfrozen"] == "all" for p in shipped["all_models"].archs.values())  # from scratch: train it all
    full = shipped["finetune"]  # pretrained: the top K groups
    for arch in ("resnet18", "mobilenetv2_100", "vit_tiny_patch16_224"):
        n = models.num_groups(arch)
        assert full.archs[arch]["unfrozen"] == ("int", (1, n))
    assert full.archs["resnet18"]["unfrozen"] == ("int", (1, 6))
    assert full.archs["vit_tiny_patch16_224"]["unfrozen"] == ("int", (1, 14))
    assert shipped["all_models"].archs["small_cnn"]["unfrozen"] == "all"  # a constant stays a constant


def _draw(study, sampler, arch=None):
    """What Ray's OptunaSearch does with a define-by-run function: ask, run it, merge the suggested
    params with the returned constants, unflatten on '/'."""
    from ray.tune.utils.util import unflatten_dict

    if arch is not None:
        study.enqueue_trial({"arch": arch})
    trial = study.ask()
    constants = sampler(trial)
    return trial, unflatten_dict({**trial.params, **constants})


def _in_range(value, spec):
    if not isinstance(spec, tuple):
        return value == spec
    kind, args = spec
    if kind == "choice":
        return value in args
    return args[0] <= value <= args[1]


@pytest.mark.parametrize("space_name", ["all_models", "finetune"])
def test_sampler_always_builds_a_valid_train_config(space_name, shipped):
    space = shipped[space_name]
    sampler = SpaceSampler(space.archs)
    sampler = pickle.loads(pickle.dumps(sampler))  # Tune checkpoints it
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    seen_unfrozen = {}
    for arch in space.archs:
        for i in range(20):
            trial, config = _draw(study, sampler, arch)
            assert config["arch"] == arch
            # parameter names are distinct per arch, so TPE models each arch apart
            assert all(k == "arch" or k.startswith(f"{arch}/") for k in trial.params)
            for profile_name, profile in space.profiles.items():
                cfg = space.train_config(config, profile, seed=i)
                assert isinstance(cfg, TrainConfig)
                assert cfg.arch == arch and cfg.seed == i
                # the profile's size, raised to what the arch accepts (InceptionV3: 75 at least) and
                # rounded up to a multiple of the zoom (InceptionV3 at zoom 2: 76, AlexNet at 4: 64)
                want = max(profile.img_size, models.get_spec(arch).min_img_size)
                assert cfg.img_size == -(-want // cfg.zoom) * cfg.zoom
                assert cfg.epochs == profile.max_epochs
                assert cfg.metric == space.metric
                TrainConfig(**cfg.model_dump())  # plain JSON round trip stays valid
            for key, spec in space.archs[arch].items():
                if key == "aug":
                    for k, s in spec.items():
                        assert _in_range(getattr(cfg.aug, k), s), (arch, k, getattr(cfg.aug, k), s)
                else:
                    assert _in_range(getattr(cfg, key), spec), (arch, key, getattr(cfg, key), spec)
            seen_unfrozen.setdefault(arch, set()).add(cfg.unfrozen)
            study.tell(trial, float(i % 3) / 3)
    for arch in space.archs:
        if space.archs[arch]["unfrozen"] == "all":
            assert seen_unfrozen[arch] == {"all"}
        else:
            assert all(1 <= u <= models.num_groups(arch) for u in seen_unfrozen[arch])
            assert len(seen_unfrozen[arch]) > 1  # really sampled, not a constant


def test_sampler_picks_archs_itself(shipped):
    space = shipped["all_models"]
    sampler = SpaceSampler(space.archs)
    study = optuna.create_study()
    archs = set()
    for _ in range(20):
        trial, config = _draw(study, sampler)
        archs.add(config["arch"])
        space.train_config(config, space.profile("cpu"))
    assert len(archs) >= 2


def test_unknown_profile(shipped):
    space = shipped["resnet"]
    with pytest.raises(DfsearchError) as e:
        space.profile("tpu")
    assert "tpu" in str(e.value) and "cpu" in str(e.value) and "gpu" in str(e.value)


# ----------------------------------------------------------------------------- bad files

GOOD = {
    "metric": "val_auc",
    "profiles": {"cpu": {"num_samples": 2, "max_epochs": 3, "grace_period": 1}},
    "archs": {"resnet18": {"lr": {"log_uniform": [1.0e-4, 1.0e-3]}, "unfrozen": {"int": [1, "all"]},
                           "aug": {"hflip": {"choice": [0.0, 0.5]}}}},
}


def _write(tmp_path, name, data) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _with(**changes):
    import copy

    d = copy.deepcopy(GOOD)
    d.update(changes)
    return d


def _error(path) -> str:
    with pytest.raises(DfsearchError) as e:
        search_space.load(path)
    return str(e.value)


def test_good_custom_file_loads(tmp_path):
    space = search_space.load(_write(tmp_path, "good", GOOD))
    assert space.metric == "val_auc" and space.mode == "max"
    assert space.archs["resnet18"]["lr"] == ("log_uniform", (1.0e-4, 1.0e-3))
    assert space.archs["resnet18"]["unfrozen"] == ("int", (1, 6))
    assert space.archs["resnet18"]["aug"]["hflip"] == ("choice", [0.0, 0.5])


def test_unknown_top_level_key(tmp_path):
    p = _write(tmp_path, "topkey", _with(archz={}))
    msg = _error(p)
    assert str(p) in msg and "archz" in msg
    assert "accepted" in msg and "archs" in msg and "profiles" in msg and "metric" in msg


def test_unknown_profile_key(tmp_path):
    p = _write(tmp_path, "profkey", _with(profiles={"cpu": {"num_samples": 2, "max_epochs": 3, "epochs": 3}}))
    msg = _error(p)
    assert str(p) in msg and "profiles.cpu.epochs" in msg and "max_epochs" in msg and "grace_period" in msg


def test_unknown_arch_param(tmp_path):
    p = _write(tmp_path, "param", _with(archs={"resnet18": {"learning_rate": 0.01}}))
    msg = _error(p)
    assert str(p) in msg and "archs.resnet18.learning_rate" in msg
    assert "accepted" in msg and "lr" in msg and "weight_decay" in msg and "unfrozen" in msg and "aug" in msg


def test_unknown_aug_key(tmp_path):
    p = _write(tmp_path, "aug", _with(archs={"resnet18": {"aug": {"mixup": 0.2}}}))
    msg = _error(p)
    assert str(p) in msg and "archs.resnet18.aug.mixup" in msg
    assert "accepted" in msg and "hflip" in msg and "jpeg_quality" in msg


def test_aug_value_out_of_range(tmp_path):
    p = _write(tmp_path, "augrange", _with(archs={"resnet18": {"aug": {"hflip": {"uniform": [0.0, 2.0]}}}}))
    msg = _error(p)
    assert str(p) in msg and "archs.resnet18.aug.hflip" in msg and "less than or equal to 1" in msg


def test_unknown_arch(tmp_path):
    p = _write(tmp_path, "arch", _with(archs={"resnet9000": {"lr": 0.01}}))
    msg = _error(p)
    assert str(p) in msg and "archs.resnet9000" in msg and "unknown arch" in msg
    for arch in models.known_archs():
        assert arch in msg


def test_log_uniform_low_not_positive(tmp_path):
    for low in (0, -1.0e-3):
        p = _write(tmp_path, f"logu{low}", _with(archs={"resnet18": {"lr": {"log_uniform": [low, 1.0e-2]}}}))
        msg = _error(p)
        assert str(p) in msg and "archs.resnet18.lr.log_uniform" in msg and "low > 0" in msg


def test_low_above_high(tmp_path):
    p = _write(tmp_path, "lohi", _with(archs={"resnet18": {"weight_decay": {"uniform": [0.1, 0.01]}}}))
    msg = _error(p)
    assert str(p) in msg and "archs.resnet18.weight_decay.uniform" in msg and "low <= high" in msg
    p = _write(tmp_path, "lohi_int", _with(archs={"resnet18": {"unfrozen": {"int": [4, 2]}}}))
    msg = _error(p)
    assert "archs.resnet18.unfrozen.int" in msg and "low <= high" in msg


def test_unfrozen_above_group_count(tmp_path):
    p = _write(tmp_path, "unfrozen", _with(archs={"resnet18": {"unfrozen": {"int": [1, 7]}}}))
    msg = _error(p)
    assert str(p) in msg and "archs.resnet18.unfrozen" in msg and "1..6" in msg and "6 layer groups" in msg
    p = _write(tmp_path, "unfrozen0", _with(archs={"small_cnn": {"unfrozen": {"int": [0, 2]}}}))
    msg = _error(p)
    assert "archs.small_cnn.unfrozen" in msg and "1..4" in msg


def test_all_only_for_unfrozen(tmp_path):
    p = _write(tmp_path, "allbs", _with(archs={"resnet18": {"batch_size": {"int": [8, "all"]}}}))
    msg = _error(p)
    assert str(p) in msg and "archs.resnet18.batch_size" in msg and "unfrozen" in msg


def test_not_a_parameter_spec(tmp_path):
    p = _write(tmp_path, "spec", _with(archs={"resnet18": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}}}))
    msg = _error(p)
    assert str(p) in msg and "archs.resnet18.lr" in msg and "log_uniform" in msg and "choice" in msg


def test_bad_value_for_a_train_field(tmp_path):
    p = _write(tmp_path, "opt", _with(archs={"resnet18": {"optimizer": {"choice": ["adamw", "sgdd"]}}}))
    msg = _error(p)
    assert str(p) in msg and "archs.resnet18" in msg and "sgdd" in msg and "adamw" in msg


def test_invalid_yaml_syntax(tmp_path):
    p = _write(tmp_path, "syntax", "metric: val_acc\narchs:\n  resnet18: {lr: [1.0e-4, 1.0e-3\n")
    msg = _error(p)
    assert str(p) in msg and "invalid YAML" in msg and "line" in msg


def test_not_a_mapping(tmp_path):
    p = _write(tmp_path, "list", "- resnet18\n- small_cnn\n")
    msg = _error(p)
    assert str(p) in msg and "archs" in msg and "profiles" in msg


def test_grace_period_above_max_epochs(tmp_path):
    p = _write(tmp_path, "grace", _with(profiles={"cpu": {"num_samples": 2, "max_epochs": 2, "grace_period": 3}}))
    msg = _error(p)
    assert str(p) in msg and "profiles.cpu.grace_period" in msg and "max_epochs" in msg
    assert "grace_period <= max_epochs" in msg


def test_bad_metric(tmp_path):
    p = _write(tmp_path, "metric", _with(metric="accuracy"))
    msg = _error(p)
    assert str(p) in msg and "metric" in msg and "val_acc" in msg


def test_no_profiles_or_archs(tmp_path):
    msg = _error(_write(tmp_path, "noprof", _with(profiles={})))
    assert "profiles" in msg and "cpu" in msg
    msg = _error(_write(tmp_path, "noarch", _with(archs={})))
    assert "archs" in msg and "resnet18" in msg


def test_base_only_names_an_arch_not_in_base(tmp_path):
    _write(tmp_path, "base", GOOD)
    p = _write(tmp_path, "family", {"base": "base.yaml", "only": ["small_cnn"]})
    msg = _error(p)
    assert str(p) in msg and "only" in msg and "small_cnn" in msg and "resnet18" in msg
    # and the same family file with an arch that is there works, inheriting metric and profiles
    ok = search_space.load(_write(tmp_path, "family_ok", {"base": "base.yaml", "only": ["resnet18"]}))
    assert list(ok.archs) == ["resnet18"] and ok.metric == "val_auc" and set(ok.profiles) == {"cpu"}


def test_base_errors_name_the_base_file(tmp_path):
    bad_base = _write(tmp_path, "bad_base", _with(archs={"resnet18": {"lr": {"uniform": [1, 0]}}}))
    _write(tmp_path, "child", {"base": "bad_base.yaml", "only": ["resnet18"]})
    msg = _error(tmp_path / "child.yaml")
    assert str(bad_base) in msg and "archs.resnet18.lr" in msg


def test_unknown_space_name_lists_available():
    msg = _error("no_such_space")
    assert "no_such_space" in msg
    for name in search_space.available():
        assert name in msg
    assert ".yaml" in msg


def test_missing_yaml_path_lists_available(tmp_path):
    msg = _error(tmp_path / "missing.yaml")
    assert "missing.yaml" in msg and "all_models" in msg


def test_prune_metric_defaults_to_the_metric_and_family_files_inherit_it(tmp_path):
    from dfsearch.search.schedulers import make_scheduler

    space = search_space.load(_write(tmp_path, "plain", _with(metric="val_loss")))
    assert (space.prune_metric, space.prune_mode) == ("val_loss", "min")
    base = search_space.load(_write(tmp_path, "base", _with(metric="val_acc", prune_metric="val_loss")))
    assert (base.metric, base.mode, base.prune_metric, base.prune_mode) == ("val_acc", "max", "val_loss", "min")
    fam = search_space.load(_write(tmp_path, "fam", {"base": "base.yaml", "only": ["resnet18"]}))
    assert fam.prune_metric == "val_loss"
    own = search_space.load(_write(tmp_path, "own", {"base": "base.yaml", "metric": "val_auc"}))
    assert own.prune_metric == "val_auc"  # a family that picks its metric prunes on it unless told
    asha = make_scheduler(base, base.profile("cpu"), "asha")
    assert (asha._metric, asha._mode, asha._max_t) == ("val_loss", "min", 3)
    assert make_scheduler(base, base.profile("cpu"), "fifo") is None
    shipped = search_space.load("all_models")
    assert (shipped.metric, shipped.prune_metric) == ("val_acc", "val_auc")


def test_bad_prune_metric(tmp_path):
    p = _write(tmp_path, "pm", _with(prune_metric="auc"))
    msg = _error(p)
    assert str(p) in msg and "prune_metric" in msg and "val_auc" in msg


def test_every_zoom_a_space_can_draw_is_checked_against_the_images(tmp_path):
    archs = {"resnet18": {"lr": 1.0e-3, "input_policy": "crop", "zoom": {"choice": [2, 1]}}}
    space = search_space.load(_write(tmp_path, "zoomed", _with(archs=archs)))
    space.check_views("cpu", [(256, 256)])  # 64 px crops, or 32 px ones zoomed to 64: both fit
    with pytest.raises(DfsearchError, match=r"archs\.resnet18\.input_policy \(profile cpu\).*a 64 px crop is "
                                            r"larger than the images \(40x40 px"):
        space.check_views("cpu", [(40, 40)])  # zoom 2 would fit (32 px crops); zoom 1 does not
    archs["resnet18"]["zoom"] = {"int": [1, 4]}  # a range: its smallest zoom takes the largest crop
    with pytest.raises(DfsearchError, match=r"a 64 px crop is larger than the images \(40x40 px"):
        search_space.load(_write(tmp_path, "zoom_range", _with(archs=archs))).check_views("cpu", [(40, 40)])
    archs["resnet18"]["zoom"] = 2
    search_space.load(_write(tmp_path, "zoom2", _with(archs=archs))).check_views("cpu", [(40, 40)])
