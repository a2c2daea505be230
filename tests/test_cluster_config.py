"""The shipped cluster configs pass what ``ray up`` / KubeRay check offline, and
``dfsearch cluster-check`` names what is wrong in a broken one before a cluster is paid for."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from dfsearch import cluster_config
from dfsearch.errors import DfsearchError
from dfsearch.ray_compat import ray_is_verified
from dfsearch.search.plan import DRIVER_RESOURCE

REPO = Path(__file__).resolve().parent.parent
SHIPPED = [REPO / "cluster.yaml", REPO / "deploy" / "onprem.yaml", REPO / "deploy" / "kuberay.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_passes_every_check_without_a_warning(path):
    assert cluster_config.check(path) == []


def test_the_shipped_configs_pin_the_installed_ray_and_the_image_builds_on_it():
    assert ray_is_verified()
    aws = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert aws["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert f"ray[tune,train,default]=={ray.__version__}" in (REPO / "deploy" / "onprem.yaml").read_text()
    assert yaml.safe_load((REPO / "deploy" / "kuberay.yaml").read_text())["spec"]["rayVersion"] == ray.__version__
    assert f"FROM rayproject/ray:{ray.__version__}-" in (REPO / "deploy" / "Dockerfile").read_text()


def test_the_aws_head_trains_nothing_and_hosts_the_trials_drivers_and_there_is_a_spot_type():
    aws = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = aws["available_node_types"]
    assert types[aws["head_node_type"]]["resources"] == {"CPU": 0, DRIVER_RESOURCE: 1000}
    gpu = [t for n, t in types.items() if n != aws["head_node_type"]]
    assert all(t["resources"].get("GPU", 0) >= 1 for t in gpu)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu)
    # dfsearch itself from this tree, installed with pyproject's ranges (no URL to edit)
    assert aws["file_mounts"] == {"/home/ray/dfsearch": "."}
    assert any('pip install -q -e "/home/ray/dfsearch"' in c for c in aws["setup_commands"])


def _variant(tmp_path, src: Path, *replacements) -> Path:
    text = src.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    out = tmp_path / src.name
    out.write_text(text)
    return out


def test_a_ray_version_other_than_the_installed_one_is_an_error_naming_the_field(tmp_path):
    bad = _variant(tmp_path, REPO / "cluster.yaml", (f"ray:{ray.__version__}-py311-gpu", "ray:2.59.0-py311-gpu"))
    (f,) = cluster_config.check(bad)
    assert f.level == "error" and f.field == "docker/image"
    assert "2.59.0" in f.message and ray.__version__ in f.message
    k8s = _variant(tmp_path, REPO / "deploy" / "kuberay.yaml", (f'rayVersion: "{ray.__version__}"', 'rayVersion: "2.61.1"'))
    assert [(f.level, f.field) for f in cluster_config.check(k8s)] == [("error", "spec/rayVersion")]


def test_what_ray_up_would_reject_is_reported_with_ray_s_own_words(tmp_path):
    bad = _variant(tmp_path, REPO / "cluster.yaml", ("max_workers: 8", "max_worker: 8"))
    (f,) = cluster_config.check(bad)
    assert f.level == "error" and "max_worker" in f.message and "`ray up`" in f.message
    onprem = _variant(tmp_path, REPO / "deploy" / "onprem.yaml", ("  head_ip: 10.0.0.10", "  head: 10.0.0.10"))
    assert [f.level for f in cluster_config.check(onprem)] == ["error"]


def test_a_head_that_would_train_and_a_written_credential_are_reported(tmp_path):
    k8s = _variant(tmp_path, REPO / "deploy" / "kuberay.yaml", ('num-cpus: "0"', 'num-cpus: "8"'))
    assert [(f.level, "CPU 0" in f.message) for f in cluster_config.check(k8s)] == [("warning", True)]
    aws = _variant(tmp_path, REPO / "cluster.yaml", ('resources: {"CPU": 0, "dfsearch_driver": 1000}', "resources: {}"))
    assert sorted(f.message.split(":")[0] for f in cluster_config.check(aws)) == [
        "the head does not offer `dfsearch_driver`", "the head offers CPUs"]
    leak = _variant(tmp_path, REPO / "cluster.yaml", ("  - pip install -q", "  - export WANDB_API_KEY=0123456789abcdef0123; pip install -q"))
    (f,) = cluster_config.check(leak)
    assert f.level == "error" and "WANDB_API_KEY" in f.message and f.field.startswith("line ")
    assert "0123456789abcdef" not in f.message  # the report does not repeat the secret


def test_the_command_exits_1_on_an_error_and_rejects_a_file_that_is_no_cluster_config(tmp_path):
    bad = _variant(tmp_path, REPO / "cluster.yaml", ("max_workers: 8", "max_worker: 8"))
    ok = subprocess.run([sys.executable, "-m", "dfsearch.cli", "cluster-check", "--json", str(REPO / "cluster.yaml"),
                         str(bad)], capture_output=True, text=True)
    assert ok.returncode == 1
    report = json.loads(ok.stdout)
    assert report[str(REPO / "cluster.yaml")] == [] and report[str(bad)][0]["level"] == "error"
    with pytest.raises(DfsearchError, match="neither a Ray cluster launcher config"):
        cluster_config.check(REPO / "search_spaces" / "demo.yaml")


def test_joining_a_cluster_of_another_ray_version_is_a_clear_error(monkeypatch):
    """What Ray raises when the cluster's Ray or Python differs from this driver's becomes an
    error that says what differs and how to run the search instead (on the cluster itself)."""
    from dfsearch.cluster import init_ray

    def refuse(**kw):
        raise RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.59.0\n    Python: 3.11.4\n"
                           "This process on 10.0.0.5:6379 was started with:\n    Ray: 2.60.0\n    Python: 3.11.9\n")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(DfsearchError, match=r"--address 10.0.0.5:6379: version mismatch: .*Ray: 2.59.0.*Ray: 2.60.0"
                                            r".*ray job submit"):
        init_ray("10.0.0.5:6379")
