"""What the network sees (dfsearch.data.views): crops at native resolution leave every pixel as it
was, the tiles cover the image, auto picks crop or resize from the images' sizes, impossible
policies are refused, and augmentation touches training only, reproducibly under a seed."""

import numpy as np
import pytest
import torch
from PIL import Image

from dfsearch.data.loading import Augment, build_transform
from dfsearch.data.views import View, predict_probs, resolve, tile_origins
from dfsearch.errors import DfsearchError

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # x = pixel / 255: comparable to the source


def _image(size=48, seed=0) -> tuple[Image.Image, torch.Tensor]:
    """A random RGB image and its pixels (uint8, CHW)."""
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Back from the network's input (identity normalisation) to uint8 pixels."""
    return (x * 255).round().to(torch.uint8)


def _windows(src: torch.Tensor, size: int) -> list[tuple[int, int]]:
    return [(t, l) for t in range(src.shape[1] - size + 1) for l in range(src.shape[2] - size + 1)]


def test_centre_crop_is_the_source_pixels_unresampled():
    img, src = _image(48)
    x = build_transform(View("crop", 32), **IDENTITY)(img)
    assert x.shape == (3, 32, 32)
    assert torch.equal(_pixels(x), src[:, 8:40, 8:40])


def test_random_training_crop_is_some_window_of_the_source_exactly():
    img, src = _image(40)
    tf = build_transform(View("crop", 32), **IDENTITY, aug=Augment(hflip=0.0))
    for seed in range(5):
        torch.manual_seed(seed)
        x = tf(img)
        assert any(torch.equal(_pixels(x), src[:, t:t + 32, l:l + 32]) for t, l in _windows(src, 32))


def test_resize_resamples_every_pixel():
    img, src = _image(48)
    x = build_transform(View("resize", 32), **IDENTITY)(img)
    assert x.shape == (3, 32, 32)
    assert not any(torch.equal(_pixels(x), src[:, t:t + 32, l:l + 32]) for t, l in _windows(src, 32))


def test_tiles_cover_the_image_from_corner_to_corner():
    assert tile_origins(48, 32, 2) == [0, 16]
    assert tile_origins(256, 224, 3) == [0, 16, 32]
    assert tile_origins(32, 32, 3) == [0]  # no room to move: one centred crop
    img, src = _image(48)
    x = build_transform(View("crop", 32, eval_view="tiles", eval_tiles=2), **IDENTITY)(img)
    assert x.shape == (4, 3, 32, 32)
    for k, (t, l) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
        assert torch.equal(_pixels(x[k]), src[:, t:t + 32, l:l + 32])


def test_tiled_predictions_average_over_the_tiles():
    class Mean(torch.nn.Module):  # logit = mean pixel: a different probability per tile
        def forward(self, x):
            return x.mean(dim=(1, 2, 3)).unsqueeze(-1)

    x = torch.rand(2, 4, 3, 8, 8)
    want = torch.sigmoid(x.mean(dim=(2, 3, 4))).mean(dim=1)
    torch.testing.assert_close(predict_probs(Mean(), x), want)
    torch.testing.assert_close(predict_probs(Mean(), x[:, 0]), torch.sigmoid(x[:, 0].mean(dim=(1, 2, 3))))


def test_auto_crops_images_large_enough_and_resizes_smaller_ones():
    assert resolve("auto", 224, [(256, 256)]).policy == "crop"
    assert resolve("auto", 64, [(64, 64)]).policy == "crop"  # the embedded benchmark: the image itself
    assert resolve("auto", 224, [(256, 256), (128, 160)]).policy == "resize"
    assert resolve("native", 224, [(256, 256)]) == View("native", 256)


