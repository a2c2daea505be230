"""``dfsearch evaluate``: the sets it finds in each layout, metrics with intervals, one-class sets,
unreadable images, images smaller than a member's crop, and an end-to-end run whose numbers are
predict's probabilities scored by ``binary_metrics``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfsearch import evaluate, models
from dfsearch.cli import main
from dfsearch.errors import DfsearchError
from dfsearch.metrics import HEADLINE, binary_metrics, headline


def _images(folder: Path, n: int, size: int = 24, seed: int = 0, bright: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = rng.integers(128 if bright else 0, 256 if bright else 128, (size, size, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{i:03d}.png")


def _names(sets):
    return [(s.name, sum(1 - lab for _, lab in s.items), sum(lab for _, lab in s.items)) for s in sets]


def test_sets_of_a_dataset_per_generator_and_cnndetection_layouts(tmp_path):
    ds = tmp_path / "ds"
    for split in ("train", "valid", "test"):
        _images(ds / split / "real", 2)
        _images(ds / split / "Fake", 3)
    sets, notes = evaluate.find_sets(ds)
    assert _names(sets) == [("test", 2, 3), ("valid", 2, 3)]
    assert notes == ["left out train: a training split (the models saw it)"]

    gen = tmp_path / "gen"  # test/<generator>/{real,fake} and CNNDetection's {0_real,1_fake}, one nested a level
    _images(gen / "test" / "stylegan" / "real", 2)
    _images(gen / "test" / "stylegan" / "fake", 1)
    _images(gen / "test" / "progan" / "0_real", 3)
    _images(gen / "test" / "progan" / "1_fake" / "car", 2)
    sets, notes = evaluate.find_sets(gen)
    assert _names(sets) == [("test/progan", 3, 2), ("test/stylegan", 2, 1), ("test", 5, 3)]
    assert notes == []

    one = tmp_path / "one"
    _images(one / "REAL", 1)
    _images(one / "fake", 1)
    assert _names(evaluate.find_sets(one)[0]) == [(".", 1, 1)]


def test_a_folder_without_class_folders_names_what_is_accepted(tmp_path):
    _images(tmp_path / "faces", 2)
    with pytest.raises(DfsearchError, match=r"no evaluation set found: no folder holds real/ and fake/ \(or "
                                            r"CNNDetection's 0_real/ and 1_fake/\)"):
        evaluate.find_sets(tmp_path)
    with pytest.raises(DfsearchError, match="no such folder"):
        evaluate.find_sets(tmp_path / "nope")


def test_intervals_cover_the_estimate_and_shrink_with_signal():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 300)
    chance = evaluate.score(y, rng.random(600), 0.5, n_boot=300)
    lo, hi = chance["ci"]["roc_auc"]
    assert lo < 0.5 < hi and lo <= chance["roc_auc"] <= hi
    # the null SE of an AUC at 300 + 300 is 0.024 (Hanley & McNeil): a 95 % interval ~ +-0.047
    assert 0.06 < hi - lo < 0.13
    perfect = evaluate.score(y, y * 0.8 + 0.1, 0.5, n_boot=100)
    assert perfect["ci"]["roc_auc"] == [1.0, 1.0] and perfect["accuracy"] == 1.0
    assert perfect["balanced_accuracy"] == 1.0 and perfect["eer"] == 0.0
    for k in HEADLINE:  # the fast bootstrap path computes what binary_metrics computes
        p = rng.random(600)
        full = binary_metrics(y, p, 0.4)
        fast = headline(y, p, 0.4)
        if k in full:
            assert fast[k] == pytest.approx(full[k], abs=1e-12), k


def test_a_one_class_set_gets_what_one_class_allows_and_says_what_it_cannot():
    m = evaluate.score(np.ones(10, dtype=int), np.linspace(0.1, 0.9, 10), 0.5, n_boot=50)
    assert m["accuracy"] == 0.5 and np.isnan(m["roc_auc"]) and np.isnan(m["balanced_accuracy"])
    assert "roc_auc" not in m["ci"] and "accuracy" in m["ci"]
    assert m["not_given"].startswith("only fake images: balanced_accuracy, roc_auc, average_precision, eer need both")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small_cnn checkpoint (random weights, 24 px crops, the srm filter) as a search leaves one."""
    from dfsearch import checkpoint as ckpt_io
    from dfsearch.config import TrainConfig

    folder = tmp_path_factory.mktemp("run") / "trial_0" / "checkpoint_000001"
    cfg = TrainConfig(arch="small_cnn", img_size=24, input_policy="crop", input_filter="srm")
    torch.manual_seed(0)
    model = models.create("small_cnn", img_size=24, input_filter="srm").eval()
    ckpt_io.save(folder, model, {"train": cfg.model_dump(), "data": models.data_config("small_cnn", 24)},
                 {"metrics": {}})
    return folder


