"""Multi-node job objects (src/bridgerl/launch/k8s.py), offline: they round-trip through the operators'
API models, match the runtime in k8s/, and the per-node launch command really starts torchrun."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from bridgerl.launch import k8s as k8s_jobs
from bridgerl.launch.k8s import JobSpec, build_pytorchjob, build_trainjob, job_state

ARGV = ["train", "-P", "/mnt/checkpoints/r1/train/params.yaml", "-S", "train.out_dir=/mnt/checkpoints/r1/io/model",
        "--resume"]


def _spec(**kw) -> JobSpec:
    base = dict(name="train-0f3c9a1e-7d2b-4c55-9e0a-5b8f1d2c3e4a", image="ghcr.io/bridgerl/bridgerl-gpu:0.1.0",
                argv=ARGV, nodes=3, gpus=8, namespace="team-a", cpu="32", memory="256Gi", pvc="bridgerl-checkpoints",
                node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                env={"BRIDGERL_PIPELINE_ID": "r1"})
    return JobSpec(**{**base, **kw})


def test_trainjob_round_trips_through_trainer_api():
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    body = build_trainjob(_spec())
    assert TrainerV1alpha1TrainJob.from_dict(body).to_dict() == body  # no field the API does not know
    t = body["spec"]["trainer"]
    assert (t["numNodes"], t["numProcPerNode"]) == (3, 8)
    assert t["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi"}
    assert t["args"] == ARGV and "torchrun" in t["command"][2]
    env = {e["name"]: e["value"] for e in t["env"]}
    assert env["BRIDGERL_NNODES"] == "3" and env["BRIDGERL_NPROC"] == "8" and env["BRIDGERL_PIPELINE_ID"] == "r1"
    pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    ps = pod["template"]["spec"]["template"]["spec"]
    assert ps["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert ps["tolerations"][0]["operator"] == "Exists"
    assert ps["volumes"] == [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": "bridgerl-checkpoints"}}]


def test_trainjob_matches_the_runtime_in_k8s():
    """The TrainJob refers to the TrainingRuntime we deploy, patches a job and volume that exist there."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainingRuntime

    docs = list(yaml.safe_load_all((REPO / "k8s" / "base" / "training-runtime.yaml").read_text()))
    [rt] = [d for d in docs if d["kind"] == "TrainingRuntime"]
    assert TrainerV1alpha1TrainingRuntime.from_dict(rt).to_dict() == rt
    ref = build_trainjob(_spec())["spec"]["runtimeRef"]
    assert (ref["kind"], ref["name"], ref["apiGroup"]) == ("TrainingRuntime", rt["metadata"]["name"],
                                                           rt["apiVersion"].split("/")[0])
    [job] = rt["spec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    [node] = [c for c in pod["containers"] if c["name"] == k8s_jobs.CONTAINER["trainer"]]
    mounts = {m["name"]: m["mountPath"] for m in node["volumeMounts"]}
    assert mounts == {"checkpoints": "/mnt/checkpoints", "dshm": "/dev/shm"}
    assert {v["name"] for v in pod["volumes"]} == {"checkpoints", "dshm"}
    assert pod["securityContext"]["runAsUser"] == k8s_jobs.RUN_AS and pod["securityContext"]["runAsNonRoot"]


def test_pytorchjob_round_trips_through_training_api():
    from kubeflow.training.api_client import ApiClient
    from kubeflow.training.utils.utils import FakeResponse

    body = build_pytorchjob(_spec())
    obj = ApiClient().deserialize(FakeResponse(body), "KubeflowOrgV1PyTorchJob")
    assert ApiClient().sanitize_for_serialization(obj) == body
    specs = body["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    assert body["spec"]["nprocPerNode"] == "8"
    pod = specs["Worker"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["name"] == "pytorch" and c["args"] == ARGV
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/dev/shm", "/mnt/checkpoints"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_single_node_pytorchjob_has_no_workers():
    specs = build_pytorchjob(_spec(nodes=1, gpus=0, pvc=""))["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master"}
    assert "limits" not in specs["Master"]["template"]["spec"]["containers"][0]["resources"] or \
        "nvidia.com/gpu" not in specs["Master"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_job_names_are_valid_and_stable():
    dns1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    raws = ["train-0f3c9a1e-7d2b-4c55-9e0a-5b8f1d2c3e4a", "SFT_run-0f3c9a1e-7d2b-4c55-9e0a-5b8f1d2c3e4a",
            "bridge_frozen_w-0f3c9a1e-7d2b-4c55-9e0a-5b8f1d2c3e4b", "9abc", "short"]
    names = [k8s_jobs.job_name(r) for r in raws]
    for n in names:
        assert dns1035.match(n) and len(n) <= 40, n
    assert len(set(names)) == len(names)
    assert k8s_jobs.job_name(raws[0]) == names[0]  # a retried task finds its job again
    assert k8s_jobs.job_name("short") == "short"


@pytest.mark.parametrize("api,done", [("trainer", "Complete"), ("pytorchjob", "Succeeded")])
def test_job_state_from_conditions(api, done):
    running = {"status": {"conditions": [{"type": "Created", "status": "True"}]}}
    assert job_state(api, running)[0] == "running"
    assert job_state(api, {})[0] == "running"
    ok = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": done, "status": "True"}]}}
    assert job_state(api, ok)[0] == "succeeded"
    bad = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "node-1 OOMKilled"}]}}
    assert job_state(api, bad) == ("failed", "node-1 OOMKilled")
    assert job_state(api, {"status": {"conditions": [{"type": "Failed", "status": "False"}]}})[0] == "running"


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="image"):
        _spec(image="")
    with pytest.raises(ValueError, match="nodes"):
        _spec(nodes=0)


