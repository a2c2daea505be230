"""Shared fixtures: one local Ray for the session, small synthetic datasets, offline W&B."""

import os
import shutil
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 4 logical CPUs (2 real cores; trials are small) and no dashboard: without
    the State API, Ray Train's own placement-group cleaner cannot work, so the tests show that
    dfsearch's does."""
    import ray

    from dfsearch.train import init_ray

    init_ray(num_cpus=4, include_dashboard=False)
    yield ray
    ray.shutdown()


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
