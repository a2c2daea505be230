"""``dfsearch cluster-check FILE...``: check a cluster config offline, before ``ray up`` or
``kubectl apply`` spends minutes (and money) finding out.

* Ray cluster launcher configs (``provider:``; ``cluster.yaml``, ``deploy/onprem.yaml``): what
  ``ray up`` itself checks before it contacts a cloud (Ray's ``prepare_config`` fills in the
  provider's defaults, ``validate_config`` applies Ray's JSON schema);
* KubeRay manifests (``kind: RayCluster | RayJob``, ``deploy/kuberay.yaml``): the fields dfsearch
  relies on (no installed package ships KubeRay's CRD schema);
* every Ray the file pins (``rayproject/ray:X`` images, ``ray==X``, ``rayVersion``) equals the Ray
  installed here, which must be inside ``ray_compat.VERIFIED_RAY``: Ray refuses a driver whose
  version differs from the cluster's, after the cluster is up;
* the head runs no training (``CPU: 0``) and offers ``plan.DRIVER_RESOURCE`` (warnings);
* no credential is written into the file (W&B and cloud keys come from the environment).

Findings are plain data (``Finding``); ``run`` prints them and exits 1 on an error.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from dfsearch.errors import DfsearchError

RAY_IMAGE = re.compile(r"\brayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)")
RAY_PIN = re.compile(r"\bray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)")
SECRET = re.compile(r"\b(WANDB_API_KEY|AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN)\b['\"]?\s*[=:]\s*"
                    r"['\"]?(?![$<{])([A-Za-z0-9/+_\-]{12,})")
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")


@dataclass(frozen=True)
class Finding:
    level: str   # "error" | "warning"
    field: str   # where in the file ("" for the whole file)
    message: str


def check(path: str | Path, ray_version: str | None = None) -> list[Finding]:
    """Every finding of one config file. ``ray_version``: the Ray to compare with (default: installed)."""
    path = Path(path)
    try:
        text = path.read_text()
        doc = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as e:
        raise DfsearchError(f"{path}: cannot read it as YAML ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict):
        raise DfsearchError(f"{path}: expected a YAML mapping (a Ray cluster config or a KubeRay manifest)")
    if doc.get("kind") in KUBERAY_KINDS:
        found = _kuberay(doc)
    elif "provider" in doc:
        found = _launcher(doc)
    else:
        raise DfsearchError(f"{path}: neither a Ray cluster launcher config (it has no `provider:`) nor a KubeRay "
                            f"manifest (`kind:` one of {', '.join(KUBERAY_KINDS)})")
    return found + _ray_versions(doc, ray_version) + _secrets(text)


def _launcher(doc: dict) -> list[Finding]:
    """What ``ray up`` checks before contacting the provider, then the head's resources."""
    import logging

    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # its INFO lines on filled-in defaults
    try:
        prepared = prepare_config(copy.deepcopy(doc))
        validate_config(prepared)
    except BaseException as e:  # jsonschema.ValidationError, ValueError; the local provider's checks exit
        if isinstance(e, KeyboardInterrupt):
            raise
        where = "/".join(map(str, getattr(e, "absolute_path", []) or []))
        first = (getattr(e, "message", None) or str(e) or type(e).__name__).strip().splitlines()[0]
        return [Finding("error", where, f"Ray's own validation (what `ray up` checks first): {first}")]
    if doc["provider"].get("type") == "local":  # one node type; the head's resources are its start command's
        start = " ".join(doc.get("head_start_ray_commands") or [])
        return _head("head_start_ray_commands", re.search(r"--num-cpus[= ]0\b", start) is not None,
                     _driver_resource() in start)
    head = prepared["available_node_types"][prepared["head_node_type"]]
    res = head.get("resources") or {}
    return _head(f"available_node_types/{prepared['head_node_type']}/resources", res.get("CPU") == 0,
                 res.get(_driver_resource(), 0) >= 1)


