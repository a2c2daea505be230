"""Shared fixtures: one local Ray for the session, small synthetic datasets, offline W&B."""

import json
import os
import shutil
from pathlib import Path

import pytest

from tests import faults as fault_injection

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# S3 tests talk to a local moto server; set before Ray starts so that its workers have them too
for _k, _v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
    os.environ.setdefault(_k, _v)
S3_BUCKET = "dfsearch-test"


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 server (moto) with bucket ``S3_BUCKET``; yields the ``?endpoint_override=...``
    query that points a URI at it (the way a user reaches MinIO or another S3-compatible store)."""
    import logging

    from moto.server import ThreadedMotoServer
    from pyarrow.fs import S3FileSystem

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", allow_bucket_creation=True).create_dir(S3_BUCKET)
    yield f"?endpoint_override=127.0.0.1:{port}&scheme=http"
    server.stop()


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def faults_file(tmp_path_factory) -> Path:
    """The file ``tests.faults`` reads in every Ray worker (empty: no faults)."""
    path = tmp_path_factory.mktemp("faults") / "faults.json"
    path.write_text("{}")
    os.environ[fault_injection.ENV] = str(path)
    return path


@pytest.fixture(scope="session")
def ray_local(faults_file):
    """A local Ray with 4 logical CPUs (2 real cores; trials are small) and no dashboard: without
    the State API, Ray Train's own placement-group cleaner cannot work, so the tests show that
    dfsearch's does. Every worker process runs ``tests.faults.install``."""
    import ray

    from dfsearch.cluster import init_ray

    fault_injection.install()  # in-process code (a Tune trainable on the driver) too
    init_ray(num_cpus=4, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": "tests.faults.install",
                          "env_vars": {"PYTHONPATH": str(REPO), fault_injection.ENV: str(faults_file)}})
    yield ray
    ray.shutdown()


def _injector(path: Path):
    def inject(spec: dict) -> None:
        path.write_text(json.dumps(spec))
        for marker in path.parent.glob("fired-*"):
            marker.unlink()

    return inject


@pytest.fixture
def faults(faults_file):
    """``faults({...})``: inject faults (see ``tests.faults``) for this test."""
    yield _injector(faults_file)
    faults_file.write_text("{}")


@pytest.fixture(scope="module")
def module_faults(faults_file):
    """``faults`` for a module-scoped fixture."""
    yield _injector(faults_file)
    faults_file.write_text("{}")


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory) -> Path:
    """A small, easy synthetic set (strong fingerprint) with unreadable files planted in it:
    a truncated JPEG in train and in valid (only a full decode finds them: they reach the loader),
    a zero-byte file and a .DS_Store (caught at discovery)."""
    from dfsearch.data.synth import generate

    root = generate(tmp_path_factory.mktemp("easy") / "data", n=1000, size=32, seed=1, difficulty=0.0,
                    progress=False)
    for split in ("train", "valid"):
        good = sorted((root / split / "fake").glob("*.jpg"))[0]
        data = good.read_bytes()
        # cut the tail only: the header still parses, the pixel data does not
        (root / split / "fake" / "zz_truncated.jpg").write_bytes(data[: int(len(data) * 0.95)])
    (root / "train" / "real" / "zz_empty.jpg").write_bytes(b"")
    (root / "train" / "real" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return root


@pytest.fixture
def clean_dir(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


# The xdist groups, longest first (measured: ``--durations``): ``make test`` runs with
# ``--no-loadscope-reorder``, so each of the two test processes starts on one of the first two
# and takes the next one that is free, the many short tests last to fill the gaps.
GROUP_ORDER = ("subprocess", "ray", "ray-train", "ray-ensemble", "cli")


def _group(item) -> str | None:
    return next((m.args[0] for m in item.iter_markers("xdist_group")), None)


def pytest_collection_modifyitems(config, items):
    """Tiers and groups. Every test that needs the session's Ray (``ray_local``) is ``slow`` and
    in an xdist group named ``ray*`` (``--dist loadgroup`` keeps a group in one test process: one
    session Ray per group, the groups side by side). A test that starts Ray in a
    subprocess says so with ``@pytest.mark.slow`` itself. Items are ordered by ``GROUP_ORDER``."""
    for item in items:
        if "ray_local" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
            group = _group(item)
            assert group and group.startswith("ray"), \
                f"{item.nodeid} uses ray_local: put it in an xdist_group named ray*"
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    items.sort(key=lambda item: rank.get(_group(item), len(GROUP_ORDER)))  # stable: file order within
