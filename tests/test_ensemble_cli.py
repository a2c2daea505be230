"""The ensemble command and ``dfsearch predict`` end to end, on a real (tiny) two-trial run folder:
selection output, the offline W&B run, predictions that reproduce the stored ones exactly,
unreadable images, and bad input."""

import argparse
import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfsearch import checkpoint as ckpt_io
from dfsearch import store, tracking
from dfsearch.config import TrainConfig
from dfsearch.data.discover import discover
from dfsearch.ensemble.calibration import calibrate
from dfsearch.ensemble_cli import latest_run, main
from dfsearch.errors import DfsearchError
from dfsearch.predict import add_parser as add_predict_parser
from dfsearch.predict import predict_paths
from dfsearch.store import write_store
from dfsearch.train import fit_trial, trial_summary
from tests.wandb_offline import records as wandb_records

# the second sees 24 px crops of the 32 px images (input_policy auto -> crop) and is evaluated on
# the mean of a 2 x 2 grid of crops: predict must show new images the same views
CFGS = [TrainConfig(arch="small_cnn", img_size=32, epochs=1, batch_size=32, lr=3e-3, seed=1),
        TrainConfig(arch="small_cnn", img_size=24, epochs=1, batch_size=32, lr=1e-3, seed=2, eval_view="tiles")]
PLOTS = ("roc.png", "confusion.png", "trajectory.png")


