"""``dfsearch serve``: the numbers the page shows are ``dfsearch predict``'s, read from a real page.

The plain functions (``serve.classify``, ``serve.explain``, ``serve.app``'s HTML) are tested in
process; then the command itself: a port in use is refused before anything loads, and a server on a
free port is driven by headless Debian Chromium through its own ChromeDriver (selenium, both paths
given: nothing is downloaded; ``tests/browser/install-chromium.sh`` installs them).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfsearch import models
from dfsearch.cli import main

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# measured here: without the background-networking flags Chromium's own connections to Google are
# refused by a closed network and slow the page down
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1400")
DFSEARCH = [sys.executable, "-m", "dfsearch.cli"]


def _checkpoint(folder: Path, seed: int, img_size: int, **train) -> None:
    from dfsearch import checkpoint as ckpt_io
    from dfsearch.config import TrainConfig

    cfg = TrainConfig(arch="small_cnn", img_size=img_size, input_policy="crop", **train)
    torch.manual_seed(seed)
    model = models.create("small_cnn", img_size=img_size, input_filter=train.get("input_filter", "none")).eval()
    ckpt_io.save(folder, model, {"train": cfg.model_dump(), "data": models.data_config("small_cnn", img_size)},
                 {"metrics": {}})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A run folder as a search and ``ensemble.py`` leave one (``search.json``,
    ``ensemble/ensemble.json`` with checkpoints relative to the run), two random-weight small_cnn
    members (a 24 px centre crop through the srm filter, weight 2; 2 x 2 tiles of 16 px, weight 1),
    each with its own Platt map, the blend calibrated; and images: readable ones of 40 x 48 px, a
    truncated JPEG (its header parses, its pixels do not), garbage bytes named .jpg, an empty file."""
    root = tmp_path_factory.mktemp("serve") / "run"
    _checkpoint(root / "train/t0/checkpoint_000001", 0, 24, input_filter="srm")
    _checkpoint(root / "train/t1/checkpoint_000001", 1, 16, eval_view="tiles")
    (root / "search.json").write_text(json.dumps({"name": "run"}))
    members = [{"candidate": "t0", "weight": 2.0, "checkpoint": "train/t0/checkpoint_000001",
                "calibration": {"slope": 1.5, "intercept": -0.2}},
               {"candidate": "t1", "weight": 1.0, "checkpoint": "train/t1/checkpoint_000001",
                "calibration": {"slope": 0.8, "intercept": 0.1}}]
    ens = root / "ensemble" / "ensemble.json"
    ens.parent.mkdir()
    imgs = root.parent / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    good = []
    for i in range(6):
        a = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        a[::2, ::2] = np.clip(a[::2, ::2].astype(int) + 60 * (i % 2), 0, 255)  # a trace on half of them
        good.append(imgs / f"face_{i}.png")
        Image.fromarray(a).save(good[-1])
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(imgs / "whole.jpg", quality=95)
    data = (imgs / "whole.jpg").read_bytes()
    (imgs / "truncated.jpg").write_bytes(data[: len(data) * 6 // 10])
    (imgs / "garbage.jpg").write_bytes(b"<html>this is not an image</html>\n" * 4)
    (imgs / "empty.png").write_bytes(b"")

    def write(slope: float, intercept: float) -> None:
        ens.write_text(json.dumps({"members": members, "source": str(root),
                                   "calibration": {"slope": slope, "intercept": intercept, "threshold": 0.5}}))

    write(1.0, 0.0)
    from dfsearch.predict import predict_paths

    l0, l1 = (np.log(p["prob_fake"] / (1 - p["prob_fake"])) for p in predict_paths(ens, good[:2])[0])
    slope = 4 / abs(l0 - l1)  # random members barely differ: the blend's map spreads face_0 and face_1 to
    write(slope, -slope * (l0 + l1) / 2)  # log-odds -2 and +2, so both decisions occur
    return {"root": root, "ensemble": ens, "members": members, "good": good, "truncated": imgs / "truncated.jpg",
            "garbage": imgs / "garbage.jpg", "empty": imgs / "empty.png"}


@pytest.fixture(scope="module")
def loaded(run):
    from dfsearch.serve.classify import load

    return load(str(run["ensemble"]), "cpu")


# -- the plain functions ---------------------------------------------------------------------------

def test_the_page_s_numbers_are_predict_s_and_each_vote_is_that_member_s_own_calibrated_probability(
        run, loaded, tmp_path):
    from dfsearch.predict import predict_paths
    from dfsearch.serve.classify import classify

    rows, errors = classify(loaded, run["good"], heatmaps=0)
    assert errors == [] and [r["file"] for r in rows] == [p.name for p in run["good"]]
    want = predict_paths(run["ensemble"], run["good"])[0]
    assert [r["prob_fake"] for r in rows] == [p["prob_fake"] for p in want]  # the same code path: bit for bit
    assert [r["label"] for r in rows] == [p["label"] for p in want]
    assert {r["label"] for r in rows} == {"fake", "real"}
    for m in run["members"]:  # a one-member ensemble without a blend map: that member's calibrated P(fake)
        alone = tmp_path / f"{m['candidate']}.json"
        alone.write_text(json.dumps({"members": [m], "source": str(run["root"])}))
        own = [p["prob_fake"] for p in predict_paths(alone, run["good"])[0]]
        votes = [next(v for v in r["members"] if v["candidate"] == m["candidate"]) for r in rows]
        np.testing.assert_allclose([v["prob_fake"] for v in votes], own, rtol=0, atol=1e-12)
        assert [v["vote"] for v in votes] == ["fake" if p >= 0.5 else "real" for p in own]
        assert all(v["weight"] == pytest.approx(m["weight"] / 3) for v in votes)
    # the members disagree somewhere, or "each member's vote" would show nothing the blend does not
    assert np.ptp([[v["prob_fake"] for v in r["members"]] for r in rows], axis=1).max() > 1e-3


def test_grad_cam_is_a_map_at_the_image_s_size_in_unit_range_zero_where_the_member_never_looked(run, loaded):
    from dfsearch.serve.explain import explain, overlay

    img = Image.open(run["good"][2]).convert("RGB")
    top = loaded.top
    assert top.candidate == "t0"  # weight 2 of 3
    maps = {}
    for prob in (0.9, 0.1):
        heat = explain(top, img, prob, "cpu")
        assert heat.values.shape == (40, 48) and heat.target == ("fake" if prob >= 0.5 else "real")
        assert heat.method == "Grad-CAM (blocks.1.3)"  # small_cnn's last spatial map: the last block's pool
        v = maps[heat.target] = heat.values
        assert v.min() >= 0 and v.max() == pytest.approx(1.0)
        # t0 sees the centre 24 x 24 crop (rows 8-31, columns 12-35): nothing outside it is lit
        assert v[:8].max() == v[32:].max() == v[:, :12].max() == v[:, 36:].max() == 0
        assert v[8:32, 12:36].std() > 0.1
    # each call lights other places: Grad-CAM of "real" weighs the same map with the opposite sign
    seen = (slice(8, 32), slice(12, 36))
    assert np.corrcoef(maps["fake"][seen].ravel(), maps["real"][seen].ravel())[0, 1] < -0.2
    tiles = explain(loaded.members[1], img, 0.9, "cpu")  # 2 x 2 tiles of 16 px, one in each corner
    assert tiles.values.shape == (40, 48) and 0 <= tiles.values.min() and tiles.values.max() == pytest.approx(1.0)
    assert tiles.values.std() > 0.05
    shown = overlay(img, heat.values)
    assert shown.size == (48 * 7, 40 * 7)  # enlarged to at least 256 px, by a whole factor


class _Brightness(torch.nn.Module):
    """A network whose evidence is known: a 1x1 conv summing R, G, B, ReLU, the mean: P(fake) grows
    with the bright pixels, and only they count (a dark pixel's sum is below 0 after normalisation)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)).mean(dim=(2, 3))


@pytest.mark.parametrize("view,lit", [
    # the square: rows 10-17, columns 10-17 of 40 x 48
    # a 32 px centre crop covers rows 4-35, columns 8-39: all of it
    (("crop", 32, "center"), (slice(10, 18), slice(10, 18))),
    # 2 x 2 tiles of 16 px start at rows 0 and 24, columns 0 and 32: only rows and columns 10-15 are seen
    (("crop", 16, "tiles"), (slice(10, 16), slice(10, 16))),
    (("resize", 32, "center"), None),  # the whole image, resampled: lit around the square
])
def test_grad_cam_lights_exactly_the_pixels_that_made_the_call_where_they_are_in_the_image(view, lit):
    from dfsearch.data.views import View
    from dfsearch.predict import Member
    from dfsearch.serve.explain import explain

    a = np.zeros((40, 48, 3), dtype=np.uint8)
    a[10:18, 10:18] = 255
    member = Member("b", 1.0, "", "brightness", View(*view), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), _Brightness().eval())
    heat = explain(member, Image.fromarray(a), 0.9)
    assert heat.method == "Grad-CAM (act)" and heat.values.shape == (40, 48)
    if lit is None:
        v = heat.values
        assert v[11:17, 11:17].min() > 0.5 and v[:8].max() == v[21:].max() == v[:, 21:].max() == 0
        return
    want = np.zeros((40, 48))
    want[lit] = 1
    np.testing.assert_allclose(heat.values, want, atol=1e-6)


def test_a_vit_member_gets_gradient_saliency_and_the_page_names_it():
    from dfsearch.data.views import View
    from dfsearch.predict import Member
    from dfsearch.serve.explain import explain

    torch.manual_seed(0)
    vit = models.create("vit_tiny_patch16_224", img_size=32).eval()
    cfg = models.data_config("vit_tiny_patch16_224", 32)
    member = Member("v", 1.0, "", "vit_tiny_patch16_224", View("resize", 32), tuple(cfg["mean"]), tuple(cfg["std"]),
                    vit)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8))
    heat = explain(member, img, 0.7)
    assert heat.method == "gradient saliency"
    assert heat.values.shape == (50, 40) and heat.values.min() >= 0 and heat.values.max() == pytest.approx(1.0)
    assert heat.values.std() > 0.01


def test_unreadable_files_are_error_rows_naming_them_and_the_rest_get_results(run, loaded):
    from dfsearch.serve.app import errors_html, gallery, results_html
    from dfsearch.serve.classify import classify

    files = [run["garbage"], run["good"][0], run["truncated"], run["empty"], run["good"][1]]
    rows, errors = classify(loaded, files)
    assert [r["file"] for r in rows] == ["face_0.png", "face_1.png"]
    assert {e["file"]: e["reason"].split(" (")[0].split(":")[0] for e in errors} == {
        "garbage.jpg": "not an image", "truncated.jpg": "cannot decode", "empty.png": "empty file"}
    page = errors_html(errors)
    assert all(f'data-file="{n}">cannot read {n}: ' in page for n in ("garbage.jpg", "truncated.jpg", "empty.png"))
    shown = gallery(rows)
    assert [c.split(":")[0] for _, c in shown] == ["face_0.png", "face_1.png"]
    assert all("Grad-CAM (blocks.1.3) of t0 (small_cnn) for its call" in c for _, c in shown)
    # a file name is the user's: escaped, never markup
    rows[0]["file"] = '<img src=x onerror=alert(1)>.png'
    assert "<img src=x" not in results_html(rows, loaded) and "&lt;img src=x" in results_html(rows, loaded)


def test_the_report_tab_shows_the_run_s_report_or_the_command_that_makes_it(run, tmp_path):
    from dfsearch.serve.app import report_html, run_folder

    folder = run_folder(run["ensemble"])
    assert folder == run["root"].resolve()
    assert f"<pre>dfsearch report {run['root'].resolve()}</pre>" in report_html(folder, run["ensemble"])
    (tmp_path / "report.html").write_text('<html><body><h1 id="r">Run "x" & co</h1></body></html>')
    (tmp_path / "search.json").write_text("{}")
    page = report_html(tmp_path, run["ensemble"])
    assert page.startswith('<iframe id="dfs-report"')
    assert "&lt;h1 id=&quot;r&quot;&gt;Run &quot;x&quot; &amp; co" in page
    lone = tmp_path / "a" / "b" / "ensemble.json"  # not under a run folder, no source
    lone.parent.mkdir(parents=True)
    lone.write_text(json.dumps({"members": run["members"]}))
    assert run_folder(lone) is None and "does not sit in a run folder" in report_html(None, lone)


# -- the command -----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.xdist_group("cli")
def test_a_port_in_use_is_refused_first_naming_it_and_a_free_one(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        start = time.monotonic()
        # the ensemble does not exist either: the port is checked first, before any model or torch loads
        r = subprocess.run([*DFSEARCH, "serve", "--ensemble", str(tmp_path / "none.json"), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - start
    assert r.returncode == 2, r.stderr
    m = re.fullmatch(rf"dfsearch serve: error: port {port} on 127\.0\.0\.1 is in use; try --port (\d+)\n", r.stderr)
    assert m, r.stderr
    suggested = int(m.group(1))
    assert suggested > port
    with socket.socket() as s:  # the suggestion is free
        s.bind(("127.0.0.1", suggested))
    assert elapsed < 20, elapsed


def test_without_gradio_serve_says_how_to_install_it(run, monkeypatch):
    import importlib.util

    from dfsearch.errors import DfsearchError
    from dfsearch.serve import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    args = cli.add_parser(__import__("argparse").ArgumentParser().add_subparsers()).parse_args(
        ["--ensemble", str(run["ensemble"]), "--port", str(_free_port())])
    with pytest.raises(DfsearchError, match=r"needs Gradio, which is not installed here: "
                                            r"pip install 'dfsearch\[serve\]'"):
        cli.run(args)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """``dfsearch serve`` on a free port, its uploads in a temporary folder; killed at the end."""
    port = _free_port()
    tmp = tmp_path_factory.mktemp("gradio")
    log = open(tmp / "server.log", "w+")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "uploads")}
    proc = subprocess.Popen([*DFSEARCH, "serve", "--ensemble", str(run["ensemble"]), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"dfsearch serve exited ({proc.returncode}): {log.seek(0) or log.read()}"
            assert time.monotonic() < deadline, f"dfsearch serve did not answer at {url} in 120 s"
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield {"url": url, "proc": proc, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Debian's ChromeDriver, a fresh profile; quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for exe in (CHROMIUM, CHROMEDRIVER):
        assert os.access(exe, os.X_OK), f"{exe} is missing: run tests/browser/install-chromium.sh"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.TemporaryDirectory()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile.name}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # a driver path: no selenium-manager
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


def _upload(browser, url: str, files) -> tuple[dict, dict]:
    """Open the page, upload ``files``; ``({file: (prob, decision, [member cells])}, {file: error})``
    once the results table or an error shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    field = WebDriverWait(browser, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
    field.send_keys("\n".join(str(f) for f in files))
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#dfs-results tr[data-file], #dfs-errors .dfs-error"))
    rows = {tr.get_attribute("data-file"): (tr.find_element(By.CSS_SELECTOR, "td.prob").text,
                                            tr.find_element(By.CSS_SELECTOR, "td.label").text,
                                            [td.text for td in tr.find_elements(By.CSS_SELECTOR, "td.member")])
            for tr in browser.find_elements(By.CSS_SELECTOR, "#dfs-results tr[data-file]")}
    errors = {e.get_attribute("data-file"): e.text
              for e in browser.find_elements(By.CSS_SELECTOR, "#dfs-errors .dfs-error")}
    return rows, errors


def _predict_cli(path: Path, ensemble: Path, capsys) -> tuple[str, str]:
    """``dfsearch predict --ensemble E PATH``'s printed P(fake) and label for one file."""
    capsys.readouterr()
    assert main(["predict", "--ensemble", str(ensemble), str(path)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    prob, label, shown = line.split(maxsplit=2)
    assert shown == str(path)
    return prob, label


@pytest.mark.slow
@pytest.mark.xdist_group("cli")
def test_the_page_shows_predict_s_numbers_for_an_uploaded_image(run, loaded, server, browser, capsys, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dfsearch.serve.classify import classify

    rows, errors = _upload(browser, server["url"], run["good"][:2])
    assert errors == {} and list(rows) == ["face_0.png", "face_1.png"]
    own = classify(loaded, run["good"][:2], heatmaps=0)[0]
    for f, row in zip(run["good"][:2], own):
        prob, label, members = rows[f.name]
        assert (prob, label) == _predict_cli(f, run["ensemble"], capsys)
        assert members == [f"{v['prob_fake']:.4f} {v['vote']}" for v in row["members"]]
    assert {rows[f.name][1] for f in run["good"][:2]} == {"fake", "real"}  # face_0 and face_1 straddle the threshold
    WebDriverWait(browser, 30).until(lambda d: "Grad-CAM (blocks.1.3) of t0 (small_cnn)" in d.page_source)
    browser.save_screenshot(str(tmp_path / "page.png"))
    browser.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Report']").click()
    missing = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "dfs-report-missing"))
    assert f"dfsearch report {run['root'].resolve()}" in missing.text
    report = run["root"] / "report.html"  # made while the server runs: shown the next time the tab opens
    report.write_text('<html><body><h1 id="title">Report of "run"</h1></body></html>')
    try:
        browser.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Classify']").click()
        browser.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Report']").click()
        browser.switch_to.frame(WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "dfs-report")))
        assert browser.find_element(By.ID, "title").text == 'Report of "run"'
    finally:
        browser.switch_to.default_content()
        report.unlink()


@pytest.mark.slow
@pytest.mark.xdist_group("cli")
def test_an_unreadable_upload_is_an_error_on_the_page_and_the_server_stays_up(run, server, browser, capsys):
    rows, errors = _upload(browser, server["url"], [run["truncated"], run["good"][2]])
    assert list(errors) == ["truncated.jpg"]
    assert errors["truncated.jpg"].startswith("cannot read truncated.jpg: cannot decode")
    assert list(rows) == ["face_2.png"]
    assert rows["face_2.png"][:2] == _predict_cli(run["good"][2], run["ensemble"], capsys)
    assert server["proc"].poll() is None
    assert urllib.request.urlopen(server["url"], timeout=5).status == 200
    rows, errors = _upload(browser, server["url"], [run["good"][3]])  # and still answers uploads
    assert errors == {} and list(rows) == ["face_3.png"]
