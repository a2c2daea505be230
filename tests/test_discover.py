"""Dataset layout discovery and the inspect report, on small image trees built in tmp_path."""

import argparse
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from dfsearch.data.discover import DatasetIndex, discover
from dfsearch.data.images import check_files
from dfsearch.data.inspect import format_report, inspect_dataset, run
from dfsearch.errors import DfsearchError


def write_image(path: Path, size=(8, 8), fmt=None, noise=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if noise:
        rng = random.Random(str(path))
        im = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    else:
        im = Image.new("RGB", size, (200, 30, 30))
    fmt = fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG")
    im.save(path, format=fmt)


def make_tree(root: Path, spec: dict, ext=".jpg", size=(8, 8)):
    """spec: {"train/real": 3, ...} -> that many images in each folder."""
    for folder, n in spec.items():
        for i in range(n):
            write_image(root / folder / f"{i:04d}{ext}", size=size)


def counts(train, valid, test):
    return {
        "train": {"real": train[0], "fake": train[1]},
        "valid": {"real": valid[0], "fake": valid[1]},
        "test": {"real": test[0], "fake": test[1]},
    }


SPEC = {
    "train/real": 4,
    "train/fake": 3,
    "valid/real": 2,
    "valid/fake": 2,
    "test/real": 2,
    "test/fake": 1,
}


# ----------------------------------------------------------------------------- layouts


def test_140k_layout_from_root_and_from_parent(tmp_path):
    top = tmp_path / "140k-real-and-fake-faces"
    root = top / "real_vs_fake" / "real-vs-fake"
    make_tree(root, SPEC)
    (top / "train.csv").write_text("id,label\n")

    for given in (root, top):
        index = discover(given)
        assert index.layout == "140k-real-and-fake-faces"
        assert index.root == str(root.resolve())
        assert index.given == str(given)
        assert index.counts() == counts((4, 3), (2, 2), (2, 1))
        assert index.splits["train"][0] == ("train/fake/0000.jpg", 1)
        assert index.splits["train"][-1] == ("train/real/0003.jpg", 0)
        assert all(items == sorted(items) for items in index.splits.values())
        assert index.skipped == [] and index.notes == []


def test_openforensics_layout(tmp_path):
    make_tree(
        tmp_path / "Dataset",
        {
            "Train/Real": 3,
            "Train/Fake": 5,
            "Validation/Real": 2,
            "Validation/Fake": 1,
            "Test/Real": 1,
            "Test/Fake": 2,
        },
    )
    index = discover(tmp_path)
    assert index.layout == "deepfake-and-real-images"
    assert index.root == str((tmp_path / "Dataset").resolve())
    assert index.counts() == counts((3, 5), (2, 1), (1, 2))
    assert ("Validation/Fake/0000.jpg", 1) in index.splits["valid"]
    assert ("Test/Real/0000.jpg", 0) in index.splits["test"]


def test_generic_layout_mixed_case_names_and_extensions(tmp_path):
    root = tmp_path / "faces"
    make_tree(root, {"Train/REAL": 3, "VAL/real": 2, "test/Real": 1})
    make_tree(root, {"Train/Fake": 2, "VAL/Fake": 1, "test/FAKE": 2}, ext=".PNG")
    write_image(root / "Train" / "REAL" / "extra.JpEg")
    (root / "Train" / "unknown").mkdir()
    (root / "docs").mkdir()

    index = discover(root)
    assert index.layout == "generic"
    assert index.root == str(root.resolve())
    assert index.counts() == counts((4, 2), (2, 1), (1, 2))
    assert ("Train/Fake/0001.PNG", 1) in index.splits["train"]
    assert ("Train/REAL/extra.JpEg", 0) in index.splits["train"]
    assert any("Train/unknown" in n and "not a class" in n for n in index.notes)
    assert any("docs" in n and "not a split" in n for n in index.notes)


def test_nested_class_folders_are_indexed(tmp_path):
    make_tree(tmp_path, {"train/real": 2, "train/fake/stylegan": 2, "train/fake/sd": 1, "test/real": 1, "test/fake": 1})
    index = discover(tmp_path, val_fraction=0.4)
    assert ("train/fake/stylegan/0001.jpg", 1) in index.splits["train"] + index.splits["valid"]
    assert sum(c["fake"] for c in index.counts().values()) == 4


# ----------------------------------------------------------------------------- carved splits


def test_missing_valid_and_test_are_carved_stratified_and_deterministic(tmp_path):
    make_tree(tmp_path, {"train/real": 30, "train/fake": 20})
    a = discover(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=0)
    b = discover(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=0)
    c = discover(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=1)

    assert a.splits == b.splits
    assert a.splits != c.splits
    assert a.counts() == counts((18, 12), (6, 4), (6, 4))  # stratified: 20% of each class
    ids = [sid for items in a.splits.values() for sid, _ in items]
    assert len(ids) == len(set(ids)) == 50  # a partition of train
    assert all(sid.startswith("train/") for sid in ids)
    assert any("no validation split" in n and "carved" in n for n in a.notes)
    assert any("no test split" in n and "carved" in n for n in a.notes)


def test_only_valid_missing_keeps_test(tmp_path):
    make_tree(tmp_path, {"train/real": 10, "train/fake": 10, "test/real": 3, "test/fake": 3})
    index = discover(tmp_path, val_fraction=0.2)
    assert index.counts() == counts((8, 8), (2, 2), (3, 3))
    assert all(sid.startswith("test/") for sid, _ in index.splits["test"])
    assert len(index.notes) == 1 and "no validation split" in index.notes[0]


def test_train_too_small_to_carve(tmp_path):
    make_tree(tmp_path, {"train/real": 1, "train/fake": 1})
    with pytest.raises(DfsearchError, match="cannot carve a test split"):
        discover(tmp_path)


# ----------------------------------------------------------------------------- corrupt files


def make_corrupt_tree(root: Path) -> dict:
    make_tree(root, SPEC)
    bad = {
        "train/real/empty.jpg": b"",
        "train/fake/text.jpg": b"this is not a jpeg, just text\n",
        "train/fake/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "valid/real/notes.txt": b"hello",
    }
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    truncated = root / "test/fake/truncated.jpg"
    write_image(truncated, size=(64, 64), noise=True)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return bad


def test_corrupt_files_are_skipped_with_reasons(tmp_path):
    bad = make_corrupt_tree(tmp_path)

    header = discover(tmp_path)  # default check="header"
    reasons = {s["path"]: s["reason"] for s in header.skipped}
    assert set(reasons) == set(bad)
    assert "0 bytes" in reasons["train/real/empty.jpg"]
    assert "not an image" in reasons["train/fake/text.jpg"]
    assert "not an image file name" in reasons["train/fake/.DS_Store"]
    assert "not an image file name" in reasons["valid/real/notes.txt"]
    assert ("test/fake/truncated.jpg", 1) in header.splits["test"]  # header is intact
    assert header.counts() == counts((4, 3), (2, 2), (2, 2))

    full = discover(tmp_path, check="full")
    reasons = {s["path"]: s["reason"] for s in full.skipped}
    assert set(reasons) == set(bad) | {"test/fake/truncated.jpg"}
    assert "truncated" in reasons["test/fake/truncated.jpg"]
    assert full.counts() == counts((4, 3), (2, 2), (2, 1))

    none = discover(tmp_path, check="none")  # extension only
    assert {s["path"] for s in none.skipped} == {"train/fake/.DS_Store", "valid/real/notes.txt"}
    assert none.counts() == counts((5, 4), (2, 2), (2, 2))


def test_inspect_reports_skipped_sizes_and_imbalance(tmp_path):
    make_corrupt_tree(tmp_path)
    write_image(tmp_path / "train/real/big.png", size=(16, 12))
    report = inspect_dataset(tmp_path, full=True, progress=False)

    assert json.loads(json.dumps(report)) == report
    assert report["root"] == str(tmp_path.resolve())
    assert report["layout"] == "generic"
    assert report["splits"] == counts((5, 3), (2, 2), (2, 1))
    assert report["total"] == 15
    assert {s["path"] for s in report["skipped"]} == {
        "train/real/empty.jpg",
        "train/fake/text.jpg",
        "train/fake/.DS_Store",
        "valid/real/notes.txt",
        "test/fake/truncated.jpg",
    }
    sizes = report["image_sizes"]
    assert sizes["most_common"][0] == {"width": 8, "height": 8, "count": 14}
    assert sizes["distinct"] == 2
    assert (sizes["min_width"], sizes["max_width"], sizes["min_height"], sizes["max_height"]) == (8, 16, 8, 12)
    assert report["imbalance"]["train"] == {"fake_fraction": 0.375, "ratio": round(5 / 3, 4)}
    assert report["imbalance"]["valid"] == {"fake_fraction": 0.5, "ratio": 1.0}

    quick = inspect_dataset(tmp_path, full=False, progress=False)
    assert "test/fake/truncated.jpg" not in {s["path"] for s in quick["skipped"]}

    text = format_report(report)
    assert "train" in text and "test/fake/truncated.jpg" in text and "skipped 5 file(s)" in text


def test_format_report_truncates_long_skip_list(tmp_path):
    make_tree(tmp_path, SPEC)
    for i in range(25):
        (tmp_path / "train/real" / f"junk{i:02d}.txt").write_text("x")
    text = format_report(inspect_dataset(tmp_path, full=False, progress=False))
    assert "skipped 25 file(s)" in text
    assert "... and 5 more" in text
    assert "junk19.txt" in text and "junk20.txt" not in text


def test_run_json_prints_one_object(tmp_path, capsys):
    make_corrupt_tree(tmp_path)
    rc = run(argparse.Namespace(data=str(tmp_path), json=True, quick=False))
    out = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out)  # exactly one JSON document, nothing else on stdout
    assert out.strip().startswith("{") and out.count("\n") == 1
    assert report["splits"] == counts((4, 3), (2, 2), (2, 1))
    assert len(report["skipped"]) == 5

    rc = run(argparse.Namespace(data=str(tmp_path), json=False, quick=True))
    out = capsys.readouterr().out
    assert rc == 0 and "real" in out and "notes.txt" in out