def _main(argv) -> tuple[int, str, str]:
    """Run the ensemble command in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


pytestmark = pytest.mark.xdist_group("ray-ensemble")  # its own session Ray, beside the "ray" group


@pytest.fixture(scope="module")
def run_dir(ray_local, easy_data, tmp_path_factory):
    """A search-like output folder: one-epoch trials (trained at once: 1 worker each on 4 logical
    CPUs) collected into one store."""
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path_factory.mktemp("ens")
    index = discover(easy_data)
    with ThreadPoolExecutor(len(CFGS)) as pool:
        results = list(pool.map(lambda i: fit_trial(CFGS[i], index.to_json(), workers=1, storage=str(base / "ray"),
                                                    name=f"trial_{i}"), range(len(CFGS))))
    summaries = []
    for i, (cfg, result) in enumerate(zip(CFGS, results)):
        assert result.error is None
        summaries.append(trial_summary(result, cfg, f"cand-{i}", f"trial_{i}"))
    run = base / "search-tiny"
    write_store(summaries, run)
    return run


@pytest.fixture(scope="module")
def ensembled(run_dir):
    """``ensemble.py --run DIR --top-k 4 --json`` with an offline W&B run."""
    rc, out, err = _main(["--run", run_dir, "--top-k", 4, "--json", "--wandb-mode", "offline"])
    assert rc == 0, err
    return dict(result=json.loads(out), out_dir=run_dir / "ensemble", stderr=err)


def test_json_result_ensemble_file_and_plots(ensembled, run_dir):
    result, out_dir = ensembled["result"], ensembled["out_dir"]
    assert result["out_dir"] == str(out_dir)
    on_disk = json.loads((out_dir / "ensemble.json").read_text())
    assert on_disk["members"] == result["members"]
    assert on_disk["source"] == str(run_dir.resolve())
    weights = [m["weight"] for m in on_disk["members"]]
    assert 1 <= len(weights) <= 2 and all(w > 0 for w in weights)
    assert sum(weights) == pytest.approx(1.0)
    cands = store.read_candidates(run_dir).set_index("candidate")
    for m in on_disk["members"]:
        assert m["checkpoint"] == cands.loc[m["candidate"], "checkpoint"]
    for name in PLOTS:
        assert (out_dir / name).stat().st_size > 1000
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".ensemble-")]  # scratch removed


def test_offline_wandb_run_holds_config_metrics_table_and_plots(ensembled, run_dir):
    result, out_dir = ensembled["result"], ensembled["out_dir"]
    runs = sorted((out_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = wandb_records(next(runs[0].glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    run_rec = records[kinds.index("run")].run
    assert run_rec.run_group == run_dir.name and run_rec.job_type == "ensemble"
    assert run_rec.project == "dfsearch"

    config = {i.key: json.loads(i.value_json) for i in run_rec.config.update}
    for r in records:
        if r.WhichOneof("record_type") == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    assert config["top_k"] == 4 and config["metric"] == "accuracy" and config["rounds"] == 50
    assert config["source"] == str(run_dir.resolve()) and config["nbest"] is None

    logged = {}  # history, keyed by the key path: ("test/ensemble/accuracy",), ("roc", "_type")
    for r in records:
        if r.WhichOneof("record_type") == "history":
            logged.update({tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in r.history.item})
    for who in ("ensemble", "best_single", "naive_top_k"):
        for split in ("val", "test"):
            for k in ("accuracy", "roc_auc", "log_loss"):
                assert logged[(f"{split}/{who}/{k}",)] == pytest.approx(result[who][split][k])
    assert logged[("best_round",)] == result["best_round"]
    assert logged[("selection/round",)] == 50 and kinds.count("history") >= 50  # one step per round
    assert logged[("members", "_type")] == "table-file" and logged[("members", "nrows")] == len(result["members"])
    assert {logged[(k, "_type")] for k in ("roc", "confusion", "trajectory")} == {"image-file"}
    assert len(list((runs[0] / "files" / "media" / "images").glob("*.png"))) == 3


def _test_frame(run_dir) -> pd.DataFrame:
    p = store.read_predictions(run_dir)
    return p[p.split == "test"].pivot(index="sample_id", columns="candidate", values="prob_fake")


def _sample_images(frame, n=6):
    """n fake and n real test sample_ids."""
    ids = sorted(frame.index)
    return [s for s in ids if "/fake/" in s][:n] + [s for s in ids if "/real/" in s][:n]


def test_predict_reproduces_the_weighted_stored_predictions(ensembled, run_dir, easy_data, tmp_path):
    frame = _test_frame(run_dir)
    ids = _sample_images(frame)
    paths = [easy_data / s for s in ids]
    # 1. the ensemble the command selected
    members, cal = ensembled["result"]["members"], ensembled["result"]["calibration"]
    raw = sum(m["weight"] * calibrate(frame.loc[ids, m["candidate"]].to_numpy(np.float64), **m["calibration"])
              for m in members)  # each member through its own Platt map (fitted on val), then averaged
    want = calibrate(raw, cal["slope"], cal["intercept"])  # the Platt map and threshold fitted on val
    assert abs(cal["slope"] - 1) + abs(cal["intercept"]) > 1e-3  # so that calibrating is seen to be applied
    preds, errors = predict_paths(ensembled["out_dir"] / "ensemble.json", paths, batch_size=5)
    assert errors == []
    assert [p["path"] for p in preds] == [str(p) for p in paths]
    np.testing.assert_allclose([p["prob_fake"] for p in preds], want, rtol=0, atol=1e-5)
    assert [p["label"] for p in preds] == ["fake" if w >= cal["threshold"] else "real" for w in want]
    # 2. both candidates with unequal (unnormalised) weights: 1 and 3 -> 0.25 and 0.75
    cands = store.read_candidates(run_dir)
    seen = [ckpt_io.read_config(c)["train"] for c in cands.checkpoint]
    assert [(t["input_policy"], t["img_size"], t["eval_view"]) for t in seen] == [
        ("crop", 32, "center"), ("crop", 24, "tiles")]  # the concrete policy, as the worker resolved it
    doc = {"members": [{"candidate": c, "checkpoint": k, "weight": w}  # no calibration: an older file
                       for c, k, w in zip(cands.candidate, cands.checkpoint, (1.0, 3.0))]}
    (tmp_path / "two.json").write_text(json.dumps(doc))
    want = 0.25 * frame.loc[ids, "cand-0"].to_numpy(np.float64) + 0.75 * frame.loc[ids, "cand-1"].to_numpy(np.float64)
    preds, errors = predict_paths(tmp_path / "two.json", paths)
    np.testing.assert_allclose([p["prob_fake"] for p in preds], want, rtol=0, atol=1e-5)  # raw, at 0.5
    assert [p["label"] for p in preds] == ["fake" if w >= 0.5 else "real" for w in want]
    rc, out, err = _predict_cli(["--ensemble", tmp_path / "two.json", *paths[:1], "--json"])
    assert rc == 0 and json.loads(out)["calibration"] == {"calibrated": False, "slope": 1.0, "intercept": 0.0,
                                                       "threshold": 0.5}
    assert "has no calibration" in err and "re-run ensemble.py" in err
    doc["calibration"] = {"slope": 1.0, "intercept": 0.0}  # no threshold
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(DfsearchError, match="field calibration needs numbers slope, intercept and threshold"):
        predict_paths(tmp_path / "bad.json", paths[:1])


def _predict_cli(argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_predict_parser(parser.add_subparsers())
    args = parser.parse_args(["predict", *map(str, argv)])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = args.func(args)
    return rc, out.getvalue(), err.getvalue()


def test_unreadable_image_is_reported_and_the_rest_predicted(ensembled, run_dir, easy_data, tmp_path):
    ids = _sample_images(_test_frame(run_dir), n=2)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(easy_data / ids[0], folder / "a.jpg")
    shutil.copy(easy_data / ids[1], folder / "sub" / "B.JPG")  # any case, recursive
    shutil.copy(easy_data / ids[2], folder / "c.jpeg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("ignored")
    ens = ensembled["out_dir"] / "ensemble.json"

    preds, errors = predict_paths(ens, [folder, easy_data / ids[3]])
    assert [Path(p["path"]).name for p in preds] == ["a.jpg", "c.jpeg", "B.JPG", Path(ids[3]).name]
    assert errors == [{"path": str(folder / "broken.png"), "reason": "not an image (unrecognised format)"}]

    rc, out, err = _predict_cli(["--ensemble", ens, folder, "--json"])
    doc = json.loads(out)
    assert rc == 0 and len(doc["predictions"]) == 3 and doc["errors"][0]["path"].endswith("broken.png")
    assert [m["candidate"] for m in doc["members"]] == [m["candidate"] for m in ensembled["result"]["members"]]
    assert doc["calibration"]["calibrated"] and "has no calibration" not in err
    assert "4 images:" in err and "1 unreadable" in err

    rc, out, err = _predict_cli(["--ensemble", ens, folder, "--csv", tmp_path / "p.csv"])
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns) == ["path", "prob_fake", "label"] and len(table) == 3
    assert "broken.png" in err and "1 unreadable" in out.splitlines()[-1]


def test_bad_top_k_and_empty_predictions_folder(run_dir, tmp_path):
    rc, out, err = _main(["--run", run_dir, "--top-k", 0])
    assert rc == 2 and out == "" and err.startswith("ensemble: error: --top-k 0: must be >= 1")
    rc, out, err = _main(["--predictions", tmp_path, "--wandb-mode", "disabled"])
    assert rc == 2 and "no predictions*.parquet" in err and str(tmp_path) in err


def _copy_store(run_dir, dst: Path) -> dict:
    """A copy of the store whose checkpoints are copies too, plus an always-wrong candidate whose
    checkpoint does not exist (it is never selected, so it must not matter). {candidate: ckpt}."""
    preds = store.read_predictions(run_dir)
    wrong = preds[preds.candidate == "cand-0"].assign(candidate="always-wrong")
    wrong["prob_fake"] = (1 - wrong["label"]).astype("float32")
    store.write_predictions(pd.concat([preds, wrong], ignore_index=True), dst)
    cands = store.read_candidates(run_dir)
    ckpts = {}
    for i, row in cands.iterrows():
        ckpts[row.candidate] = dst / "ckpt" / row.candidate
        shutil.copytree(row.checkpoint, ckpts[row.candidate])
        cands.loc[i, "checkpoint"] = str(ckpts[row.candidate])
    extra = cands.iloc[[0]].assign(candidate="always-wrong", checkpoint=str(dst / "no-such-checkpoint"))
    store.write_candidates(pd.concat([cands, extra], ignore_index=True), dst)
    return ckpts


@pytest.mark.parametrize("damage", ["folder deleted", "weights deleted", "weights corrupted"])
def test_broken_member_checkpoint_is_a_clear_error(run_dir, tmp_path, damage):
    ckpts = _copy_store(run_dir, tmp_path / "store")
    if damage == "folder deleted":  # the good copy works first: non-members are not checked
        rc, out, err = _main(["--run", tmp_path / "store", "--wandb-mode", "disabled"])
        assert rc == 0, err
        assert "always-wrong" not in {m["candidate"] for m in
                                      json.loads((tmp_path / "store/ensemble/ensemble.json").read_text())["members"]}
        shutil.rmtree(tmp_path / "store/ensemble")
    for folder in ckpts.values():  # damage every real candidate: whichever is selected, it fails
        if damage == "folder deleted":
            shutil.rmtree(folder)
        elif damage == "weights deleted":
            (folder / ckpt_io.WEIGHTS).unlink()
        else:
            (folder / ckpt_io.WEIGHTS).write_bytes((folder / ckpt_io.WEIGHTS).read_bytes()[:200])
    rc, out, err = _main(["--run", tmp_path / "store", "--wandb-mode", "disabled"])
    assert rc == 2 and out == ""
    named = [c for c in ckpts if f"member {c!r}" in err]
    assert len(named) == 1 and str(ckpts[named[0]]) in err, err
    expect = {"folder deleted": "does not exist", "weights deleted": "missing model.safetensors",
              "weights corrupted": "corrupted or unreadable weights"}[damage]
    assert expect in err
    assert not (tmp_path / "store/ensemble/ensemble.json").exists()  # nothing half-written


def test_default_run_is_the_latest_under_runs(run_dir, tmp_path, monkeypatch):
    for name, age in (("old", 100), ("new", 0)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        shutil.copy(run_dir / store.PREDICTIONS_FILE, tmp_path / "runs" / name)
        os.utime(tmp_path / "runs" / name / store.PREDICTIONS_FILE, (1e9 - age, 1e9 - age))
    (tmp_path / "runs" / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    assert latest_run().name == "new"
    rc, out, err = _main(["--wandb-mode", "disabled", "--rounds", 5])
    assert rc == 0, err
    assert "using the latest run" in err and str(tmp_path / "runs" / "new") in err
    assert "next: dfsearch predict" not in out and "no checkpoint" in out  # no candidates.parquet there
    assert (tmp_path / "runs/new/ensemble/ensemble.json").exists()
    monkeypatch.chdir(tmp_path / "runs" / "empty")
    rc, out, err = _main([])
    assert rc == 2 and "no run found" in err


def test_wandb_goes_online_only_with_credentials_and_a_server_that_answers(tmp_path, monkeypatch, capsys):
    import socket
    import time

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    server = socket.socket()  # stands for a W&B server: it accepts connections
    server.bind(("127.0.0.1", 0))
    server.listen()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(tracking, "_said_offline", False)
    assert tracking.resolve_mode(None, dir=tmp_path / "out") == "offline"
    assert tracking.resolve_mode("online") == "offline"  # no credentials: never online
    err = capsys.readouterr().err
    assert err.count("no credentials found") == 1 and str(tmp_path / "out" / "wandb") in err
    assert tracking.resolve_mode("disabled") == "disabled"
    (tmp_path / ".netrc").write_text("machine 127.0.0.1\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert tracking.resolve_mode(None) == "online"
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert tracking.resolve_mode(None) == "online"
    assert tracking.resolve_mode("offline") == "offline"
    server.close()
    # credentials, but nothing listens: offline at once, said once with the `wandb sync` to run later
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking, "_said_offline", False)
    t0 = time.time()
    assert tracking.resolve_mode("online", dir=tmp_path / "run") == "offline"
    assert tracking.resolve_mode("online", dir=tmp_path / "run") == "offline"
    assert time.time() - t0 < 2 * tracking.PROBE_TIMEOUT_S
    err = capsys.readouterr().err
    assert err.count("the server cannot be reached") == 1 and f"wandb sync {tmp_path / 'run' / 'wandb'}" in err
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")  # a direct probe says nothing behind a proxy
    assert tracking.server_error() is None and tracking.resolve_mode("online") == "online"
    monkeypatch.delenv("HTTPS_PROXY")
    # a server that goes away after the probe: that run is kept offline, nothing lost, nothing raised
    monkeypatch.setattr(tracking, "INIT_TIMEOUT_S", 1.0)
    run = tracking.start_run("online", "dfsearch", "g", "ensemble", "n", {"a": 1}, tmp_path / "w")
    assert run is not None and run.settings.mode == "offline" and "keeping it offline" in capsys.readouterr().err
    tracking.log(run, {"a": 1})
    tracking.finish(run)
    assert list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    for fn, args in ((tracking.log, ({"a": 1},)), (tracking.log_table, ("t", pd.DataFrame())),
                     (tracking.log_images, ({"x": "x.png"},)), (tracking.finish, ())):
        fn(None, *args)


def _export_cli(argv) -> tuple[int, str, str]:
    from dfsearch.cli import main as dfsearch_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = dfsearch_main(["export", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_graph_gives_predict_s_calibrated_probabilities(ensembled, run_dir, easy_data, tmp_path, fmt):
    """One file, uint8 images in, the calibrated ensemble P(fake) out: run as a deployment would
    (ONNX Runtime on CPU; torch.jit.load), it gives what ``dfsearch predict`` gives on the same
    files, members with a centre crop and with a 2 x 2 grid of crops alike."""
    from PIL import Image

    paths = [easy_data / s for s in _sample_images(_test_frame(run_dir))]
    other = tmp_path / "other_size.png"  # not the graph's input size: skipped by --check, and said
    Image.new("RGB", (40, 40)).save(other)
    out = tmp_path / fmt
    rc, stdout, err = _export_cli(["--ensemble", ensembled["out_dir"] / "ensemble.json", "--format", fmt,
                                   "--out", out, "--check", *paths, other, "--json"])
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["input"]["shape"] == ["N", 3, 32, 32] and summary["check"]["images"] == len(paths)
    assert summary["check"]["max_abs_diff"] <= 1e-4
    assert [s["path"] for s in summary["check"]["skipped"]] == [str(other)]

    preds, _ = predict_paths(ensembled["out_dir"] / "ensemble.json", paths)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths])
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(summary["path"], providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images})[0]
    else:
        import torch

        with torch.no_grad():
            got = torch.jit.load(summary["path"])(torch.from_numpy(images)).numpy()
    want = np.array([p["prob_fake"] for p in preds])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    threshold = json.loads((out / "model.json").read_text())["threshold"]
    assert ["fake" if g >= threshold else "real" for g in got] == [p["label"] for p in preds]
    card = (out / "MODEL_CARD.md").read_text()
    for m in ensembled["result"]["members"]:
        assert m["candidate"] in card
    assert f"{threshold:.4f}" in card and "## Known limits" in card and "Checked against `dfsearch predict`" in card


def test_export_refuses_an_input_smaller_than_a_member_s_crop_and_a_missing_check_image(ensembled, tmp_path):
    ens = ensembled["out_dir"] / "ensemble.json"
    rc, _, err = _export_cli(["--ensemble", ens, "--format", "onnx", "--out", tmp_path / "a", "--size", 16])
    assert rc == 2 and "--size 16" in err and not (tmp_path / "a").exists()
    assert re.search(r"member '[^']+' crops (24|32) px; use --size >= (24|32)", err), err
    rc, _, err = _export_cli(["--ensemble", ens, "--format", "onnx", "--out", tmp_path / "b", "--check",
                              tmp_path / "nope.jpg"])
    assert rc == 2 and "nope.jpg" in err and "no such file" in err and not (tmp_path / "b").exists()


@pytest.fixture
def half_untraceable(tmp_path, monkeypatch):
    """An ensemble.json of two random-weight members at 32 px: ``good`` (small_cnn) and ``bad``
    (capsnet), whose forward, in this process, branches in Python on a tensor's value.

    Why patched: none of dfsearch's architectures fails to export (small_cnn, capsnet, alexnet,
    resnet18, mobilenetv2, efficientnet_b0, xception, densenet121, inception_v3, vit_tiny and
    swin_tiny were tried, onnx and torchscript, in torch 2.14), so the failing member is built from
    a registered arch with the kind of code torch.export rejects (a guard on a data-dependent
    value); in eager mode the patched forward computes what the original does (the clamp never
    binds), so predict runs it as before. The members' own Platt maps pull them apart (good -> high,
    bad -> low), so that the ensemble without ``bad`` gives clearly different probabilities.
    """
    import torch
    from PIL import Image

    from dfsearch import models
    from dfsearch.models.capsnet import CapsNet

    members = []
    for name, arch, intercept in (("good", "small_cnn", 1.5), ("bad", "capsnet", -1.5)):
        torch.manual_seed(len(members))
        folder = tmp_path / "run" / name / "checkpoint_000001"
        cfg = TrainConfig(arch=arch, img_size=32, input_policy="crop")
        ckpt_io.save(folder, models.create(arch, img_size=32).eval(),
                     {"train": cfg.model_dump(), "data": models.data_config(arch, 32)}, {})
        members.append({"candidate": name, "weight": 0.5, "checkpoint": str(folder),
                        "calibration": {"slope": 1.0, "intercept": intercept}})
    ens = tmp_path / "ensemble.json"
    ens.write_text(json.dumps({"members": members, "calibration": {"slope": 1.3, "intercept": 0.2, "threshold": 0.5}}))

    original = CapsNet.forward

    def forward_with_a_data_dependent_branch(self, x):
        out = original(self, x)
        if out.abs().max() > 1e4:  # Python control flow on a tensor's value: torch.export cannot trace it
            out = out.clamp(-1e4, 1e4)
        return out

    monkeypatch.setattr(CapsNet, "forward", forward_with_a_data_dependent_branch)
    rng = np.random.default_rng(0)
    images = []
    for i in range(4):
        images.append(tmp_path / "check" / f"{i}.png")
        images[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images[-1])
    return dict(ensemble=ens, images=images)


def test_export_names_the_member_it_cannot_trace_and_writes_nothing(half_untraceable, tmp_path):
    out = tmp_path / "out"
    rc, stdout, err = _export_cli(["--ensemble", half_untraceable["ensemble"], "--format", "onnx", "--out", out])
    assert rc == 2 and stdout == "", err
    message = err.split("dfsearch export: error: ", 1)[1]
    assert message.startswith("1 of the 2 members cannot be exported as onnx:"), message
    assert "member 'bad' (capsnet): GuardOnDataDependentSymNode" in message and "'good'" not in message
    assert "(at test_ensemble_cli.py:" in message  # torch's culprit: the line with the branch
    assert "--skip-untraceable exports the other 1 without it" in message and "--format torchscript" in message
    assert "Traceback" not in err and "def forward(" not in err and not out.exists()
    assert not list(tmp_path.glob(".dfsearch-export-*"))  # the staging folder is gone too


def test_export_skipping_the_untraceable_member_says_so_and_checks_the_reduced_ensemble(half_untraceable, tmp_path):
    ens, images = half_untraceable["ensemble"], half_untraceable["images"]
    out = tmp_path / "out"
    rc, stdout, err = _export_cli(["--ensemble", ens, "--format", "onnx", "--out", out, "--skip-untraceable",
                                   "--check", *images, "--json"])
    assert rc == 0, err
    summary = json.loads(stdout)
    assert [m["candidate"] for m in summary["members"]] == ["good"] and summary["members"][0]["weight"] == 1.0
    assert [(d["candidate"], d["arch"]) for d in summary["dropped"]] == [("bad", "capsnet")]
    assert "differs from the full ensemble's" in summary["note"]
    assert summary["check"]["images"] == len(images) and summary["check"]["max_abs_diff"] <= 1e-4
    on_disk = json.loads((out / "model.json").read_text())
    assert on_disk["dropped"] == summary["dropped"] and on_disk["note"] == summary["note"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "1 of a 2-member ensemble" in card and "## Dropped members" in card and "| bad | capsnet | 0.500 |" in card
    assert "differs from the full ensemble's" in card

    # not vacuous: the graph is the ensemble without 'bad', whose P(fake) the full one does not give
    import onnxruntime as ort
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in images])
    got = ort.InferenceSession(summary["path"], providers=["CPUExecutionProvider"]).run(None, {"images": pixels})[0]
    full, _ = predict_paths(ens, images)
    assert np.min(np.abs(got - np.array([p["prob_fake"] for p in full]))) > 0.05

    # the summary line says it too; and where nothing fails (torchscript traces the branch), the
    # flag changes nothing
    rc, stdout, err = _export_cli(["--ensemble", ens, "--format", "onnx", "--out", tmp_path / "o2",
                                   "--skip-untraceable"])
    said = "--skip-untraceable: exported without 1 of the ensemble's 2 members (bad (capsnet)), which cannot be exported"
    assert rc == 0 and f"{said} as onnx" in stdout and "differs from the full ensemble's" in stdout
    rc, stdout, err = _export_cli(["--ensemble", ens, "--format", "torchscript", "--out", tmp_path / "ts",
                                   "--skip-untraceable", "--json"])
    assert rc == 0, err
    summary = json.loads(stdout)
    assert "dropped" not in summary and [m["candidate"] for m in summary["members"]] == ["good", "bad"]

