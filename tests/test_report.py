"""``dfsearch report``: one self-contained HTML page per run, checked by parsing it.

The run folder is built without Ray from the pieces a search leaves, each made by the code that
makes it in a search: the dataset (``synth.generate``), ``search.json`` (``SearchSpec``), the
trials table (``results._row``, the row a search writes), Tune's per-epoch ``result.json``, an
Optuna study under the run's name, the prediction store (``store``), the ensemble
(``run_ensemble``) and the command log (``commands.record``). Only the trials' numbers are made up.
"""

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image

from dfsearch import commands, store
from dfsearch.cli import main
from dfsearch.config import TrainConfig
from dfsearch.data.discover import discover, fake_source
from dfsearch.data.synth import generate
from dfsearch.search.results import TRIALS_FILE, _row
from dfsearch.search.spec import SearchSpec

REPO = Path(__file__).resolve().parent.parent
NAME = "search-report"
# (trial id, arch, epochs run, how it ended, how well it separates the classes)
TRIALS = [("a1", "small_cnn", 3, "completed", 1.6), ("b2", "resnet18", 1, "pruned", 0.0),
          ("c3", "small_cnn", 3, "completed", 1.2), ("d4", "vit_tiny_patch16_224", 2, "pruned", 0.9),
          ("e5", "small_cnn", 3, "completed", 1.0)]
SEARCH_CMD = ["python", "run_search.py", "--space", "demo", "--name", NAME, "--seed", "0"]
pytestmark = pytest.mark.xdist_group("report")  # one test process: the module's run folder is built once


class Page(HTMLParser):
    """What the tests read off the page: element ids (and their tags), each table's rows by table
    id, every <img> src, every URL-valued attribute, tag names, and the text under each section."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.tables, self.imgs, self.urls, self.tags = {}, {}, [], [], set()
        self.text: dict[str, str] = {}
        self._section, self._table, self._row, self._cell = None, None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids[a["id"]] = tag
        if tag == "section":
            self._section = a.get("id")
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id") or f"table{len(self.tables)}", [])
        if tag == "tr" and self._table is not None:
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._cell = ""
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        self.urls += [v for k, v in a.items() if k in ("src", "href", "data", "action") and v]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._section:
            self.text[self._section] = self.text.get(self._section, "") + data

    def records(self, table_id: str) -> list[dict]:
        head, *rows = self.tables[table_id]
        return [dict(zip(head, r)) for r in rows]


def _history(tid: str, epochs: int, strength: float) -> list[dict]:
    """Tune's per-epoch results of one trial (the keys the trials table and the report read)."""
    s = strength
    return [{"trial_id": tid, "epoch": e, "train_loss": 0.7 - 0.02 * e * s, "train_acc": 0.5 + 0.03 * e * s,
             "val_loss": 0.69 - 0.03 * e * s, "val_acc": 0.5 + 0.04 * e * s, "val_auc": 0.5 + 0.05 * e * s,
             "timestamp": 1_800_000_000 + 100 * ord(tid[0]) + 10 * e, "time_this_iter_s": 10.0, "train_time_s": 8.0,
             "worker_nodes": "n1", "time_total_s": 10.0 * e} for e in range(1, epochs + 1)]


def _probs(rng, labels, strength):
    return 1 / (1 + np.exp(-(strength * (2 * labels - 1) + rng.normal(0, 1, len(labels)))))


