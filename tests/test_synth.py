"""The embedded synthetic benchmark: determinism, layout, the upsampling fingerprint and how
difficulty fades it, parameter validation, and the cached default dataset."""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfsearch import cli
from dfsearch.data import synth
from dfsearch.data.discover import discover
from dfsearch.errors import DfsearchError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_byte_identical_files(tmp_path):
    a = synth.generate(tmp_path / "a", n=8, size=16, seed=5, difficulty=0.3, progress=False)
    b = synth.generate(tmp_path / "b", n=8, size=16, seed=5, difficulty=0.3, progress=False)
    fa, fb = _files(a), _files(b)
    assert len(fa) == 8 + 2 + 2 + 1  # images + synth.json
    assert fa == fb


def test_different_seed_gives_different_images(tmp_path):
    a = _files(synth.generate(tmp_path / "a", n=8, size=16, seed=5, progress=False))
    b = _files(synth.generate(tmp_path / "b", n=8, size=16, seed=6, progress=False))
    assert a.keys() == b.keys()
    images = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != b[k] for k in images)
    assert json.loads(a["synth.json"])["seed"] == 5 and json.loads(b["synth.json"])["seed"] == 6


def test_make_image_is_deterministic_in_its_arguments():
    def pixels(*args):
        im, q = synth.make_image(*args)
        return np.asarray(im).tobytes(), q

    base = (3, "train", 4, True, 32, 0.5)
    assert pixels(*base) == pixels(*base)
    for i, other in enumerate([4, "valid", 5, False, None, 0.9]):
        if other is None:
            continue
        changed = list(base)
        changed[i] = other
        assert pixels(*changed)[0] != pixels(*base)[0], changed
    im, q = synth.make_image(*base)
    assert im.mode == "RGB" and im.size == (32, 32) and 75 <= q <= 95


# ----------------------------------------------------------------------------- layout

@pytest.mark.parametrize("n,expected", [(8, (8, 2, 2)), (12, (12, 2, 2)), (20, (20, 4, 4)), (27, (27, 5, 5))])
def test_split_sizes(n, expected):
    assert tuple(synth.split_sizes(n).values()) == expected


def test_layout_split_sizes_and_class_balance(tmp_path):
    root = synth.generate(tmp_path / "data", n=21, size=20, seed=0, progress=False)
    meta = json.loads((root / "synth.json").read_text())
    assert meta["splits"] == {"train": 21, "valid": 4, "test": 4}
    assert meta["VERSION"] == synth.VERSION and meta["n"] == 21 and meta["size"] == 20
    for split, count in meta["splits"].items():
        real = sorted((root / split / "real").glob("*.jpg"))
        fake = sorted((root / split / "fake").glob("*.jpg"))
        assert len(real) + len(fake) == count
        assert len(real) == (count + 1) // 2 and len(fake) == count // 2  # even index real, odd fake
        for p in real[:2] + fake[:2]:
            with Image.open(p) as im:
                assert im.format == "JPEG" and im.size == (20, 20) and im.mode == "RGB"
    # no temp folder left behind, and the generic loader reads it as is
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    idx = discover(root)
    assert idx.layout == "generic"
    assert idx.counts() == {"train": {"real": 11, "fake": 10}, "valid": {"real": 2, "fake": 2},
                            "test": {"real": 2, "fake": 2}}


def test_generate_replaces_the_output_folder(tmp_path):
    out = tmp_path / "data"
    (out / "train" / "real").mkdir(parents=True)
    (out / "train" / "real" / "stale.jpg").write_bytes(b"old")
    (out / "junk.txt").write_text("x")
    synth.generate(out, n=4, size=16, progress=False)
    assert not (out / "junk.txt").exists() and not (out / "train" / "real" / "stale.jpg").exists()
    assert len(list((out / "train").rglob("*.jpg"))) == 4


# ----------------------------------------------------------------------------- the fingerprint

def _gray_power(img: np.ndarray) -> np.ndarray:
    g = img.mean(axis=-1)
    return np.abs(np.fft.fft2(g - g.mean())) ** 2


