"""The model registry: building, freezing (groups, FrozenBatchNorm), and pretrained weights from
local files / directories, offline errors. Everything runs on CPU with tiny inputs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn
from timm.utils.model import FrozenBatchNorm2d  # what timm.utils.freeze converts BatchNorm2d into

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from dfsearch import models, search_space
from dfsearch.errors import DfsearchError

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- building

@pytest.mark.parametrize("arch", models.known_archs())
@pytest.mark.parametrize("num_classes", [1, 2])
def test_every_arch_builds_and_outputs_the_right_shape(arch, num_classes):
    size = models.get_spec(arch).min_img_size
    torch.manual_seed(0)
    model = models.create(arch, num_classes=num_classes, img_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, num_classes)
    assert torch.isfinite(out).all()
    p = models.prob_fake(out)
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    # a fresh head starts near p = 0.5 (timm's EfficientNet / MobileNet init gave logits of std ~7
    # for one output: a training loss above chance for the whole cpu budget); training mode: BatchNorm
    # on the batch's statistics, as the first step sees it
    with torch.no_grad():
        logits = model.train()(torch.randn(4, 3, size, size))
    margin = logits[:, 1] - logits[:, 0] if num_classes == 2 else logits[:, 0]  # log-odds of fake
    assert margin.abs().max() < 2.0, (arch, logits)


SEED_ARCHS = {"small_cnn", "resnet18", "resnet50", "mobilenetv2_100", "efficientnet_b0", "legacy_xception", "vgg16",
              "vgg19", "densenet121", "inception_v3", "vit_tiny_patch16_224", "vit_small_patch16_224",
              "vit_base_patch16_224", "swin_tiny_patch4_window7_224", "alexnet", "capsnet"}


def test_registry_has_every_seed_architecture():
    assert set(models.known_archs()) == SEED_ARCHS


@pytest.mark.parametrize("arch", models.known_archs())
def test_registry_facts_are_true(arch):
    """What the registry states without torch (groups, sizes, tags) is what the model and timm say."""
    spec = models.get_spec(arch)
    d = models.describe(arch)  # built on the meta device
    assert d["groups"] == spec.groups == models.num_groups(arch)
    if spec.timm_name:
        cfg = timm.get_pretrained_cfg(spec.timm_name)
        assert cfg.input_size[-1] == spec.input_size
        published = {n.split(".", 1)[1] for n in timm.list_pretrained(spec.timm_name + ".*")}
        assert set(spec.pretrained_tags) <= published and spec.pretrained_tags[0] == cfg.tag  # timm's default first
        assert tuple(d["mean"]) == tuple(cfg.mean)
    # one pixel less does not run: built at its minimum (past dfsearch's own size check, which would
    # make this pass by itself), fed an image one pixel smaller. 16 is TrainConfig's own floor; the
    # ViT/Swin minimum (two patches / windows a side) is a floor chosen here: timm builds them smaller.
    if spec.min_img_size > 16 and not spec.takes_img_size:
        below = spec.min_img_size - 1
        model = models.create(arch, img_size=spec.min_img_size).eval()
        with torch.no_grad():
            model(torch.randn(1, 3, spec.min_img_size, spec.min_img_size))
            with pytest.raises(RuntimeError):
                model(torch.randn(1, 3, below, below))


def test_unknown_arch_lists_known_ones():
    with pytest.raises(DfsearchError) as e:
        models.create("resnet9000")
    msg = str(e.value)
    assert "resnet9000" in msg
    for arch in models.known_archs():
        assert arch in msg


def test_bad_num_classes_and_img_size():
    with pytest.raises(DfsearchError, match="num_classes"):
        models.create("small_cnn", num_classes=3)
    with pytest.raises(DfsearchError, match="too small"):
        models.create("vit_tiny_patch16_224", img_size=16)
    with pytest.raises(DfsearchError, match="multiple of the patch size 16"):
        models.create("vit_tiny_patch16_224", img_size=72)


def test_data_config():
    assert models.data_config("resnet18", 96)["input_size"] == (3, 96, 96)
    assert models.data_config("resnet18", 64)["mean"] == IMAGENET_DEFAULT_MEAN
    assert models.data_config("small_cnn", 32) == dict(input_size=(3, 32, 32), mean=IMAGENET_DEFAULT_MEAN,
                                                       std=IMAGENET_DEFAULT_STD)
    # timm's own pretrained config for the ViT (its weights were trained with 0.5/0.5 normalisation)
    cfg = timm.get_pretrained_cfg("vit_tiny_patch16_224")
    assert models.data_config("vit_tiny_patch16_224", 64)["mean"] == tuple(cfg.mean)
    assert models.data_config("vit_tiny_patch16_224", 64)["std"] == tuple(cfg.std)


def test_num_groups_matches_layer_groups():
    expected = {"resnet18": 6, "small_cnn": 4, "capsnet": 3}  # stem, layer1..4, fc / stem, 2 blocks, fc / stem, primary, class caps
    for arch, n in expected.items():
        assert models.num_groups(arch) == n
    for arch in models.known_archs():
        with torch.device("meta"):
            m = models.create(arch, img_size=models.fit_img_size(arch, 64))
        assert len(models.layer_groups(m)) == models.num_groups(arch)
        # every parameter is in exactly one group
        names = [n for g in models.layer_groups(m).values() for n in g]
        assert sorted(names) == sorted(n for n, _ in m.named_parameters())


def test_capsule_routing_on_cases_with_known_output():
    from dfsearch.models.capsnet import route, squash

    s = torch.tensor([[3.0, 4.0]])  # |s| = 5: squash keeps the direction, length 25 / 26
    torch.testing.assert_close(squash(s), s / 5 * 25 / 26)
    # one output capsule: every coupling is 1, whatever the routing: v = squash(sum of predictions)
    u_hat = torch.randn(2, 7, 1, 4)
    torch.testing.assert_close(route(u_hat, 3), squash(u_hat.sum(dim=1)))
    # one iteration: uniform couplings over the J outputs
    u_hat = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(route(u_hat, 1), squash(u_hat.sum(dim=1) / 3))
    # agreement: 9 inputs predict e0 for output 0 and noise for output 1; one input predicts e1 for
    # output 1. Routing moves the agreeing inputs' coupling to output 0: v0 grows, v1 shrinks
    e0, e1 = torch.eye(2)
    u_hat = torch.zeros(1, 10, 2, 2)
    u_hat[0, :9, 0] = e0
    u_hat[0, :9, 1] = 0.3 * torch.randn(9, 2, generator=torch.Generator().manual_seed(0))
    u_hat[0, 9, 1] = e1
    one, three = route(u_hat, 1).norm(dim=-1)[0], route(u_hat, 3).norm(dim=-1)[0]
    assert three[0] > one[0] and three[1] < one[1]


def test_capsnet_head_is_the_difference_of_capsule_lengths():
    torch.manual_seed(0)
    m = models.create("capsnet", img_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        lengths = m.capsules(x).norm(dim=-1)
        torch.testing.assert_close(m(x), m.scale * (lengths[:, 1:] - lengths[:, :1]))


# ----------------------------------------------------------------------------- freezing

def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _bn_stats(model, names):
    return {n: (model.get_submodule(n).running_mean.clone(), model.get_submodule(n).running_var.clone())
            for n in names}


def _forward_train_mode(model, size, steps=3):
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(4, 3, size, size) * 2 + 0.5)


def test_freeze_resnet18_top2():
    torch.manual_seed(0)
    model = models.create("resnet18", num_classes=1, img_size=64)
    all_names = {n for n, _ in model.named_parameters()}
    report = models.freeze_to_top(model, 2)

    expected = {n for n in all_names if n.startswith(("layer4.", "fc."))}
    assert _trainable(model) == expected
    assert report["groups"] == 6 and report["unfrozen"] == 2
    assert report["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report["total_params"] == sum(p.numel() for p in model.parameters())
    assert report["trainable_params"] < report["total_params"]

    frozen_bn = [n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    live_bn = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # every BN below layer4 was converted, every BN in layer4 was left alone
    assert "bn1" in frozen_bn and "layer3.1.bn2" in frozen_bn and "layer2.0.downsample.1" in frozen_bn
    assert all(not n.startswith("layer4.") for n in frozen_bn)
    assert live_bn and all(n.startswith("layer4.") for n in live_bn)
    assert "layer4.0.downsample.1" in live_bn

    before_frozen = _bn_stats(model, frozen_bn)
    before_live = _bn_stats(model, live_bn)
    _forward_train_mode(model, 64)
    after_frozen = _bn_stats(model, frozen_bn)
    after_live = _bn_stats(model, live_bn)
    for n in frozen_bn:
        assert torch.equal(before_frozen[n][0], after_frozen[n][0]), n
        assert torch.equal(before_frozen[n][1], after_frozen[n][1]), n
    for n in live_bn:
        assert not torch.equal(before_live[n][0], after_live[n][0]), n
        assert not torch.equal(before_live[n][1], after_live[n][1]), n


def test_freeze_frozen_params_get_no_gradient():
    model = models.create("resnet18", num_classes=1, img_size=64)
    models.freeze_to_top(model, 1)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    for n, p in model.named_parameters():
        if n.startswith("fc."):
            assert p.grad is not None and p.grad.abs().sum() > 0
        else:
            assert p.grad is None, n


@pytest.mark.parametrize("k", ["all", None, 6])
def test_freeze_all_trains_everything(k):
    model = models.create("resnet18", num_classes=1, img_size=64)
    report = models.freeze_to_top(model, k)
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
    assert report["unfrozen"] == 6
    assert report["trainable_params"] == report["total_params"]
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("k", [0, 7, -1, "two"])
def test_freeze_out_of_range(k):
    model = models.create("resnet18", num_classes=1, img_size=64)
    with pytest.raises(DfsearchError) as e:
        models.freeze_to_top(model, k)
    msg = str(e.value)
    assert "6 layer groups" in msg and "1..6" in msg and "'all'" in msg
    assert all(p.requires_grad for p in model.parameters())  # nothing half-frozen


def test_freeze_small_cnn():
    torch.manual_seed(0)
    model = models.create("small_cnn", num_classes=2, img_size=32)
    all_names = {n for n, _ in model.named_parameters()}
    report = models.freeze_to_top(model, 2)  # groups: stem, blocks.0, blocks.1, fc
    assert report["groups"] == 4
    assert _trainable(model) == {n for n in all_names if n.startswith(("blocks.1.", "fc."))}
    assert report["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_bn = sorted(n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d))
    live_bn = sorted(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    assert frozen_bn == ["blocks.0.1", "stem.1"]
    assert live_bn == ["blocks.1.1"]
    before = _bn_stats(model, frozen_bn + live_bn)
    _forward_train_mode(model, 32)
    after = _bn_stats(model, frozen_bn + live_bn)
    for n in frozen_bn:
        assert torch.equal(before[n][0], after[n][0]) and torch.equal(before[n][1], after[n][1])
    assert not torch.equal(before["blocks.1.1"][0], after["blocks.1.1"][0])
    with pytest.raises(DfsearchError, match=r"1\.\.4"):
        models.freeze_to_top(models.create("small_cnn"), 5)


def test_freeze_vit_tiny():
    model = models.create("vit_tiny_patch16_224", num_classes=1, img_size=32)
    n_groups = models.num_groups("vit_tiny_patch16_224")
    assert n_groups == 14  # stem (patch_embed + cls_token + pos_embed), 12 blocks (+ final norm), head
    all_names = {n for n, _ in model.named_parameters()}

    report = models.freeze_to_top(model, 3)
    assert _trainable(model) == {n for n in all_names if n.startswith(("blocks.10.", "blocks.11.", "norm.", "head."))}
    assert report["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # LayerNorm, no BatchNorm: nothing converted, the frozen LayerNorms just stop learning
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())
    assert isinstance(model.blocks[0].norm1, nn.LayerNorm)
    assert not model.blocks[0].norm1.weight.requires_grad
    assert model.blocks[11].norm1.weight.requires_grad and model.norm.weight.requires_grad

    # k = groups - 1: only the stem group is frozen, and cls_token / pos_embed belong to it
    model = models.create("vit_tiny_patch16_224", num_classes=1, img_size=32)
    models.freeze_to_top(model, n_groups - 1)
    frozen = all_names - _trainable(model)
    assert frozen == {"cls_token", "pos_embed"} | {n for n in all_names if n.startswith("patch_embed.")}

    model = models.create("vit_tiny_patch16_224", num_classes=1, img_size=32)
    models.freeze_to_top(model, n_groups)
    assert model.cls_token.requires_grad and model.pos_embed.requires_grad
    with pytest.raises(DfsearchError, match=r"1\.\.14"):
        models.freeze_to_top(model, 15)


# ----------------------------------------------------------------------------- pretrained weights

@pytest.fixture(scope="module")
def imagenet_resnet18():
    """A seeded resnet18 with the 1000-class head of a real ImageNet checkpoint (and non-trivial BN
    statistics), as the state dict a user would download."""
    torch.manual_seed(1234)
    m = timm.create_model("resnet18", num_classes=1000)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
    return {k: v.clone().contiguous() for k, v in m.state_dict().items()}


BACKBONE_KEYS = ("conv1.weight", "bn1.running_mean", "bn1.weight", "layer1.0.conv1.weight",
                 "layer3.0.conv1.weight", "layer4.1.bn2.running_var")


def _assert_backbone_and_fresh_head(model, state):
    own = model.state_dict()
    for k in BACKBONE_KEYS:
        assert torch.equal(own[k], state[k]), k
    # all backbone tensors, not just a sample
    assert all(torch.equal(own[k], state[k]) for k in own if not k.startswith("fc."))
    assert model.fc.weight.shape == (1, 512) and model.fc.bias.shape == (1,)
    assert not torch.equal(model.fc.weight, state["fc.weight"][:1])


def test_pretrained_from_safetensors_file(tmp_path, imagenet_resnet18):
    f = tmp_path / "my_resnet.safetensors"
    safetensors.torch.save_file(imagenet_resnet18, str(f))
    model = models.create("resnet18", pretrained=f, num_classes=1)
    _assert_backbone_and_fresh_head(model, imagenet_resnet18)
    # a str path works as well as a Path
    model = models.create("resnet18", pretrained=str(f), num_classes=2)
    assert torch.equal(model.state_dict()["layer3.0.conv1.weight"], imagenet_resnet18["layer3.0.conv1.weight"])
    assert model.fc.weight.shape == (2, 512)


def test_pretrained_from_weights_directory(tmp_path, imagenet_resnet18):
    d = tmp_path / "weights"
    d.mkdir()
    safetensors.torch.save_file(imagenet_resnet18, str(d / "resnet18.safetensors"))
    assert models.pretrained_kind("resnet18", d) == ("path", str(d / "resnet18.safetensors"))
    model = models.create("resnet18", pretrained=d, num_classes=1)
    _assert_backbone_and_fresh_head(model, imagenet_resnet18)
    # the same directory has nothing for another arch: the error names the file it looked for
    with pytest.raises(DfsearchError) as e:
        models.create("mobilenetv2_100", pretrained=d)
    assert str(d) in str(e.value) and "mobilenetv2_100.safetensors" in str(e.value)


def test_pretrained_from_pth_weights_only(tmp_path, imagenet_resnet18):
    f = tmp_path / "resnet18.pth"
    torch.save(imagenet_resnet18, f)
    model = models.create("resnet18", pretrained=f, num_classes=1)
    _assert_backbone_and_fresh_head(model, imagenet_resnet18)

    # weights-only: a pickle that would run code on load is refused, and the code never runs
    marker = tmp_path / "pwned"
    bad = tmp_path / "pickled.pth"
    torch.save({"state_dict": imagenet_resnet18, "payload": _RunsOnLoad(marker)}, bad)
    with pytest.raises(DfsearchError) as e:
        models.create("resnet18", pretrained=bad, num_classes=1)
    assert str(bad) in str(e.value)
    assert not marker.exists()


class _RunsOnLoad:
    """Unpickling this (without weights_only) would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pretrained_vit_resamples_pos_embed(tmp_path):
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(7)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=1000, img_size=224)
    with torch.no_grad():
        src.pos_embed.normal_(std=0.5)
    state = {k: v.clone().contiguous() for k, v in src.state_dict().items()}
    f = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(state, str(f))

    model = models.create("vit_tiny_patch16_224", pretrained=f, num_classes=1, img_size=64)
    own = model.state_dict()
    assert own["pos_embed"].shape == (1, 1 + (64 // 16) ** 2, 192)
    assert state["pos_embed"].shape == (1, 1 + (224 // 16) ** 2, 192)
    for k in ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.5.mlp.fc1.weight",
              "blocks.11.norm2.weight", "norm.weight"):
        assert torch.equal(own[k], state[k]), k
    # the grid was resampled by timm's own filter (the class token kept as is)
    expected = resample_abs_pos_embed(state["pos_embed"], (4, 4), num_prefix_tokens=1)
    assert torch.allclose(own["pos_embed"], expected, atol=1e-6)
    assert torch.equal(own["pos_embed"][:, :1], state["pos_embed"][:, :1])
    assert model.head.weight.shape == (1, 192)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "resnet18.safetensors"
    with pytest.raises(DfsearchError) as e:
        models.create("resnet18", pretrained=missing)
    assert str(missing) in str(e.value)
    with pytest.raises(DfsearchError) as e:
        models.create("small_cnn", pretrained=missing)
    assert str(missing) in str(e.value)


def test_empty_weights_directory(tmp_path):
    with pytest.raises(DfsearchError) as e:
        models.pretrained_kind("resnet18", tmp_path)
    assert str(tmp_path) in str(e.value) and "resnet18.safetensors" in str(e.value)


def test_small_cnn_has_no_published_weights():
    with pytest.raises(DfsearchError) as e:
        models.create("small_cnn", pretrained=True)
    msg = str(e.value)
    assert "small_cnn" in msg and "weights file" in msg and "pretrained: false" in msg


def test_small_cnn_loads_its_own_checkpoint(tmp_path):
    torch.manual_seed(3)
    src = models.create("small_cnn", num_classes=2)
    f = tmp_path / "small_cnn.safetensors"
    safetensors.torch.save_file(src.state_dict(), str(f))
    model = models.create("small_cnn", pretrained=tmp_path, num_classes=1)  # head shape differs: dropped
    own, state = model.state_dict(), src.state_dict()
    assert torch.equal(own["stem.0.weight"], state["stem.0.weight"])
    assert torch.equal(own["blocks.1.1.running_var"], state["blocks.1.1.running_var"])
    assert own["fc.weight"].shape == (1, 64)


@pytest.mark.timeout(240)
def test_unavailable_hub_weights_say_how_to_provide_them(tmp_path):
    """Offline with an empty cache: a clear DfsearchError, never a silent random init. Run in a
    subprocess so huggingface_hub reads HF_HUB_OFFLINE / HF_HOME at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TORCH_HOME"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(REPO))
    code = (
        "import sys\n"
        "from dfsearch import models\n"
        "from dfsearch.errors import DfsearchError\n"
        "try:\n"
        "    models.create('resnet18', pretrained=True)\n"
        "except DfsearchError as e:\n"
        "    print(e); sys.exit(3)\n"
        "print('NO ERROR'); sys.exit(0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=200)
    assert r.returncode == 3, r.stdout + r.stderr
    msg = r.stdout
    assert "resnet18" in msg and "not available" in msg
    assert "pretrained: /path/to/weights_dir" in msg
    assert "file" in msg and "directory" in msg
    assert "resnet18.safetensors" in msg


def test_weights_check_finds_the_hub_and_torch_caches_and_names_what_is_missing(tmp_path, monkeypatch):
    """The driver's check (before Ray): cached weights pass without a network, missing ones with
    the hub switched off fail naming the arch, the tag and where they would have come from."""
    from huggingface_hub import constants

    from dfsearch.models import weights

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DfsearchError, match=r"resnet18 .*tag a1_in1k.*timm/resnet18\.a1_in1k.*HF_HUB_OFFLINE"):
        weights.check_available("resnet18", "a1_in1k")
    with pytest.raises(DfsearchError, match=r"alexnet .*download\.pytorch\.org.*alexnet"):
        weights.check_available("alexnet", "tv_in1k")
    # the hub cache's layout: models--ORG--NAME/{refs/main, snapshots/REV/FILE}
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"x")
    assert weights.check_available("resnet18", "a1_in1k") == "cache"
    _, url = weights.sources("alexnet", "tv_in1k")
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]).write_bytes(b"x")
    assert weights.check_available("alexnet", "tv_in1k") == "cache"


def test_space_lists_the_weights_its_trials_could_ask_for():
    space = search_space.load("finetune")
    requests = dict(space.weight_requests())
    assert requests["resnet18"] == "a1_in1k" and requests["alexnet"] == "tv_in1k"
    assert set(requests) == set(space.archs)  # every arch of finetune.yaml is pretrained: true
    assert search_space.load("all_models").weight_requests() == []  # from scratch: nothing to fetch


def test_every_optimizer_a_trial_accepts_is_a_timm_optimizer():
    from timm.optim import list_optimizers

    from dfsearch.config import OPTIMIZERS

    assert set(OPTIMIZERS) <= set(list_optimizers()), set(OPTIMIZERS) - set(list_optimizers())


def test_registry_and_config_validation_import_no_torch():
    """Listing / validating archs and a TrainConfig stays torch-free (a CLI answers bad input
    before torch loads); the torch side still comes through the package on first use."""
    code = (
        "import sys\n"
        "from dfsearch import models\n"
        "from dfsearch.config import TrainConfig\n"
        "import dfsearch.data.discover\n"
        "models.validate('resnet18'); models.known_archs()\n"
        "TrainConfig(arch='vit_tiny_patch16_224', img_size=32, optimizer='sgd')\n"
        "try:\n"
        "    models.validate('resnet9000')\n"
        "except Exception as e:\n"
        "    assert 'resnet9000' in str(e) and 'small_cnn' in str(e), e\n"
        "assert not {'torch', 'timm', 'sklearn'} & set(sys.modules), sorted({'torch', 'timm', 'sklearn'} & set(sys.modules))\n"
        "assert callable(models.create) and 'torch' in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lazy_names_are_the_factory_ones():
    from dfsearch.models import factory, small_cnn

    assert models.create is factory.create and models.freeze_to_top is factory.freeze_to_top
    assert models.SmallCNN is small_cnn.SmallCNN
    assert models.IMAGENET_MEAN == IMAGENET_DEFAULT_MEAN and models.IMAGENET_STD == IMAGENET_DEFAULT_STD
    assert "create" in dir(models)
    with pytest.raises(AttributeError):
        models.no_such_name  # noqa: B018


@pytest.mark.parametrize("arch", models.known_archs())
def test_every_arch_round_trips_through_a_checkpoint_and_predict(arch, tmp_path):
    """Saved (weights only, frozen groups and all), reloaded by ``dfsearch predict``'s loader, the
    model gives the same probabilities for an image, seen through the view its config records."""
    import json

    import numpy as np
    from PIL import Image

    from dfsearch import checkpoint as ckpt_io
    from dfsearch.config import TrainConfig
    from dfsearch.data.loading import build_transform
    from dfsearch.data.views import View
    from dfsearch.predict import predict_paths

    i = models.known_archs().index(arch)
    zoom = 1 + i % 2  # half the archs at zoom 2, half (crosswise) with the srm filter: predict must rebuild both
    input_filter = ("srm", "none")[i // 2 % 2]
    size = models.fit_img_size(arch, 16, zoom)
    cfg = TrainConfig(arch=arch, img_size=size, input_policy="crop", zoom=zoom, input_filter=input_filter,
                      unfrozen=min(2, models.num_groups(arch)))
    torch.manual_seed(0)
    model = models.create(arch, img_size=size, input_filter=input_filter)
    models.freeze_to_top(model, cfg.unfrozen)
    model.eval()
    dc = models.data_config(arch, size)
    folder = tmp_path / "ckpt"
    ckpt_io.save(folder, model, {"train": cfg.model_dump(), "data": dc}, {"metrics": {}})
    image = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size + 8, size + 8, 3), dtype=np.uint8)).save(image)
    (tmp_path / "ensemble.json").write_text(json.dumps({"members": [
        {"candidate": arch, "weight": 1.0, "checkpoint": str(folder)}]}))
    got, errors = predict_paths(tmp_path / "ensemble.json", [image])
    assert errors == []
    x = build_transform(View("crop", size, zoom=zoom), dc["mean"], dc["std"])(Image.open(image).convert("RGB"))
    with torch.no_grad():
        want = float(models.prob_fake(model(x[None]))[0])
    assert got[0]["prob_fake"] == pytest.approx(want, abs=1e-5)


def test_srm_filter_removes_content_and_keeps_single_pixel_traces():
    """The srm residual of a flat image and of a linear ramp (smooth shading: content) is zero away
    from the border; a single bright pixel (a trace) comes out as the kernels themselves."""
    from dfsearch.models.filters import GAIN, srm, srm_kernels

    ramp = torch.linspace(-1, 1, 16)[None, None, None, :].expand(1, 3, 16, 16) * 0.7 + 0.2
    assert torch.allclose(srm(ramp)[..., 2:-2, 2:-2], torch.zeros(1, 3, 12, 12), atol=1e-6)
    assert torch.allclose(srm(torch.full((1, 3, 9, 9), 0.3)), torch.zeros(1, 3, 9, 9), atol=1e-6)
    impulse = torch.zeros(1, 3, 9, 9)
    impulse[..., 4, 4] = 1.0
    out = srm(impulse)
    assert out.shape == impulse.shape
    # each output channel is one kernel applied to the mean of R, G, B (the kernels are symmetric)
    assert torch.allclose(out[0, :, 2:7, 2:7], GAIN * srm_kernels()[:, 0] * 3, atol=1e-6)
    assert srm_kernels()[:, 0].abs().sum() > 0 and torch.allclose(srm_kernels().sum(dim=(1, 2, 3)), torch.zeros(3), atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224", "capsnet"])
def test_input_filter_changes_what_the_model_sees_not_its_weights(arch):
    """``input_filter="srm"`` adds no parameter or buffer (same state dict, layer groups and
    freezing as the plain arch), and the model computes plain_model(srm(x))."""
    from dfsearch.models.filters import srm

    torch.manual_seed(0)
    plain = models.create(arch, img_size=32).eval()
    filtered = models.create(arch, img_size=32, input_filter="srm").eval()
    assert filtered.input_filter == "srm" and plain.input_filter == "none"
    state = plain.state_dict()
    assert list(filtered.state_dict()) == list(state)
    filtered.load_state_dict(state, strict=True)
    assert models.layer_groups(filtered) == models.layer_groups(plain)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(filtered(x), plain(srm(x)), atol=1e-5)
        assert not torch.allclose(filtered(x), plain(x), atol=1e-3)


def test_unknown_input_filter_is_refused_at_every_boundary(tmp_path):
    from dfsearch import search_space
    from dfsearch.config import TrainConfig
    from dfsearch.errors import DfsearchError
    from dfsearch.models import filters

    with pytest.raises(DfsearchError, match="input_filter 'sobel': accepted: none, srm"):
        models.create("small_cnn", input_filter="sobel")
    with pytest.raises(Exception, match="input_filter"):
        TrainConfig(arch="small_cnn", input_filter="sobel")
    space = tmp_path / "s.yaml"
    space.write_text("profiles: {cpu: {num_samples: 1, max_epochs: 1}}\n"
                     "archs: {small_cnn: {input_filter: {choice: [srm, sobel]}}}\n")
    with pytest.raises(DfsearchError, match=r"archs\.small_cnn\.input_filter: .*'none' or 'srm'"):
        search_space.load(space)
    # the config's accepted values are the filters module's
    from typing import get_args

    assert get_args(TrainConfig.model_fields["input_filter"].annotation) == ("none", *filters.FILTERS)