# ----------------------------------------------------------------------------- errors


def test_error_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DfsearchError, match="does not exist") as e:
        discover(missing)
    assert str(missing) in str(e.value)


def test_error_empty_dir(tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"x")  # hidden files alone count as empty
    with pytest.raises(DfsearchError, match="is empty") as e:
        discover(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_error_no_layout_shows_accepted_layouts(tmp_path):
    make_tree(tmp_path / "photos", {"a": 2, "b": 2})
    with pytest.raises(DfsearchError, match="no dataset layout found") as e:
        discover(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg
    assert "real_vs_fake/real-vs-fake" in msg and "Dataset/{Train,Validation,Test}" in msg


def test_error_no_layout_hints_at_class_folders(tmp_path):
    make_tree(tmp_path, {"real": 2, "fake": 2})
    with pytest.raises(DfsearchError, match="no split folders") as e:
        discover(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_error_train_missing_fake_class(tmp_path):
    make_tree(tmp_path, {"train/real": 3, "valid/real": 1, "valid/fake": 1})
    with pytest.raises(DfsearchError, match="split train") as e:
        discover(tmp_path)
    msg = str(e.value)
    assert "fake" in msg and str(tmp_path / "train") in msg


def test_error_class_with_no_readable_images(tmp_path):
    make_tree(tmp_path, SPEC)
    for p in (tmp_path / "valid/fake").iterdir():
        p.write_bytes(b"")
    with pytest.raises(DfsearchError, match="split valid") as e:
        discover(tmp_path)
    msg = str(e.value)
    assert "no readable fake images" in msg and "valid/fake/0000.jpg: empty file" in msg


def test_error_several_candidate_roots(tmp_path):
    make_tree(tmp_path / "a", {"train/real": 1, "train/fake": 1})
    make_tree(tmp_path / "b" / "inner", {"train/real": 1, "train/fake": 1})
    with pytest.raises(DfsearchError, match="holds 2 datasets") as e:
        discover(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "a") in msg and str(tmp_path / "b" / "inner") in msg


def test_error_duplicate_split_folders(tmp_path):
    make_tree(tmp_path, {"train/real": 1, "train/fake": 1, "val/real": 1, "val/fake": 1, "valid/real": 1, "valid/fake": 1})
    with pytest.raises(DfsearchError, match="two folders for the valid split: val, valid"):
        discover(tmp_path)


def test_error_bad_arguments(tmp_path):
    make_tree(tmp_path, SPEC)
    with pytest.raises(DfsearchError, match="check='fast'.*accepted: header, full, none"):
        discover(tmp_path, check="fast")
    with pytest.raises(DfsearchError, match="val_fraction=1.5"):
        discover(tmp_path, val_fraction=1.5)


# ----------------------------------------------------------------------------- index helpers


def test_index_json_round_trip(tmp_path):
    make_corrupt_tree(tmp_path)
    index = discover(tmp_path, check="full")
    text = json.dumps(index.to_json())
    back = DatasetIndex.from_json(json.loads(text))
    assert back == index
    assert DatasetIndex.from_json(text) == index
    with pytest.raises(DfsearchError, match="missing field.*root"):
        DatasetIndex.from_json({"given": "x", "layout": "generic", "splits": {}})


def test_index_from_json_names_the_bad_field():
    good = {"given": "x", "root": "/r", "layout": "generic", "splits": {"train": [["a.jpg", 1]], "valid": [], "test": []}}
    assert DatasetIndex.from_json(good).splits["train"] == [("a.jpg", 1)]
    with pytest.raises(DfsearchError, match="splits.*'valid', 'test'"):
        DatasetIndex.from_json({**good, "splits": {"train": []}})
    with pytest.raises(DfsearchError, match=r"splits\.train\.0"):
        DatasetIndex.from_json({**good, "splits": {**good["splits"], "train": [["a.jpg", "fake"]]}})
    with pytest.raises(DfsearchError, match="dataset index"):
        DatasetIndex.from_json("{not json")


def test_check_files_reports_reasons_and_sizes(tmp_path):
    write_image(tmp_path / "a.jpg", size=(12, 10))
    (tmp_path / "b.jpg").write_bytes(b"")
    out = check_files(str(tmp_path), ["a.jpg", "b.jpg"], "header", sizes=True)
    assert out["a.jpg"] == (None, (12, 10))
    assert out["b.jpg"][0] == "empty file (0 bytes)"
    assert check_files(str(tmp_path), ["b.jpg"], "none") == {"b.jpg": (None, None)}
    with pytest.raises(ValueError, match="accepted: header, full, none"):
        check_files(str(tmp_path), [], "fast")


def test_import_is_light():
    """sklearn (seconds to import) is only loaded when a split has to be carved."""
    import subprocess
    import sys

    code = "import sys, dfsearch.data.discover; print(sorted({'sklearn', 'torch'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


# ----------------------------------------------------------------------------- balanced sampling


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return list(loader.sampler)


def test_oversample_draws_balanced_epochs_sharded_across_ranks():
    from dfsearch.data.loading import ImageList, balanced_weights, make_loader

    items = [(f"r{i}", 0) for i in range(90)] + [(f"f{i}", 1) for i in range(11)]  # 101: not a multiple of 2
    labels = [y for _, y in items]
    w = balanced_weights(labels)
    assert abs(w[:90].sum() - w[90:].sum()) < 1e-9  # each class carries the same total weight

    ds = ImageList("/nowhere", items, transform=None)
    ranks = [make_loader(ds, batch_size=8, rank=r, world=2, shuffle=True, seed=3, oversample=True) for r in range(2)]
    drawn = []
    for epoch in range(20):
        a, b = (_epoch(loader, epoch) for loader in ranks)
        assert len(a) == len(b) == len(ranks[0].sampler) == 51  # same length on every rank (padded)
        drawn += a + b
    fake_share = sum(labels[i] for i in drawn) / len(drawn)
    assert abs(fake_share - 0.5) < 0.05, fake_share  # 11 of 101 are fake; the draw is balanced
    assert len({i for i in drawn if labels[i] == 1}) == 11  # every minority item is drawn

    # deterministic per (seed, epoch), different across epochs
    assert _epoch(ranks[0], 5) == _epoch(ranks[0], 5)
    assert _epoch(ranks[0], 5) != _epoch(ranks[0], 6)

    # without oversample: one shuffled pass, every item exactly once (plus the pad)
    plain = [make_loader(ds, batch_size=8, rank=r, world=2, shuffle=True, seed=3) for r in range(2)]
    seen = _epoch(plain[0], 0) + _epoch(plain[1], 0)
    assert len(seen) == 102 and set(seen) == set(range(101))