def _hf_ratio(img: np.ndarray, cut: float = 0.25) -> float:
    """Share of (non-DC) spectral energy above ``cut`` cycles/pixel: the band a x2 upsampler
    cannot produce from its half-resolution input."""
    p = _gray_power(img)
    n = img.shape[0]
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    return float(p[f > cut].sum() / p.sum())


def _nyquist_ratio(img: np.ndarray) -> float:
    """Share of energy on the Nyquist row/column: where a checkerboard (unequal phase gains) shows."""
    p = _gray_power(img)
    n = img.shape[0]
    return float((p[n // 2, :].sum() + p[:, n // 2].sum()) / p.sum())


DIFFICULTIES = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def fingerprints():
    """~60 paired images before post-processing (no blur, noise, JPEG): each real content and the
    same content through the generator path at each difficulty (same generator draws)."""
    rows = []
    for i in range(60):
        real = synth._content(np.random.default_rng([11, i]), 64)
        mode = int(copy.deepcopy(np.random.default_rng([12, i])).integers(3))  # the path's first draw
        fakes = {d: synth._generator_path(real, np.random.default_rng([12, i]), d) for d in DIFFICULTIES}
        rows.append(dict(mode=mode, real=real, fakes=fakes))
    assert {r["mode"] for r in rows} == {0, 1, 2}  # nearest, bilinear, transposed all drawn
    return rows


def test_generator_path_keeps_range_and_shape(fingerprints):
    for r in fingerprints[:10]:
        for f in r["fakes"].values():
            assert f.shape == r["real"].shape and f.min() >= 0 and f.max() <= 1


def test_fingerprint_fades_monotonically_with_difficulty(fingerprints):
    """The spectral deviation of a fake from its own content (|log HF-energy ratio|) is large at
    difficulty 0 and shrinks monotonically as difficulty -> 1."""
    gap = {d: np.mean([abs(np.log(_hf_ratio(r["fakes"][d]) / _hf_ratio(r["real"]))) for r in fingerprints])
           for d in DIFFICULTIES}
    assert gap[0.0] > gap[0.5] > gap[1.0]
    assert gap[0.0] > 1.0  # a strong fingerprint: HF energy off by a factor of e on average
    assert gap[1.0] < 0.25 * gap[0.0]
    # and per image, the deviation at difficulty 1 is smaller than at 0 for (almost) every image
    smaller = np.mean([abs(np.log(_hf_ratio(r["fakes"][1.0]) / _hf_ratio(r["real"])))
                       < abs(np.log(_hf_ratio(r["fakes"][0.0]) / _hf_ratio(r["real"]))) for r in fingerprints])
    assert smaller > 0.9


def test_interpolated_fakes_miss_high_frequency_detail(fingerprints):
    """Bilinear-upsampled fakes have less high-frequency energy than their real content on
    average, and the gap closes as difficulty adds the lost detail back."""
    bil = [r for r in fingerprints if r["mode"] == 1]
    assert len(bil) >= 8
    ratio = {d: np.mean([_hf_ratio(r["fakes"][d]) for r in bil]) / np.mean([_hf_ratio(r["real"]) for r in bil])
             for d in DIFFICULTIES}
    assert ratio[0.0] < 0.6
    assert ratio[0.0] < ratio[0.5] < ratio[1.0]
    assert ratio[1.0] > 0.8


def test_transposed_conv_fakes_leave_checkerboard_peaks(fingerprints):
    tc = [r for r in fingerprints if r["mode"] == 2]
    assert len(tc) >= 8
    real = np.mean([_nyquist_ratio(r["real"]) for r in tc])
    fake = {d: np.mean([_nyquist_ratio(r["fakes"][d]) for r in tc]) for d in DIFFICULTIES}
    assert fake[0.0] > 100 * real
    assert fake[0.0] > fake[0.5] > fake[1.0]
    assert all(_nyquist_ratio(r["fakes"][0.0]) > _nyquist_ratio(r["real"]) for r in tc)


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("kw,flag", [(dict(n=2), "--n"), (dict(n=4.5), "--n"), (dict(size=30), "--size"),
                                     (dict(size=12), "--size"), (dict(difficulty=1.5), "--difficulty"),
                                     (dict(difficulty=-0.1), "--difficulty"), (dict(seed=-1), "--seed")])
def test_bad_params_name_the_flag(tmp_path, kw, flag):
    params = dict(n=8, size=16, seed=0, difficulty=0.5)
    params.update(kw)
    with pytest.raises(DfsearchError) as e:
        synth.validate_params(**params)
    assert str(e.value).startswith(flag + " ")
    with pytest.raises(DfsearchError, match=flag):
        synth.generate(tmp_path / "out", progress=False, **params)
    assert not any(tmp_path.iterdir())  # failed before writing anything


@pytest.mark.parametrize("args,flag", [(["--n", "2"], "--n"), (["--size", "30"], "--size"),
                                       (["--difficulty", "1.5"], "--difficulty")])
def test_synth_command_rejects_bad_params(tmp_path, capsys, args, flag):
    rc = cli.main(["synth", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("dfsearch synth: error: " + flag)
    assert not (tmp_path / "out").exists()


def test_synth_command_json(tmp_path, capsys):
    rc = cli.main(["synth", str(tmp_path / "out"), "--n", "6", "--size", "16", "--seed", "2", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1
    meta = json.loads(out[0])
    assert meta["out"] == str(tmp_path / "out") and meta["splits"] == {"train": 6, "valid": 2, "test": 2}
    assert meta["seed"] == 2 and meta["size"] == 16


# ----------------------------------------------------------------------------- the cached default

def test_default_dataset_is_generated_once_and_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFSEARCH_CACHE", str(tmp_path / "cache"))
    assert synth.cache_dir() == tmp_path / "cache"
    p1 = synth.default_dataset(n=8, size=16, seed=3, difficulty=0.2, progress=False)
    assert "generating" in capsys.readouterr().err
    assert p1.parent == tmp_path / "cache"
    assert f"v{synth.VERSION}" in p1.name and "n8" in p1.name and "s16" in p1.name and "seed3" in p1.name
    meta = json.loads((p1 / "synth.json").read_text())
    assert (meta["n"], meta["size"], meta["seed"], meta["difficulty"]) == (8, 16, 3, 0.2)
    image = sorted((p1 / "train" / "fake").glob("*.jpg"))[0]
    stamp = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (p1 / "synth.json", image)}
    before = _files(p1)

    p2 = synth.default_dataset(n=8, size=16, seed=3, difficulty=0.2, progress=False)
    assert p2 == p1
    assert "generating" not in capsys.readouterr().err  # reused, not regenerated
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in stamp} == stamp
    assert _files(p2) == before
    # other parameters -> another cached set, next to the first
    p3 = synth.default_dataset(n=8, size=16, seed=4, difficulty=0.2, progress=False)
    assert p3 != p1 and p3.parent == p1.parent and (p3 / "synth.json").exists()
    assert sorted(x.name for x in (tmp_path / "cache").iterdir()) == sorted([p1.name, p3.name])


def test_default_dataset_regenerates_an_incomplete_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFSEARCH_CACHE", str(tmp_path))
    p = synth.default_dataset(n=4, size=16, progress=False)
    (p / "synth.json").unlink()  # e.g. an interrupted copy
    (p / "train" / "real" / "partial.jpg").write_bytes(b"")
    capsys.readouterr()
    assert synth.default_dataset(n=4, size=16, progress=False) == p
    assert "generating" in capsys.readouterr().err
    assert (p / "synth.json").exists() and not (p / "train" / "real" / "partial.jpg").exists()


def test_default_dataset_uses_the_documented_defaults(tmp_path, monkeypatch):
    """Only the path is checked (generating the full default set is the slow tests' job)."""
    monkeypatch.setenv("DFSEARCH_CACHE", str(tmp_path))
    d = synth.DEFAULTS
    fake = tmp_path / f"synth-v{synth.VERSION}-n{d['n']}-s{d['size']}-seed{d['seed']}-d{d['difficulty']}"
    fake.mkdir()
    (fake / "synth.json").write_text("{}")  # looks complete: reused as is
    assert synth.default_dataset(progress=False) == fake
    assert os.listdir(fake) == ["synth.json"]


# ----------------------------------------------------------------------------- generator families


def test_families_are_deterministic_balanced_and_written_per_family(tmp_path):
    kw = dict(n=12, size=16, seed=1, difficulty=0.4, families=["upsample", "blend", "spectral"], progress=False)
    a, b = synth.generate(tmp_path / "a", **kw), synth.generate(tmp_path / "b", **kw)
    assert _files(a) == _files(b)
    meta = json.loads((a / "synth.json").read_text())
    assert meta["families"] == ["upsample", "blend", "spectral"]
    assert meta["fakes_per_family"]["train"] == {"upsample": 2, "blend": 2, "spectral": 2}
    for fam in ("upsample", "blend", "spectral"):
        assert len(list((a / "train" / "fake" / fam).glob("*.jpg"))) == 2
    from dfsearch.data.inspect import inspect_dataset

    assert inspect_dataset(a, progress=False)["fake_sources"]["train"] == {"blend": 2, "spectral": 2, "upsample": 2}
    index = discover(a)  # the loader takes fake/<family>/ as fake
    assert sum(label for _, label in index.splits["train"]) == 6
    assert {sid.split("/")[2] for sid, label in index.splits["train"] if label} == {"upsample", "blend", "spectral"}
    # the default writes fakes straight into fake/, as version 1 did, and the same upsample images
    default = synth.generate(tmp_path / "d", n=12, size=16, seed=1, difficulty=0.4, progress=False)
    assert not [p for p in (default / "train" / "fake").iterdir() if p.is_dir()]
    assert (a / "train" / "fake" / "upsample" / "000001.jpg").read_bytes() == \
        (default / "train" / "fake" / "000001.jpg").read_bytes()
    # real images do not depend on the families
    assert (a / "train" / "real" / "000000.jpg").read_bytes() == (default / "train" / "real" / "000000.jpg").read_bytes()


@pytest.mark.parametrize("families", [["nope"], ["blend", "blend"], []])
def test_unknown_or_repeated_families_are_refused(tmp_path, families, capsys):
    with pytest.raises(DfsearchError, match="--families .*accepted: one or more of upsample, blend, spectral"):
        synth.generate(tmp_path / "out", n=8, size=16, families=families, progress=False)
    assert cli.main(["synth", str(tmp_path / "out"), "--families", ",".join(families) or ","]) == 2
    assert "accepted: one or more of upsample, blend, spectral" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_each_family_is_learnable_by_a_small_fast_model(tmp_path):
    """A logistic regression on six numbers per image (the log energy of each srm residual, and how
    unevenly it spreads over 8 x 8 blocks: a pasted region) separates every family from the real
    images on held-out test images: each family leaves a trace a model can find."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from dfsearch.models.filters import srm

    root = synth.generate(tmp_path / "fam", n=1200, size=64, seed=0, difficulty=0.4,
                          families=["upsample", "blend", "spectral"], progress=False)

    def features(folder):
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255)
                         .permute(2, 0, 1) for f in sorted(folder.glob("*.jpg"))])
        r = srm((x - 0.5) / 0.25).abs()
        blocks = torch.nn.functional.avg_pool2d(r, 8)
        spread = blocks.std(dim=(2, 3)) / (blocks.mean(dim=(2, 3)) + 1e-6)
        return torch.cat([r.mean(dim=(2, 3)).log(), spread], 1).numpy()

    real_tr, real_te = features(root / "train" / "real"), features(root / "test" / "real")
    for fam in ("upsample", "blend", "spectral"):
        fake_tr, fake_te = features(root / "train" / "fake" / fam), features(root / "test" / "fake" / fam)
        clf = LogisticRegression(max_iter=2000).fit(np.r_[real_tr, fake_tr],
                                                    np.r_[np.zeros(len(real_tr)), np.ones(len(fake_tr))])
        auc = roc_auc_score(np.r_[np.zeros(len(real_te)), np.ones(len(fake_te))],
                            clf.predict_proba(np.r_[real_te, fake_te])[:, 1])
        assert auc > 0.7, (fam, auc)  # 120 real vs 40 fake test images: SE ~0.04