def test_cli_dry_run_prints_the_job():
    args = ["--api", "trainer", "--name", "train-r1", "--image", "img:1", "--nodes", "2", "--gpus", "4",
            "--namespace", "ns", "--pvc", "ckpt", "--tolerations", '[{"key": "gpu", "operator": "Exists"}]',
            "--env", "A=1", "--dry-run", "--", *ARGV]
    p = subprocess.run([sys.executable, "-m", "bridgerl.launch.k8s", *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
    assert p.returncode == 0, p.stderr
    body = json.loads(p.stdout)
    a = k8s_jobs.build_parser().parse_args(args)
    assert body == build_trainjob(k8s_jobs.spec_from_args(a))
    assert body["spec"]["trainer"]["args"] == ARGV and body["metadata"]["namespace"] == "ns"


def test_copy_path_stages_files_and_trees(tmp_path):
    src = tmp_path / "a" / "model"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"x")
    k8s_jobs.copy_path(str(src), str(tmp_path / "pvc" / "model"))
    assert (tmp_path / "pvc" / "model" / "sub" / "w.bin").read_bytes() == b"x"
    (tmp_path / "m.json").write_text("{}")
    k8s_jobs.copy_path(str(tmp_path / "m.json"), str(tmp_path / "out" / "metrics"))
    assert (tmp_path / "out" / "metrics").read_text() == "{}"
    with pytest.raises(FileNotFoundError):
        k8s_jobs.copy_path(str(tmp_path / "missing"), str(tmp_path / "x"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_command_runs_bridgerl_under_torchrun(tmp_path):
    """The exact per-node command of the job, with the operator's PET_* variables, on one CPU node."""
    spec = _spec(nodes=1, gpus=0, argv=["config", "-P", str(REPO / "params.yaml"), "-S", "train.steps=7"])
    env = {**os.environ, **spec.all_env(), "PYTHONPATH": str(REPO / "src"), "PET_NODE_RANK": "0",
           "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*spec.command(), *spec.argv], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "steps: 7" in p.stdout