def _study(run: Path):
    """An Optuna study like the searcher's: named after the run, per-architecture parameters,
    ASHA-stopped trials PRUNED with their intermediate values, the others COMPLETE."""
    study = optuna.create_study(study_name=NAME, storage=f"sqlite:///{run / 'optuna.db'}", direction="maximize")
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)}
    for k, (tid, arch, epochs, status, strength) in enumerate(TRIALS):
        params = {"arch": arch, f"{arch}/lr": 10 ** (-4 + k * 0.6), f"{arch}/weight_decay": 10 ** (-6 + k)}
        distributions = {"arch": optuna.distributions.CategoricalDistribution(sorted({t[1] for t in TRIALS})),
                         **{f"{arch}/{n}": d for n, d in dists.items()}}
        h = _history(tid, epochs, strength)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions,
            state=optuna.trial.TrialState.COMPLETE if status == "completed" else optuna.trial.TrialState.PRUNED,
            value=h[-1]["val_acc"] if status == "completed" else None,
            intermediate_values={r["epoch"]: r["val_acc"] for r in h}))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synth", n=60, size=32, seed=0, difficulty=0.3,
                    families=("upsample", "blend", "spectral"), progress=False)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> Path:
    from dfsearch.ensemble import run_ensemble

    run = tmp_path_factory.mktemp("runs") / NAME
    (run / "train").mkdir(parents=True)
    SearchSpec(space="demo", data=str(dataset), name=NAME, profile="cpu", num_samples=len(TRIALS), max_epochs=3,
               workers_per_trial=2, grace_period=1).save(run)
    index = discover(dataset)
    rng = np.random.default_rng(0)
    rows, frames, cands = [], [], []
    for k, (tid, arch, epochs, status, strength) in enumerate(TRIALS):
        h = _history(tid, epochs, strength)
        cfg = TrainConfig(arch=arch, epochs=3, lr=10 ** (-4 + k * 0.6), weight_decay=10 ** (-6 + k),
                          batch_size=[16, 32][k % 2])
        best = {**h[-1], "test_acc": h[-1]["val_acc"] - 0.01}
        rows.append(_row(tid, cfg, status, "" if status == "completed" else
                         f"stopped early after {epochs} epoch(s) (ASHA, or the epoch budget)", epochs, best, h[-1],
                         pd.DataFrame(h), f"{run}/train/{tid}/checkpoint_e{epochs:04d}"))
        folder = run / f"trial_fn_{tid}_{k + 1}_arch={arch}"
        folder.mkdir()
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in h))
        for split, key in (("val", "valid"), ("test", "test")):
            ids = [s for s, _ in index.splits[key]]
            y = np.array([lab for _, lab in index.splits[key]])
            frames.append(store.predictions_frame(tid, split, ids, y, _probs(rng, y, strength)))
        cands.append(store.candidate_row(tid, tid, arch, cfg.model_dump(), best, f"train/{tid}/checkpoint_e0001"))
    pd.DataFrame(rows).to_parquet(run / TRIALS_FILE)
    store.write_predictions(pd.concat(frames, ignore_index=True), run)
    store.write_candidates(cands, run)
    _study(run)
    run_ensemble(run, top_k=3, n_boot=100, cost=False, out_dir=run / "ensemble")
    commands.record(run, SEARCH_CMD)
    commands.record(run, ["python", "ensemble.py", "--run", str(run), "--top-k", "3"])
    return run