@pytest.mark.parametrize("policy, sizes, match", [
    ("crop", [(256, 256), (200, 300)], r"a 224 px crop is larger than the images \(200x300 px"),
    ("native", [(256, 256), (300, 300)], "square images of one size"),
    ("native", [(256, 192)], "square images of one size"),
    ("stretch", [(256, 256)], "accepted: auto, crop, resize, native"),
])
def test_policies_that_cannot_work_on_the_images_are_refused(policy, sizes, match):
    with pytest.raises(DfsearchError, match=match):
        resolve(policy, 224, sizes, where="archs.resnet18.input_policy")


def test_augmentation_is_for_training_only_and_reproducible_under_a_seed():
    img, _ = _image(48)
    aug = Augment(hflip=0.5, rotation=10, blur_p=0.5, noise_std=0.05, jpeg_p=0.5, color_jitter=0.2, rescale=0.1)
    train = build_transform(View("crop", 32), **IDENTITY, aug=aug)
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(train(img))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    evaluation = build_transform(View("crop", 32), **IDENTITY)
    torch.manual_seed(5)
    first = evaluation(img)
    torch.manual_seed(6)
    assert torch.equal(first, evaluation(img))  # no randomness at all in evaluation


def test_the_mild_rescaled_crop_is_a_training_op_that_keeps_the_size():
    from dfsearch.data.views import RandomRescaledCrop

    _, src = _image(64)
    for seed in range(5):
        torch.manual_seed(seed)
        assert RandomRescaledCrop(32, 0.1)(src).shape == (3, 32, 32)
    train = build_transform(View("crop", 32), **IDENTITY, aug=Augment(hflip=0.0, rescale=0.1))
    evaluation = build_transform(View("crop", 32), **IDENTITY)
    assert "RandomRescaledCrop(size=32, rescale=0.1)" in repr(train)
    assert "Rescaled" not in repr(evaluation)


def test_zoom_replicates_native_pixels_exactly_for_training_and_evaluation():
    img, src = _image(48)
    x = build_transform(View("crop", 32, zoom=2), **IDENTITY)(img)  # centre 16 px, each pixel 2 x 2
    assert x.shape == (3, 32, 32)
    assert torch.equal(_pixels(x), src[:, 16:32, 16:32].repeat_interleave(2, 1).repeat_interleave(2, 2))
    train = build_transform(View("crop", 32, zoom=2), **IDENTITY, aug=Augment(hflip=0.0))
    for seed in range(3):
        torch.manual_seed(seed)
        x = _pixels(train(img))
        assert any(torch.equal(x, src[:, t:t + 16, l:l + 16].repeat_interleave(2, 1).repeat_interleave(2, 2))
                   for t, l in _windows(src, 16))
    tiles = build_transform(View("crop", 32, eval_view="tiles", eval_tiles=3, zoom=2), **IDENTITY)(img)
    assert tiles.shape == (9, 3, 32, 32)  # 3 x 3 crops of 16 px spread over the 48 px image, each zoomed
    assert torch.equal(_pixels(tiles[8]), src[:, 32:, 32:].repeat_interleave(2, 1).repeat_interleave(2, 2))
    native = build_transform(resolve("native", 32, [(48, 48)], zoom=2), **IDENTITY)(img)
    assert native.shape == (3, 96, 96)


def test_zoom_takes_the_crop_from_the_images_and_must_divide_the_input():
    assert resolve("auto", 64, [(40, 40)], zoom=2) == View("crop", 64, zoom=2)  # a 32 px crop fits
    assert resolve("auto", 64, [(24, 24)], zoom=2).policy == "resize"
    with pytest.raises(DfsearchError, match=r"a 32 px crop is larger than the images \(24x24 px"):
        resolve("crop", 64, [(24, 24)], zoom=2)
    with pytest.raises(DfsearchError, match=r"zoom 3: accepted: an integer >= 1 that divides the img_size \(64\)"):
        resolve("crop", 64, [(64, 64)], zoom=3)
    from dfsearch import models

    assert models.fit_img_size("inception_v3", 64, 2) == 76  # its minimum (75), raised to a multiple of 2