def test_evaluate_end_to_end_matches_predict_scored_per_generator(tmp_path, checkpoint, capsys):
    from dfsearch.predict import predict_paths

    data = tmp_path / "cross"
    _images(data / "test" / "ganA" / "real", 6, seed=1)
    _images(data / "test" / "ganA" / "fake", 6, seed=2, bright=True)
    _images(data / "test" / "ganB" / "0_real", 5, seed=3)
    _images(data / "test" / "ganB" / "1_fake", 7, seed=4, bright=True)
    (data / "test" / "ganB" / "1_fake" / "broken.jpg").write_bytes(b"not a jpeg")
    ens = tmp_path / "ensemble.json"  # a calibrated ensemble of the one checkpoint: the threshold applies

    def write(threshold):
        ens.write_text(json.dumps({"members": [{"candidate": "t0", "weight": 1.0, "checkpoint": str(checkpoint)}],
                                   "calibration": {"slope": 2.0, "intercept": -0.3, "threshold": threshold}}))

    write(0.5)
    preds, _ = predict_paths(ens, [data / "test" / "ganA", data / "test" / "ganB"])
    prob = {Path(p["path"]).resolve(): p["prob_fake"] for p in preds}
    threshold = float(np.median(list(prob.values())))  # so that both decisions occur
    write(threshold)
    assert main(["evaluate", "--ensemble", str(ens), "--data", str(data), "--json", "--bootstrap", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["set"]: r for r in out["rows"]}
    assert list(rows) == ["test/ganA", "test/ganB", "test"]
    assert [u["path"].endswith("ganB/1_fake/broken.jpg") for u in out["unreadable"]] == [True]
    for name, gens in (("test/ganA", ["ganA"]), ("test/ganB", ["ganB"]), ("test", ["ganA", "ganB"])):
        keys = sorted(k for k in prob if k.parent.parent.name in gens)
        y = [int(k.parent.name in ("fake", "1_fake")) for k in keys]
        want = binary_metrics(y, [prob[k] for k in keys], threshold)
        assert rows[name]["confusion_matrix"] == want["confusion_matrix"], name
        for k in ("accuracy", "roc_auc", "log_loss", "ece", "f1"):
            assert rows[name][k] == pytest.approx(want[k], abs=1e-9), (name, k)
        assert rows[name]["n_real"] + rows[name]["n_fake"] == len(keys)
        lo, hi = rows[name]["ci"]["accuracy"]
        assert lo <= rows[name]["accuracy"] <= hi
    assert out["calibration"]["threshold"] == threshold
    assert 0 < rows["test"]["confusion_matrix"][0][1] + rows["test"]["confusion_matrix"][1][1] < 24

    # the same checkpoint alone: uncalibrated at 0.5, the human table names every set
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--bootstrap", "0"]) == 0
    text = capsys.readouterr().out
    assert "test/ganA" in text and "test/ganB" in text and "uncalibrated, threshold 0.5" in text


def test_images_smaller_than_the_crop_are_refused_before_any_model_runs(tmp_path, checkpoint, capsys):
    data = tmp_path / "small"
    _images(data / "real", 2, size=16)
    _images(data / "fake", 2, size=16)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "set '.' for member" in err and "small_cnn" in err and "24" in err
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--data", str(data)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_the_benchmark_families_are_scored_each_against_the_shared_real_images(tmp_path):
    from dfsearch.data import synth

    root = synth.generate(tmp_path / "fam", n=30, size=16, seed=0, families=["upsample", "blend", "spectral"],
                          progress=False)
    sets, _ = evaluate.find_sets(root)
    assert _names(sets) == [("test", 3, 3), ("test [blend]", 3, 1), ("test [spectral]", 3, 1),
                            ("test [upsample]", 3, 1), ("valid", 3, 3), ("valid [blend]", 3, 1),
                            ("valid [spectral]", 3, 1), ("valid [upsample]", 3, 1)]


def test_all_resamples_at_once_score_what_each_resample_scores_alone():
    """``weighted_scores`` (every bootstrap resample in one pass, ties in AUC counted half) equals
    ``headline`` run on each resample's images, with ties and one-class resamples included."""
    from dfsearch.metrics import resample_weights, weighted_scores

    rng = np.random.default_rng(3)
    y = (rng.random(40) < 0.3).astype(int)
    p = np.round(rng.random(40), 1)  # many ties
    W = resample_weights(40, 200, seed=1)
    fast = weighted_scores(y, p, 0.5, W)
    for r in range(200):
        i = np.repeat(np.arange(40), W[r].astype(int))
        slow = headline(y[i], p[i], 0.5)
        for k, v in fast.items():
            assert (np.isnan(v[r]) and np.isnan(slow[k])) or v[r] == pytest.approx(slow[k], abs=1e-12), (r, k)


def test_the_auc_only_interval_is_the_full_bootstrap_s_auc_interval():
    """``auc_interval`` (the per-source tables) resamples exactly as ``bootstrap_intervals`` does:
    the same interval for the same seed; none without both classes or resamples."""
    from dfsearch.metrics import auc_interval, bootstrap_intervals, roc_auc

    rng = np.random.default_rng(5)
    y = (rng.random(120) < 0.4).astype(int)
    p = np.clip(0.3 * y + rng.random(120) * 0.7, 0, 1)
    ci = auc_interval(y, p, n=300, seed=2)
    assert ci == bootstrap_intervals(y, p, 0.5, n=300, seed=2)["roc_auc"]
    assert ci[0] < roc_auc(y, p) < ci[1]
    assert auc_interval(np.zeros(10), p[:10]) is None and auc_interval(y, p, n=0) is None


def test_predict_applies_each_members_own_map_before_averaging(tmp_path, checkpoint):
    """ensemble.json's members[i].calibration (fitted on val before selection) is applied to that
    member's P(fake) before the weighted average; a malformed one names the member and the field."""
    from dfsearch.ensemble.calibration import calibrate
    from dfsearch.predict import predict_paths

    _images(tmp_path / "imgs", 4, seed=7)
    plain, mapped = tmp_path / "plain.json", tmp_path / "mapped.json"
    member = {"candidate": "t0", "weight": 1.0, "checkpoint": str(checkpoint)}
    plain.write_text(json.dumps({"members": [member]}))
    mapped.write_text(json.dumps({"members": [
        {**member, "weight": 3.0, "calibration": {"slope": 2.0, "intercept": -1.0}},
        {**member, "candidate": "t1", "weight": 1.0}]}))
    raw = np.array([p["prob_fake"] for p in predict_paths(plain, [tmp_path / "imgs"])[0]])
    got = np.array([p["prob_fake"] for p in predict_paths(mapped, [tmp_path / "imgs"])[0]])
    np.testing.assert_allclose(got, 0.75 * calibrate(raw, 2.0, -1.0) + 0.25 * raw, atol=1e-6)
    assert np.abs(got - raw).max() > 1e-3
    mapped.write_text(json.dumps({"members": [{**member, "calibration": {"slope": "steep"}}]}))
    with pytest.raises(DfsearchError, match="member 't0': field calibration needs numbers slope and intercept"):
        predict_paths(mapped, [tmp_path / "imgs"])


def test_a_run_is_scored_on_its_own_data_first_then_on_another_dataset(tmp_path, checkpoint, capsys):
    """``--run RUN --data B``: the cross-dataset table, the run's ensemble on the dataset it was
    selected on (search.json) and on B, a row per set of each."""
    from dfsearch.search.spec import SearchSpec

    a, b = tmp_path / "A", tmp_path / "B"
    for root, seed in ((a, 0), (b, 5)):
        for split in ("train", "valid", "test"):
            _images(root / split / "real", 3, seed=seed)
            _images(root / split / "fake", 3, seed=seed + 1, bright=True)
    run = tmp_path / "runs" / "s1"
    (run / "ensemble").mkdir(parents=True)
    SearchSpec(space="demo", data=str(a), name="s1").save(run)
    (run / "ensemble" / "ensemble.json").write_text(json.dumps({"members": [
        {"candidate": "t0", "weight": 1.0, "checkpoint": str(checkpoint)}]}))
    assert main(["evaluate", "--run", str(run), "--data", str(b), "--json", "--bootstrap", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(Path(r["data"]).name, r["set"]) for r in rows] == [("A", "test"), ("A", "valid"), ("B", "test"),
                                                                ("B", "valid")]
    (run / "ensemble" / "ensemble.json").unlink()
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "no ensemble/ensemble.json yet; run `ensemble.py --run" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(checkpoint)]) == 2
    assert "--data DIR is required" in capsys.readouterr().err