@pytest.fixture(scope="module")
def rendered(run):
    """``dfsearch report RUN --json``: (its JSON, the page parsed, the page's text)."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        rc = main(["report", str(run), "--json"])
    assert rc == 0
    doc = json.loads(out.getvalue())
    text = Path(doc["path"]).read_text()
    return doc, Page(text), text


def test_report_is_written_in_the_run_and_has_the_four_sections(run, rendered):
    doc, page, text = rendered
    assert Path(doc["path"]) == run / "report.html" and doc["bytes"] == (run / "report.html").stat().st_size
    assert list(doc["sections"]) == ["data", "search", "ensemble", "commands"]
    assert all(s == {"status": "complete", "missing": []} for s in doc["sections"].values()), doc["sections"]
    for sid in doc["sections"]:
        assert page.ids.get(sid) == "section" and len(page.text[sid]) > 200, sid
    assert 100_000 < doc["bytes"] < 3_000_000


def test_the_page_is_self_contained_and_every_image_is_a_png(rendered):
    _, page, text = rendered
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in page.urls), \
        [u[:60] for u in page.urls if not u.startswith(("data:", "#"))]
    assert "http://" not in text and "https://" not in text and "file:" not in text
    # sample grid, pixel histograms, timeline, curves, Optuna history + importances, parallel
    # coordinates, ROC, confusion, PR, reliability, selection trajectory
    assert len(page.imgs) == 12
    for src in page.imgs:
        im = Image.open(io.BytesIO(base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)))
        assert im.format == "PNG" and min(im.size) >= 50
        im.verify()


def test_data_section_counts_every_split_class_and_family(dataset, rendered):
    _, page, _ = rendered
    index = discover(dataset)
    counts = {r["split"]: r for r in page.records("split-counts")}
    for split, c in index.counts().items():
        assert (int(counts[split]["real"]), int(counts[split]["fake"])) == (c["real"], c["fake"])
    fams = page.records("family-counts")
    train_fakes = [fake_source(s) for s, lab in index.splits["train"] if lab]
    assert {r["family"]: int(r["train"]) for r in fams} == {f: train_fakes.count(f) for f in set(train_fakes)}
    total = sum(c["real"] + c["fake"] for c in index.counts().values())
    assert page.records("image-sizes") == [{"width": "32", "height": "32", "images": str(total)}]
    assert "real" in page.text["data"] and "fake/blend" in page.text["data"]  # the sample grid's and histograms' groups


def test_search_section_ranks_every_trial_and_shows_what_asha_stopped(run, rendered):
    _, page, _ = rendered
    trials = pd.read_parquet(run / TRIALS_FILE)
    board = page.records("leaderboard")
    assert sorted(r["trial_id"] for r in board) == sorted(trials.trial_id)
    assert [r["rank"] for r in board] == [str(i) for i in range(1, len(trials) + 1)]
    done = trials.sort_values("val_acc", ascending=False)
    assert [r["trial_id"] for r in board] == list(done.trial_id)
    asha = page.records("asha")
    pruned = trials[trials.status == "pruned"]
    assert {r["trial_id"]: int(r["stopped after epoch"]) for r in asha} == dict(zip(pruned.trial_id, pruned.epochs))
    assert "Optuna" in page.text["search"] and "no optuna" not in page.text["search"].lower()


def test_ensemble_section_shows_members_weights_intervals_and_families(run, rendered):
    _, page, _ = rendered
    doc = json.loads((run / "ensemble" / "ensemble.json").read_text())
    members = page.records("members")
    assert [(r["candidate"], float(r["weight"])) for r in members] == \
        [(m["candidate"], pytest.approx(m["weight"], abs=1e-4)) for m in doc["members"]]
    comp = {r["entry"]: r for r in page.records("comparison")}
    ens = doc["comparison"]["rows"]["ensemble"]
    lo, hi = ens["ci"]["accuracy"]
    assert comp["ensemble"]["accuracy [95 % CI]"] == f"{ens['test']['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
    assert comp["best single"]["models"] == doc["best_single"]["candidate"]
    fams = page.records("families")
    want = {(f, e): v for f, by in doc["comparison"]["per_source"].items() for e, v in by.items()}
    names = {"ensemble": "ensemble", "best_single": "best single", "naive_top_k": "naive top-k average"}
    assert {(r["family"], r["entry"]) for r in fams} == {(f, names[e]) for f, e in want}
    for r in fams:
        v = want[(r["family"], next(k for k, n in names.items() if n == r["entry"]))]
        acc, ci = r["accuracy [95 % CI]"].split(" ", 1)
        lo, hi = map(float, ci.strip("[]").split(", "))
        assert float(acc) == pytest.approx(v["accuracy"], abs=5e-4) and lo <= v["accuracy"] <= hi
        assert int(r["fakes"]) == v["n_fake"]
        lo, hi = v["roc_auc_ci"]  # the ensemble command's bootstrap, as recorded
        assert r["ROC-AUC [95 % CI]"] == f"{v['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]"
    gain = doc["comparison"]["gain"]["accuracy"]
    assert f"accuracy {gain['diff']:+.3f} [{gain['ci'][0]:+.3f}, {gain['ci'][1]:+.3f}]" in page.text["ensemble"]


def test_commands_section_shows_the_recorded_commands(run, rendered):
    _, page, _ = rendered
    recorded = [r["command"] for r in page.records("recorded-commands")]
    assert recorded == [c["command"] for c in commands.read(run)] and recorded[0] == " ".join(SEARCH_CMD)
    assert f"dfsearch report {run}" in page.text["commands"]


def test_a_run_without_ensemble_commands_or_dataset_still_renders_and_says_what_is_missing(run, tmp_path):
    from dfsearch.report import build

    bare = tmp_path / NAME
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("ensemble", "commands.jsonl", "report.html"))
    spec = json.loads((bare / "search.json").read_text())
    (bare / "search.json").write_text(json.dumps({**spec, "data": str(tmp_path / "moved-away")}))
    report = build(bare)
    page = Page(report.html)
    status = {s.id: s.missing for s in report.sections}
    assert status == {"data": ["dataset folder"], "search": [], "ensemble": ["ensemble"],
                      "commands": ["recorded commands"]}
    assert f"python ensemble.py --run {bare}" in page.text["ensemble"]
    assert str(tmp_path / "moved-away") in page.text["data"] and "not on this machine" in page.text["data"]
    assert sorted(r["trial_id"] for r in page.records("leaderboard")) == sorted(t[0] for t in TRIALS)
    assert "run_search.py --out" in page.text["commands"] and "--space demo" in page.text["commands"]


def test_a_search_that_has_not_written_its_trials_table_yet_shows_its_curves_and_study(run, tmp_path):
    from dfsearch.report import build

    running = tmp_path / NAME
    shutil.copytree(run, running, ignore=shutil.ignore_patterns(TRIALS_FILE, "ensemble", "report.html"))
    report = build(running)
    page = Page(report.html)
    assert {s.id: s.missing for s in report.sections}["search"] == [TRIALS_FILE]
    assert f"No {TRIALS_FILE} yet" in page.text["search"] and "--resume" in page.text["search"]
    assert "leaderboard" not in page.tables and "asha" not in page.tables
    assert {"per-trial curves", "optuna history", "parameter importances"} <= {
        alt for alt in re.findall(r'<img alt="([^"]+)"', report.html)}


def test_a_train_run_renders_with_the_search_section_reduced(run, tmp_path):
    from dfsearch.report import build

    train = tmp_path / "train-run"
    train.mkdir()
    for f in (store.PREDICTIONS_FILE, store.CANDIDATES_FILE):
        shutil.copy(run / f, train / f)
    ckpt = train / "train-small_cnn" / "checkpoint_000002"  # Ray Train's folder: the dataset is in its config.json
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps({"data_root": json.loads((run / "search.json").read_text())["data"]}))
    report = build(train)
    page = Page(report.html)
    status = {s.id: s.missing for s in report.sections}
    assert status == {"data": [], "search": ["search (a dfsearch train run)"], "ensemble": ["ensemble"],
                      "commands": ["recorded commands"]}
    assert "train-small_cnn/checkpoint_000002/config.json" in page.text["data"]
    assert "dfsearch train" in page.text["search"]
    assert sorted(r["candidate"] for r in page.records("leaderboard")) == sorted(t[0] for t in TRIALS)


def test_a_folder_that_is_not_a_run_is_refused_fast_naming_it_and_what_is_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    probe = ("import sys; from dfsearch.cli import main; rc = main(['report', sys.argv[1]]); "
             "print('heavy:', sorted(m for m in ('torch', 'matplotlib', 'optuna', 'ray') if m in sys.modules)); "
             "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 2, r.stderr
    assert r.stdout.strip() == "heavy: []"
    err = r.stderr.strip()
    assert err.startswith(f"dfsearch report: error: {tmp_path} is not a run folder")
    assert "search.json" in err and "run_search.py" in err and "dfsearch train" in err
    r = subprocess.run([sys.executable, "-m", "dfsearch.cli", "report", str(tmp_path / "nope")], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and f"{tmp_path / 'nope'}: no such folder" in r.stderr


def test_a_run_at_a_uri_is_fetched_without_its_checkpoints_and_reported(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFSEARCH_CACHE", str(tmp_path / "cache"))
    (run / "train" / "a1").mkdir(exist_ok=True)
    (run / "train" / "a1" / "weights.bin").write_bytes(b"\0" * 1000)  # what the page does not need
    out = tmp_path / "page.html"
    assert main(["report", f"file://{run}", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == str(out) and all(s["status"] == "complete" for s in doc["sections"].values())
    staged = next((tmp_path / "cache" / "runs").glob(f"*/{NAME}"))
    assert (staged / TRIALS_FILE).is_file() and not (staged / "train").exists()
    assert sorted(r["trial_id"] for r in Page(out.read_text()).records("leaderboard")) == sorted(t[0] for t in TRIALS)


def test_out_must_be_a_file_and_the_run_folder_is_left_alone(run, tmp_path, capsys):
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["report", str(run), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert "wrote " + str(tmp_path / "r.html") in capsys.readouterr().out
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing recorded, nothing written there
