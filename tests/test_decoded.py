"""The decoded-pixel cache (``dfsearch.data.decoded``) and the GPU path's loader sizing: the
same pixels as decoding the files, built once per node, rebuilt when a file changes, unreadable
files reported as the loader reports them."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from dfsearch.config import TrainConfig
from dfsearch.data import decoded
from dfsearch.data.discover import discover
from dfsearch.data.images import UnreadableImage, open_rgb
from dfsearch.data.loading import Augment, ImageList, build_transform
from dfsearch.data.views import View
from dfsearch.worker import loader_processes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dfsearch.data.synth import generate

    root = generate(tmp_path_factory.mktemp("dec") / "data", n=200, size=32, seed=3, progress=False)
    bad = root / "train" / "fake" / "zz_truncated.jpg"
    good = sorted((root / "train" / "fake").glob("*.jpg"))[0].read_bytes()
    bad.write_bytes(good[: int(len(good) * 0.9)])
    (root / "train" / "real" / "zz_sideways.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.arange(40 * 24 * 3, dtype=np.uint8).reshape(40, 24, 3)).save(root / "train" / "real" / "zz_sideways.png")
    return root


def test_the_cache_holds_exactly_the_decoded_pixels_and_the_reasons_for_unreadable_files(data, tmp_path):
    index = discover(str(data))
    items = index.splits["train"]
    builds = []
    cache = decoded.open_or_build(index.root, items, folder=tmp_path, progress=lambda d, n: builds.append(d))
    assert builds and builds[-1] == len(items)
    assert len(cache) == len(items)
    n_bad = 0
    for i, (sid, _) in enumerate(items):
        try:
            want = np.asarray(open_rgb(data / sid))
        except UnreadableImage as e:
            with pytest.raises(UnreadableImage) as got:
                cache.get(i)
            assert got.value.reason == e.reason and got.value.path.endswith(sid)
            n_bad += 1
            continue
        assert np.array_equal(cache.get(i), want), sid  # other sizes too (the 24 x 40 png)
    assert n_bad == 1
    again = []
    decoded.open_or_build(index.root, items, folder=tmp_path, progress=lambda d, n: again.append(d))
    assert again == []  # built once: the second caller opens it


def test_a_changed_file_builds_a_new_cache(data, tmp_path):
    index = discover(str(data))
    items = index.splits["valid"]
    first = decoded.open_or_build(index.root, items, folder=tmp_path)
    victim = data / items[0][0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(victim, format="JPEG")
    second = decoded.open_or_build(index.root, items, folder=tmp_path)
    assert second.folder != first.folder and second.get(0).max() <= 8 and first.get(0).max() > 8


def test_concurrent_builders_on_one_node_build_once(data, tmp_path):
    index = discover(str(data))
    items = index.splits["test"]
    builds = []
    threads = [threading.Thread(target=decoded.open_or_build, args=(index.root, items),
                                kwargs=dict(folder=tmp_path, progress=lambda d, n: builds.append(d)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds.count(len(items)) == 1
    assert len(list((tmp_path / "decoded").glob("*.partial-*"))) == 0


def test_the_loader_sees_the_same_tensors_from_the_cache_as_from_the_files(data, tmp_path):
    index = discover(str(data))
    items = index.splits["train"]
    cache = decoded.open_or_build(index.root, items, folder=tmp_path)
    view = View("crop", 32)
    for aug in (None, Augment(hflip=0.5, jpeg_p=0.5, noise_std=0.01)):
        tf = build_transform(view, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), aug)
        files, pixels = ImageList(index.root, items, tf), ImageList(index.root, items, tf, pixels=cache)
        for i in range(0, len(items), 17):
            torch.manual_seed(i)
            a = files[i]
            torch.manual_seed(i)
            b = pixels[i]
            if a[0] is None:
                assert b[0] is None and a[1] == b[1]
            else:
                assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_auto_uses_the_cache_when_it_fits_the_disk_and_the_settings_are_validated(tmp_path):
    assert decoded.use_cache("on", 10**18, tmp_path) and not decoded.use_cache("off", 1, tmp_path)
    assert decoded.use_cache("auto", 10**6, tmp_path) and not decoded.use_cache("auto", 10**18, tmp_path)
    assert decoded.decoded_bytes([(64, 64), (32, 32)], 10) == (64 * 64 * 3 + 32 * 32 * 3) // 2 * 10
    with pytest.raises(ValidationError, match="decode_cache"):
        TrainConfig(arch="small_cnn", decode_cache="sometimes")
    with pytest.raises(ValidationError, match="loader_workers"):
        TrainConfig(arch="small_cnn", loader_workers="many")


def test_loader_processes_auto_sizes_from_the_node_s_cpus_per_gpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert loader_processes(3, gpu) == 3 and loader_processes(0, cpu) == 0
    assert loader_processes("auto", cpu, cpus=64) == 0  # on CPU they would compete with training
    assert loader_processes("auto", gpu, cpus=4, gpus=1) == 3  # a g5.xlarge
    assert loader_processes("auto", gpu, cpus=96, gpus=8) == 8  # a p4d: 11, capped
    assert loader_processes("auto", gpu, cpus=2, gpus=2) == 0
