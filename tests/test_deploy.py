"""The cluster definitions in cluster/deploy/ parse, and the RayJob's entrypoint is a tunesmith
command line the CLI accepts."""
import os
import shlex

import yaml

from tunesmith.orchestrator.cli import build_parser

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster", "deploy")


def _load(name):
    with open(os.path.join(DEPLOY, name), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_launcher_yaml_has_gpu_workers_and_installs_tunesmith():
    c = _load("aws-gpu.yaml")
    assert c["head_node_type"] in c["available_node_types"]
    gpus = [t for t in c["available_node_types"].values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpus and all(t["max_workers"] >= 1 for t in gpus)
    assert any("tunesmith" in cmd for cmd in c["setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in cmd for cmd in c["head_start_ray_commands"])


def test_rayjob_manifest_is_a_gpu_rayjob_with_token_auth():
    job = _load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]["rayClusterSpec"]
    worker = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"]
    for c in (spec["headGroupSpec"]["template"]["spec"]["containers"][0], worker):
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_rayjob_entrypoint_is_a_valid_tunesmith_command():
    argv = shlex.split(_load("kuberay-rayjob.yaml")["spec"]["entrypoint"])
    assert argv[0] == "tunesmith"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.address == "auto" and args.results_dir.startswith("s3://")
