"""The real commands, as a user runs them (subprocesses): bad input fails fast with exit code 2 and
a message on stderr that names the problem, before any expensive work (no default dataset
generated, no run directory, no hang waiting on resources Ray can never give)."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfsearch import models, search_space
from dfsearch.data.synth import generate

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group("cli")  # its module fixtures run every command once
FAST_S = 150  # generous: each of these takes seconds (imports); a hang would take forever
RAY_S = 240  # these start a local Ray first
HEAVY = ("torch", "ray", "timm")
# Runs a command as `python -m`/a script would, then records which heavy modules it had imported:
# an error that needs no cluster comes before any of them (the user waits ~0.3 s, not ~5 s).
WRAPPER = """
import atexit, json, os, runpy, sys
atexit.register(lambda: open(os.environ["DFSEARCH_TEST_IMPORTS"], "w").write(
    json.dumps([m for m in %r if m in sys.modules])))
target, sys.argv = sys.argv[1], sys.argv[1:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
""" % (HEAVY,)
LIGHT = {"train_missing_data", "train_unknown_arch", "train_bad_zoom", "train_empty", "train_no_layout", "inspect_missing",
         "search_unknown_space", "search_bad_yaml", "search_no_layout", "search_resume_missing",
         "search_resume_lists", "search_zero_samples", "search_remote_out", "search_no_cluster", "train_no_cluster"}

# The commands run concurrently (they are import-bound and mostly wait on a loaded machine): the
# module fixture below starts them all, each test waits for and checks its own. The two that start
# Ray run one after the other, beside the rest.


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    no_layout = root / "no_layout"
    (no_layout / "pictures" / "holiday").mkdir(parents=True)
    (no_layout / "pictures" / "holiday" / "a.txt").write_text("not a dataset")
    (root / "empty").mkdir()
    (root / "bad.yaml").write_text("metric: val_acc\narchs:\n  resnet18: {lr: [1.0e-4, 1.0e-3\n")
    (root / "old_runs" / "search-old").mkdir(parents=True)
    (root / "old_runs" / "search-old" / "tuner.pkl").write_bytes(b"")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    return dict(root=root, small=generate(root / "small", n=8, size=16, progress=False), no_layout=no_layout,
                closed_address=f"127.0.0.1:{closed}",
                empty=root / "empty", bad_yaml=root / "bad.yaml",
                old_runs=root / "old_runs", missing_weights=root / "weights" / "resnet18.safetensors")


def _commands(p: dict) -> dict:
    """name -> (argv after the program, 'dfsearch' | 'run_search' | 'console', starts Ray)."""
    import torch

    gpus = torch.cuda.device_count()  # 0 here; on a GPU machine ask for more than there is
    return {
        "train_missing_data": (["train", "--data", "/nonexistent"], "dfsearch", False),
        "train_unknown_arch": (["train", "--arch", "nope"], "dfsearch", False),
        "train_bad_zoom": (["train", "--zoom", 3], "dfsearch", False),
        "train_empty": (["train", "--data", p["empty"]], "dfsearch", False),
        "train_no_layout": (["train", "--data", p["no_layout"]], "dfsearch", False),
        "train_missing_weights": (["train", "--arch", "resnet18", "--pretrained", p["missing_weights"],
                                   "--data", p["small"]], "dfsearch", False),
        "train_workers": (["train", "--workers", 64, "--data", p["small"]], "dfsearch", True),
        "inspect_json": (["inspect", p["small"], "--json"], "console", False),
        "inspect_missing": (["inspect", p["root"] / "nope", "--json"], "dfsearch", False),
        "search_unknown_space": (["--space", "nope"], "run_search", False),
        "search_bad_yaml": (["--space", p["bad_yaml"]], "run_search", False),
        "search_no_layout": (["--space", "cnn", "--data", p["no_layout"]], "run_search", False),
        "search_resume_missing": (["--resume", "--name", "missing"], "run_search", False),
        "search_resume_lists": (["--resume", "--out", p["old_runs"], "--name", "missing"], "run_search", False),
        "search_zero_samples": (["--num-samples", 0], "run_search", False),
        "search_remote_out": (["--space", "cnn", "--out", "s3://bucket/runs"], "run_search", False),
        "search_offline_weights": (["--space", "finetune", "--data", p["small"]], "run_search", False),
        "search_no_cluster": (["--space", "cnn", "--address", p["closed_address"]], "run_search", False),
        "train_no_cluster": (["train", "--data", p["small"], "--address", p["closed_address"]], "dfsearch", False),
        "search_gpus": (["--gpus-per-worker", gpus + 1, "--space", "cnn", "--data", p["small"],
                         "--name", "gpu"], "run_search", True),
    }, gpus


class Run:
    """One finished command: its result, and the folders it was given (to check nothing was written)."""

    def __init__(self, proc, out: Path, cache: Path, imported: list | None, seconds: float):
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.out, self.cache, self.imported, self.seconds = out, cache, imported, seconds


def _launch(name, argv, prog, ray, p):
    work = p["root"] / "work" / name
    work.mkdir(parents=True)
    out, cache = work / "runs", work / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # never join another Ray
    imports = work / "imports.json"
    env.update(HF_HOME=str(work / "hf"), TORCH_HOME=str(work / "torch"))  # empty weight caches
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", DFSEARCH_CACHE=str(cache), PYTHONPATH=str(REPO),
               PYTHONUNBUFFERED="1", DFSEARCH_TEST_IMPORTS=str(imports))
    argv = [str(a) for a in argv]
    if prog == "run_search":
        if "--out" not in argv:
            argv += ["--out", str(out)]
        cmd, cwd = [sys.executable, "-c", WRAPPER, str(REPO / "run_search.py"), *argv], REPO
    else:
        exe = Path(sys.executable).parent / "dfsearch"  # the installed console script
        cmd = [str(exe)] if prog == "console" and exe.exists() else [sys.executable, "-c", WRAPPER, "dfsearch.cli"]
        if argv[0] == "train":
            argv += ["--out", str(out)]
        cmd, cwd = [*cmd, *argv], work
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=RAY_S if ray else FAST_S)
    seconds = time.perf_counter() - t0
    return Run(proc, out, cache, json.loads(imports.read_text()) if imports.exists() else None, seconds)


def _launch_all(paths, ray: bool, workers: int):
    from concurrent.futures import ThreadPoolExecutor

    commands, _ = _commands(paths)
    pool = ThreadPoolExecutor(max_workers=workers)
    return pool, {name: pool.submit(_launch, name, argv, prog, r, paths)
                  for name, (argv, prog, r) in sorted(commands.items()) if r == ray}


@pytest.fixture(scope="module")
def runs(paths):
    """The commands that start no Ray, all at once (they are import-bound and mostly wait)."""
    pool, futures = _launch_all(paths, ray=False, workers=3)
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def ray_runs(paths):
    """The two that start a local Ray, one after the other."""
    pool, futures = _launch_all(paths, ray=True, workers=1)
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def gpus(paths):
    return _commands(paths)[1]


def result(runs, name) -> Run:
    return runs[name].result(timeout=RAY_S + FAST_S * 3)


def _failed(r: Run, prefix: str) -> str:
    """Exit code 2, one clean error (no traceback) on stderr; returns stderr."""
    assert r.returncode == 2, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert f"{prefix}: error: " in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_errors_that_need_no_cluster_come_before_torch_and_ray_are_imported(runs):
    """Every bad-input error that needs no cluster is answered before torch, Ray or timm is
    imported: in a fraction of a second on this machine instead of the ~5 s those imports take."""
    done = {name: result(runs, name) for name in sorted(LIGHT)}
    heavy = {name: r.imported for name, r in done.items() if r.imported != []}
    assert not heavy, heavy
    print("seconds per light error:", {n: round(r.seconds, 2) for n, r in done.items()})


def _nothing_written(r: Run):
    """No default dataset generated in the cache, no run folder started."""
    assert not r.cache.exists() or not any(r.cache.iterdir()), list(r.cache.rglob("*"))
    assert not r.out.exists() or not any(r.out.iterdir()), list(r.out.rglob("*"))


# ----------------------------------------------------------------------------- dfsearch train / inspect

def test_train_missing_data(runs):
    r = result(runs, "train_missing_data")
    err = _failed(r, "dfsearch train")
    assert "/nonexistent" in err and "does not exist" in err
    assert "accepted layouts" in err  # says what would be accepted
    _nothing_written(r)


def test_train_zoom_that_does_not_divide_the_input_is_refused_before_any_work(runs):
    r = result(runs, "train_bad_zoom")
    err = _failed(r, "dfsearch train")
    assert "zoom 3: accepted: an integer >= 1 that divides the img_size (64)" in err
    _nothing_written(r)


def test_train_unknown_arch_lists_known(runs):
    # no --data: the arch is checked before the default dataset would be generated
    r = result(runs, "train_unknown_arch")
    err = _failed(r, "dfsearch train")
    assert "'nope'" in err
    for arch in models.known_archs():
        assert arch in err
    _nothing_written(r)


def test_train_empty_data_dir(runs, paths):
    r = result(runs, "train_empty")
    err = _failed(r, "dfsearch train")
    assert str(paths["empty"]) in err and "is empty" in err and "accepted layouts" in err
    _nothing_written(r)


def test_train_data_without_layout(runs, paths):
    r = result(runs, "train_no_layout")
    err = _failed(r, "dfsearch train")
    assert str(paths["no_layout"]) in err and "no dataset layout found" in err
    assert "train/real" in err and "accepted layouts" in err
    _nothing_written(r)


def test_train_missing_pretrained_file(runs, paths):
    r = result(runs, "train_missing_weights")
    err = _failed(r, "dfsearch train")
    assert str(paths["missing_weights"]) in err and "does not exist" in err
    _nothing_written(r)


@pytest.mark.slow
@pytest.mark.timeout(RAY_S + 2 * FAST_S)
def test_train_more_workers_than_cpus(ray_runs):
    """Starts Ray, then refuses a worker group the cluster can never place (instead of waiting)."""
    r = result(ray_runs, "train_workers")
    err = _failed(r, "dfsearch train")
    m = re.search(r"--workers 64 needs 64 CPUs .*this Ray cluster has (\d+)", err)
    assert m, err
    assert 1 <= int(m.group(1)) < 64
    assert f"use --workers <= {m.group(1)}" in err
    _nothing_written(r)


def test_inspect_json_prints_one_object(runs, paths):
    r = result(runs, "inspect_json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    report = json.loads(lines[0])
    assert isinstance(report, dict)
    assert report["splits"] == {"train": {"real": 4, "fake": 4}, "valid": {"real": 1, "fake": 1},
                                "test": {"real": 1, "fake": 1}}
    assert report["total"] == 12 and report["layout"] == "generic" and report["skipped"] == []
    assert report["root"] == str(paths["small"])


def test_inspect_missing_path(runs, paths):
    err = _failed(result(runs, "inspect_missing"), "dfsearch inspect")
    assert str(paths["root"] / "nope") in err and "does not exist" in err


# ----------------------------------------------------------------------------- run_search.py

def test_search_unknown_space_lists_available(runs):
    r = result(runs, "search_unknown_space")
    err = _failed(r, "run_search.py")
    assert "'nope'" in err
    for name in search_space.available():
        assert name in err
    _nothing_written(r)


def test_search_invalid_yaml(runs, paths):
    r = result(runs, "search_bad_yaml")
    err = _failed(r, "run_search.py")
    assert str(paths["bad_yaml"]) in err and "invalid YAML" in err and "line" in err
    _nothing_written(r)


def test_search_data_without_layout(runs, paths):
    r = result(runs, "search_no_layout")
    err = _failed(r, "run_search.py")
    assert str(paths["no_layout"]) in err and "no dataset layout found" in err and "accepted layouts" in err
    _nothing_written(r)


def test_search_resume_missing(runs):
    r = result(runs, "search_resume_missing")
    err = _failed(r, "run_search.py")
    assert "--resume" in err and "'missing'" in err and str(r.out) in err
    assert "--out" in err and "--name" in err  # says how to point at the interrupted run
    _nothing_written(r)


def test_search_resume_missing_lists_existing(runs, paths):
    r = result(runs, "search_resume_lists")
    err = _failed(r, "run_search.py")
    assert "'missing'" in err and "found: search-old" in err
    assert sorted(x.name for x in paths["old_runs"].iterdir()) == ["search-old"]


def test_search_weights_that_cannot_be_had_fail_before_ray(runs):
    """pretrained: true offline with empty caches: the space's field, the arch and how to provide
    the weights, before Ray starts (not in the first trial's traceback) and before any run folder."""
    r = result(runs, "search_offline_weights")
    err = _failed(r, "run_search.py")
    assert "finetune.yaml: field archs.resnet18.pretrained" in err, err
    assert "not available offline" in err and "resnet18.safetensors" in err and "HF_HUB_OFFLINE" in err
    assert "timm/resnet18.a1_in1k" in err  # where they would have come from
    assert "ray" not in r.imported
    assert not r.out.exists() or not any(r.out.iterdir()), list(r.out.rglob("*"))


def test_search_zero_samples(runs):
    r = result(runs, "search_zero_samples")
    err = _failed(r, "run_search.py")
    assert "--num-samples 0" in err and ">= 1" in err
    _nothing_written(r)


def test_an_unreachable_remote_out_fails_before_anything_runs(runs):
    """No S3 here: the URI is tried (not taken for a local folder ``s3:/...``) and refused, named."""
    r = result(runs, "search_remote_out")
    err = _failed(r, "run_search.py")
    assert "--out s3://bucket/runs" in err and ("cannot open this URI" in err or "cannot write there" in err)
    assert not (REPO / "s3:").exists()  # run_search runs in the repo root
    _nothing_written(r)


@pytest.mark.parametrize("name, prog", [("search_no_cluster", "run_search.py"), ("train_no_cluster", "dfsearch train")])
def test_an_address_where_no_cluster_answers_is_an_error_not_minutes_of_retries(runs, paths, name, prog):
    """``ray.init(address=...)`` would retry for minutes; the address is tried first (and, for the
    search, before the default dataset is generated)."""
    r = result(runs, name)
    err = _failed(r, prog)
    assert f"--address {paths['closed_address']}: no Ray cluster answers there" in err and "ray start --head" in err
    _nothing_written(r)


@pytest.mark.slow
@pytest.mark.timeout(2 * RAY_S + 2 * FAST_S)
def test_search_gpus_on_a_machine_without_gpus(ray_runs, gpus):
    """Starts Ray, sees 0 GPUs, refuses (instead of trials pending forever)."""
    r = result(ray_runs, "search_gpus")
    err = _failed(r, "run_search.py")
    assert "GPU" in err and f"this Ray cluster has {gpus}" in err
    # names the flags of this command (not dfsearch train's --workers / --gpu)
    assert "--workers-per-trial" in err and "--gpus-per-worker" in err
    _nothing_written(r)
