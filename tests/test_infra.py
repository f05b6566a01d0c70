"""infra/: the Dockerfile, KubeRay manifests and cluster launcher YAML agree with each other and with the code.

Nothing here talks to Kubernetes or a cloud: the files are parsed and checked for the fields KubeRay and
the launcher require, one image everywhere (tagged with the project version), Ray start flags that
`ray start` really has, GPU groups that offer what the embed stage's actors ask for, CPU groups without
GPUs, and a RayJob entrypoint that the `tailor` CLI parses into a valid config.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from operators.embed import EmbedOptions
from pipelines.cli import build_parser
from pipelines.core.config import load_config
from pipelines.core.engine import embed_actor_resources

INFRA = ROOT / "infra"
IMAGE_ROOT = "/opt/tailor/src"  # WORKDIR of infra/Dockerfile: the repository's files live there in the image


def _yaml(rel: str) -> dict:
    return yaml.safe_load((INFRA / rel).read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return _yaml("kuberay/raycluster.yaml")


@pytest.fixture(scope="module")
def job() -> dict:
    return _yaml("kuberay/rayjob.yaml")


@pytest.fixture(scope="module")
def launcher() -> dict:
    return _yaml("cluster-launcher/aws.yaml")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _groups(spec: dict) -> dict[str, dict]:
    """head and every worker group of a RayCluster spec, by name."""
    return {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def _container(group: dict) -> dict:
    containers = group["template"]["spec"]["containers"]
    assert len(containers) == 1, "one Ray container per pod"
    return containers[0]


def _quantity(value) -> float:
    text = str(value)
    if text.endswith("m"):
        return int(text[:-1]) / 1000
    return float(text)


def _bytes(value) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def _ray_start_options() -> set[str]:
    from ray.scripts.scripts import start

    return {opt.lstrip("-") for p in start.params for opt in p.opts if opt.startswith("--")}


def _images(node, found: list[str]) -> list[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                found.append(value)
            else:
                _images(value, found)
    elif isinstance(node, list):
        for value in node:
            _images(value, found)
    return found


# ---------------------------------------------------------------- the image

def test_one_image_everywhere_tagged_with_the_project_version(cluster, job, launcher):
    images = set(_images(cluster, []) + _images(job, []) + _images(launcher, []))
    assert len(images) == 1, images
    image = images.pop()
    assert image.rsplit(":", 1)[1] == _project()["version"]
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert f"-t {image} " in dockerfile, "the Dockerfile's build command names the same image"
    for name in ("raycluster.yaml", "rayjob.yaml"):
        assert len(_images(_yaml(f"kuberay/{name}"), [])) >= 3


def test_dockerfile_is_cuda_based_and_installs_the_project():
    text = (INFRA / "Dockerfile").read_text()
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", text, re.M)
    assert base and base.group(1).startswith("nvidia/cuda:") and "runtime" in base.group(1)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, re.M)
    assert re.search(rf"^WORKDIR {IMAGE_ROOT}$", text, re.M)
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1)
    assert '"ray[data,default]==${RAY_VERSION}"' in text
    for name in ("raycluster.yaml", "rayjob.yaml"):
        manifest = _yaml(f"kuberay/{name}")
        assert (manifest["spec"].get("rayClusterSpec") or manifest["spec"])["rayVersion"] == ray_version
    copied = set(re.findall(r"^COPY (\S+) ", text, re.M))
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        assert pattern.rstrip("*") in copied, f"the image must hold the {pattern} packages"
    assert "pip install" in text and "tailor --help" in text  # installed, and the console script runs
    assert any(dep.startswith("ray[") and "default" in dep.split("]")[0] for dep in _project()["dependencies"]), \
        "ray[default] (the dashboard) is what `ray job submit` and KubeRay talk to"


# ---------------------------------------------------------------- KubeRay

def test_raycluster_has_the_fields_kuberay_requires(cluster):
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec["rayVersion"])
    options = _ray_start_options()
    for name, group in _groups(spec).items():
        assert set(group["rayStartParams"]) <= options, f"{name}: unknown ray start flags"
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), f"{name}: KubeRay wants strings"
        container = _container(group)
        assert container["name"] and container["image"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert requests == limits, f"{name}: requests = limits (Guaranteed QoS; Ray sizes itself from limits)"
        params = group["rayStartParams"]
        if "num-cpus" in params and name != "head":
            assert float(params["num-cpus"]) == _quantity(limits["cpu"]), f"{name}: Ray CPUs = pod CPUs"
        if "object-store-memory" in params:
            assert int(params["object-store-memory"]) <= 0.5 * _bytes(limits["memory"]), \
                f"{name}: the object store leaves the tasks' heap most of the pod's memory"
        if name != "head":
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head runs no tasks"
    ports = {p["containerPort"] for p in _container(spec["headGroupSpec"])["ports"]}
    assert {6379, 8265} <= ports


def test_gpu_group_offers_what_the_embed_actors_ask_for(cluster, job):
    groups = _groups(cluster["spec"])
    gpu_groups = {n: g for n, g in groups.items() if "nvidia.com/gpu" in _container(g)["resources"]["limits"]}
    assert list(gpu_groups) == ["gpu"]
    gpu = gpu_groups["gpu"]
    gpus_per_pod = int(_container(gpu)["resources"]["limits"]["nvidia.com/gpu"])
    assert int(gpu["rayStartParams"]["num-gpus"]) == gpus_per_pod
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])

    config = _entrypoint_config(job)
    assert config.embed is not None and config.embed.device in ("auto", "cuda")
    cluster_gpus = gpus_per_pod * gpu["maxReplicas"]
    actor = embed_actor_resources(config.embed, cluster_gpus)
    assert actor["num_gpus"] == 1 and gpus_per_pod % actor["num_gpus"] == 0, "actors use whole GPUs of a pod"
    assert actor["num_cpus"] <= float(gpu["rayStartParams"]["num-cpus"])
    assert config.embed.num_actors * actor["num_gpus"] <= cluster_gpus, "the actor pool fits the GPU group"
    # the preprocess / decode tasks fit a CPU pod
    cpu_pod = float(groups["cpu"]["rayStartParams"]["num-cpus"])
    assert config.ray.decode_cpus <= cpu_pod and config.ray.fetch_cpus <= cpu_pod
    # on a cluster without GPUs the same config runs its actors on CPU
    assert embed_actor_resources(config.embed, 0)["num_gpus"] == (1 if config.embed.device == "cuda" else 0)
    assert embed_actor_resources(EmbedOptions(device="cpu"), cluster_gpus)["num_gpus"] == 0


def test_cpu_groups_and_head_have_no_gpus(cluster):
    for name, group in _groups(cluster["spec"]).items():
        if name == "gpu":
            continue
        resources = _container(group)["resources"]
        assert "nvidia.com/gpu" not in resources["limits"] and "nvidia.com/gpu" not in resources["requests"]
        assert group["rayStartParams"].get("num-gpus", "0") == "0"


def test_rayjob_runs_the_raycluster_spec(job, cluster):
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's cluster is raycluster.yaml's, verbatim"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode")


def _entrypoint_config(job: dict):
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "tailor"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "annotate" and args.func.__name__ == "_annotate"
    assert args.config.startswith(f"{IMAGE_ROOT}/")
    local = ROOT / Path(args.config).relative_to(IMAGE_ROOT)
    assert local.exists(), f"{args.config} is not in the image ({local} missing)"
    overrides = [*(args.set or []), f"input.path={args.input}", f"output={args.output}"]
    return load_config(local, overrides)


def test_rayjob_entrypoint_is_a_valid_tailor_command(job):
    config = _entrypoint_config(job)
    assert config.input.path.startswith("s3://") and config.output.startswith("s3://")
    assert config.ray.address in (None, "auto"), "under a RayJob the driver joins the cluster it runs on"


# ---------------------------------------------------------------- Ray cluster launcher

def _ray_start_commands(commands: list[str]) -> list[list[str]]:
    found = []
    for command in commands:
        for part in command.split(";"):
            argv = shlex.split(part)
            if argv[:2] == ["ray", "start"]:
                found.append(argv[2:])
    return found


def test_cluster_launcher_yaml(launcher, cluster):
    from ray.scripts.scripts import start

    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers", "docker",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in launcher, key
    assert launcher["provider"]["type"] == "aws" and launcher["provider"]["region"]
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert launcher["max_workers"] >= sum(t.get("max_workers", 0) for n, t in types.items() if n != "head")
    for name, node_type in types.items():
        assert node_type["node_config"]["InstanceType"], name
        assert node_type.get("min_workers", 0) <= node_type.get("max_workers", 0) or name == "head"
    assert types["head"]["resources"]["CPU"] == 0, "the head runs no tasks"
    assert "GPU" not in types["cpu"]["resources"]
    gpu = types["gpu"]
    assert gpu["resources"]["GPU"] == int(_groups(cluster["spec"])["gpu"]["rayStartParams"]["num-gpus"])
    assert "--gpus all" in gpu["docker"]["worker_run_options"]
    assert types["cpu"]["resources"]["CPU"] == float(_groups(cluster["spec"])["cpu"]["rayStartParams"]["num-cpus"])

    head = _ray_start_commands(launcher["head_start_ray_commands"])
    worker = _ray_start_commands(launcher["worker_start_ray_commands"])
    assert len(head) == 1 and len(worker) == 1
    for argv in head + worker:  # flags ray start really has (click parses, nothing runs)
        start.make_context("start", list(argv))
    assert "--head" in head[0] and "--num-cpus=0" in head[0]
    assert any(a.startswith("--address=$RAY_HEAD_IP:") for a in worker[0])


def test_infra_readme_covers_sizing_and_the_three_commands():
    text = (INFRA / "README.md").read_text()
    for topic in ("CPUs per GPU", "object store", "spill", "NVMe"):
        assert topic.lower() in text.lower(), topic
    readme = (ROOT / "README.md").read_text()
    assert "## Run on a cluster" in readme and "ray job submit" in readme