def _kuberay(doc: dict) -> list[Finding]:
    found = []
    if not str(doc.get("apiVersion", "")).startswith("ray.io/"):
        found.append(Finding("error", "apiVersion", f"{doc.get('apiVersion')!r}: KubeRay's resources are ray.io/v1"))
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] == "RayJob" else spec
    cluster = cluster.get("rayClusterConfig", cluster) if doc["kind"] == "RayService" else cluster
    head = cluster.get("headGroupSpec")
    if not isinstance(head, dict):
        return found + [Finding("error", "spec/headGroupSpec", "missing: a RayCluster needs its head group")]
    for i, group in enumerate([head] + list(cluster.get("workerGroupSpecs") or [])):
        where = "spec/headGroupSpec" if i == 0 else f"spec/workerGroupSpecs/{i - 1}"
        containers = (((group.get("template") or {}).get("spec") or {}).get("containers")) or []
        if not containers or not all(c.get("image") for c in containers):
            found.append(Finding("error", f"{where}/template/spec/containers", "every container needs an image"))
    if not cluster.get("workerGroupSpecs"):
        found.append(Finding("warning", "spec/workerGroupSpecs", "no worker group: every trial would train on the head"))
    params = head.get("rayStartParams") or {}
    return found + _head("spec/headGroupSpec/rayStartParams", str(params.get("num-cpus")) == "0",
                         _driver_resource() in str(params.get("resources", "")))


def _driver_resource() -> str:
    from dfsearch.search.plan import DRIVER_RESOURCE

    return DRIVER_RESOURCE


def _head(where: str, no_cpus: bool, driver: bool) -> list[Finding]:
    found = []
    if not no_cpus:
        found.append(Finding("warning", where, "the head offers CPUs: DDP workers may train there, and a busy head "
                                               "slows the driver, Tune and every trial's bookkeeping; give it CPU 0"))
    if not driver:
        found.append(Finding("warning", where, f"the head does not offer `{_driver_resource()}`: the trials' Tune "
                                               f"trainables may land on (spot) workers and fail with them; give the "
                                               f"head {{\"{_driver_resource()}\": 1000}}"))
    return found


def _strings(node, where: str = ""):
    """(field path, string) of every string in a parsed YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{where}/{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{where}/{i}")
    elif isinstance(node, str):
        yield where, node


def _ray_versions(doc: dict, installed: str | None) -> list[Finding]:
    from dfsearch.ray_compat import VERIFIED_RAY, ray_is_verified

    if installed is None:
        import ray

        installed = ray.__version__
    pins = [(w, m.group(1)) for w, s in _strings(doc) for m in (*RAY_IMAGE.finditer(s), *RAY_PIN.finditer(s))]
    found = []
    if doc.get("kind") in KUBERAY_KINDS:
        spec = doc.get("spec") or {}
        v = spec.get("rayVersion") or (spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or {}).get("rayVersion")
        pins += [("spec/rayVersion", str(v))] if v else []
        if not v:
            found.append(Finding("warning", "spec/rayVersion", f"not set: pin the image's Ray (here {installed})"))
    elif not pins:
        return [Finding("warning", "", f"pins no Ray version (an image rayproject/ray:X or ray==X): nodes may install "
                                       f"another Ray than this machine's {installed}, which Ray refuses to connect")]
    verified = ",".join(VERIFIED_RAY)
    for where, v in pins:
        if v != installed:
            found.append(Finding("error", where, f"Ray {v}, but this machine has Ray {installed}: Ray refuses a "
                                                 f"driver whose version differs from the cluster's; pin {installed} "
                                                 f"(dfsearch is verified on {verified}) or install Ray {v} here"))
        elif not ray_is_verified(v):
            found.append(Finding("warning", where, f"Ray {v} is outside the versions dfsearch is verified on "
                                                   f"({verified})"))
    return found


def _secrets(text: str) -> list[Finding]:
    return [Finding("error", f"line {text[:m.start()].count(chr(10)) + 1}",
                    f"{m.group(1)} is written into the file: credentials come from the environment only (a "
                    f"Kubernetes Secret, `ray job submit --runtime-env-json`, an instance profile)")
            for m in SECRET.finditer(text)]


def run(args) -> int:
    """``dfsearch cluster-check FILE...``: the findings of each file; 1 if any is an error."""
    report = {str(p): [asdict(f) for f in check(p)] for p in args.files}
    if args.json:
        print(json.dumps(report))
    for path, found in report.items() if not args.json else ():
        errors = sum(f["level"] == "error" for f in found)
        for f in found:
            print(f"{path}: {f['level']}: {f['field'] + ': ' if f['field'] else ''}{f['message']}", file=sys.stderr)
        print(f"{path}: {'OK' if not found else f'{errors} error(s), {len(found) - errors} warning(s)'}")
    return 1 if any(f["level"] == "error" for found in report.values() for f in found) else 0
