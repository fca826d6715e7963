"""Multi-node training on Kubernetes: build a Kubeflow Trainer TrainJob (or a training-operator
PyTorchJob), create it, stream the leader's logs, wait, and raise when it fails.

The Kubeflow train component calls this when `nodes > 1`; the job runs
`torchrun -m bridgerl train ...` on every node (rendezvous from the PET_* variables the operator
sets). Objects are built from the operators' own API models (`kubeflow-trainer-api`,
`kubeflow-training`), so a field the installed API does not know fails here, not on the cluster.
Inputs/outputs travel through a PVC mounted at the same path in this pod and the job's pods
(`--stage-in` / `--stage-out`).

Versions: the TrainJob's `runtimePatches` (node selector, tolerations, PVC) need Kubeflow Trainer
>= v2.2.0, where runtimePatches replaced podTemplateOverrides; the objects are built with
kubeflow-trainer-api 2.3 (Trainer v2.3 merges patches as strategic merge patches; v2.2 and v2.3
are not API compatible, so run Trainer v2.3.x). Gang scheduling of multi-node jobs (all nodes start
together or none does): `--queue NAME` labels the job `kueue.x-k8s.io/queue-name` for Kueue (which
admits a TrainJob or PyTorchJob as a whole; TrainJob support needs Trainer >= v2.2); `--gang` asks
the training operator for a pod group of all replicas (PyTorchJob `schedulingPolicy.minAvailable`,
with its gang scheduler, Volcano or scheduler-plugins); for TrainJob the pod group policy belongs to
the TrainingRuntime (`podGroupPolicy.coscheduling`, docs/distributed.md), chosen with `--runtime`.

    python -m bridgerl.launch.k8s --api trainer --name run-1 --image IMG --nodes 2 --gpus 8 \
        --pvc bridgerl-checkpoints --mount /mnt/checkpoints -- train -P params.yaml -S ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TRAINER = {"group": "trainer.kubeflow.org", "version": "v1alpha1", "plural": "trainjobs", "kind": "TrainJob"}
PYTORCHJOB = {"group": "kubeflow.org", "version": "v1", "plural": "pytorchjobs", "kind": "PyTorchJob"}
APIS = {"trainer": TRAINER, "pytorchjob": PYTORCHJOB}
RUNTIME = "bridgerl-torch"  # the TrainingRuntime in k8s/base/training-runtime.yaml
CONTAINER = {"trainer": "node", "pytorchjob": "pytorch"}  # the container name each operator expects
SHM_SIZE = "16Gi"
RUN_AS = 10001  # the non-root user of the images (docker/)

# torchrun takes nnodes/nproc from us; rank and master from the operator: Trainer sets PET_NODE_RANK /
# PET_MASTER_ADDR / PET_MASTER_PORT, the training operator RANK / MASTER_ADDR / MASTER_PORT.
_LAUNCH = ('exec torchrun --nnodes="$BRIDGERL_NNODES" --nproc-per-node="$BRIDGERL_NPROC" '
           '--node-rank="${PET_NODE_RANK:-${RANK:-0}}" --master-addr="${PET_MASTER_ADDR:-${MASTER_ADDR:-localhost}}" '
           '--master-port="${PET_MASTER_PORT:-${MASTER_PORT:-29500}}" -m bridgerl "$@"')


class JobFailed(RuntimeError):
    """The training job ended in a failed state (the message carries the operator's reason)."""


@dataclass
class JobSpec:
    """Everything a multi-node training job needs; `argv` is what follows `bridgerl` on each node."""

    name: str
    image: str
    argv: list[str]
    nodes: int = 2
    gpus: int = 1  # per node
    namespace: str = "default"
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = ""
    memory: str = ""
    pvc: str = ""
    mount: str = "/mnt/checkpoints"
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    runtime: str = RUNTIME
    queue: str = ""  # Kueue LocalQueue: label kueue.x-k8s.io/queue-name (gang admission by Kueue)
    gang: bool = False  # PyTorchJob: schedulingPolicy.minAvailable = nodes (the operator's gang scheduler)

    def __post_init__(self):
        if self.nodes < 1 or self.gpus < 0:
            raise ValueError(f"nodes={self.nodes}, gpus={self.gpus}: need nodes >= 1 and gpus >= 0")
        if not self.image:
            raise ValueError("image is empty: the job's pods need an image (the pipeline's train_image)")
        self.name = job_name(self.name)

    @property
    def nproc(self) -> int:
        return max(self.gpus, 1)

    def resources(self) -> dict:
        limits, requests = {}, {}
        if self.gpus:
            limits[self.gpu_resource] = str(self.gpus)
        if self.cpu:
            limits["cpu"] = requests["cpu"] = self.cpu
        if self.memory:
            limits["memory"] = requests["memory"] = self.memory
        return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}

    def all_env(self) -> dict:
        return {**self.env, "BRIDGERL_NNODES": str(self.nodes), "BRIDGERL_NPROC": str(self.nproc)}

    def command(self) -> list[str]:
        return ["/bin/sh", "-c", _LAUNCH, "bridgerl-train"]


def job_name(raw: str) -> str:
    """A valid, stable object name (DNS-1035, at most 40 characters to leave room for pod suffixes)."""
    base = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    if len(base) > 40 or base != raw:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        base = f"{base[:31].strip('-')}-{digest}"
    if not base[:1].isalpha():
        base = f"b{base}"[:40]
    return base


KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def _labels(spec: JobSpec) -> dict:
    return {"app.kubernetes.io/part-of": "bridgerl", "app.kubernetes.io/component": "train"}


def _job_labels(spec: JobSpec) -> dict:
    """Labels of the job object itself (Kueue reads its queue there, not on the pods)."""
    return {**_labels(spec), **({KUEUE_QUEUE_LABEL: spec.queue} if spec.queue else {})}


def build_trainjob(spec: JobSpec) -> dict:
    """A TrainJob on the namespaced TrainingRuntime; node selector, tolerations and the PVC as a runtime patch."""
    from kubeflow_trainer_api import models as m

    pod_patch = m.TrainerV1alpha1PodSpecPatch(
        node_selector=spec.node_selector or None,
        tolerations=[m.IoK8sApiCoreV1Toleration.from_dict(t) for t in spec.tolerations] or None,
        volumes=[m.IoK8sApiCoreV1Volume(
            name="checkpoints",
            persistent_volume_claim=m.IoK8sApiCoreV1PersistentVolumeClaimVolumeSource(claim_name=spec.pvc))]
        if spec.pvc else None)
    patch = m.TrainerV1alpha1RuntimePatch(
        manager="bridgerl.kfp/train",
        training_runtime_spec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(template=m.TrainerV1alpha1JobSetTemplatePatch(
            spec=m.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[m.TrainerV1alpha1ReplicatedJobPatch(
                name="node", template=m.TrainerV1alpha1JobTemplatePatch(spec=m.TrainerV1alpha1JobSpecPatch(
                    template=m.TrainerV1alpha1PodTemplatePatch(spec=pod_patch))))]))))
    res = spec.resources()
    job = m.TrainerV1alpha1TrainJob(
        api_version=f"{TRAINER['group']}/{TRAINER['version']}", kind=TRAINER["kind"],
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=spec.name, namespace=spec.namespace,
                                                           labels=_job_labels(spec)),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(api_group=TRAINER["group"], kind="TrainingRuntime",
                                                   name=spec.runtime),
            trainer=m.TrainerV1alpha1Trainer(
                image=spec.image, command=spec.command(), args=list(spec.argv), num_nodes=spec.nodes,
                num_proc_per_node=spec.nproc,
                resources_per_node=m.IoK8sApiCoreV1ResourceRequirements.from_dict(res) if res else None,
                env=[m.IoK8sApiCoreV1EnvVar(name=k, value=v) for k, v in spec.all_env().items()]),
            runtime_patches=[patch] if (spec.node_selector or spec.tolerations or spec.pvc) else None))
    return job.to_dict()


def build_pytorchjob(spec: JobSpec) -> dict:
    """A PyTorchJob (training operator v1): one Master and nodes-1 Workers running the same command."""
    from kubeflow.training import models as m
    from kubeflow.training.api_client import ApiClient
    from kubernetes import client as k

    mounts = [k.V1VolumeMount(name="dshm", mount_path="/dev/shm")]
    volumes = [k.V1Volume(name="dshm", empty_dir=k.V1EmptyDirVolumeSource(medium="Memory", size_limit=SHM_SIZE))]
    if spec.pvc:
        mounts.append(k.V1VolumeMount(name="checkpoints", mount_path=spec.mount))
        volumes.append(k.V1Volume(name="checkpoints",
                                  persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(claim_name=spec.pvc)))
    res = spec.resources()
    container = k.V1Container(
        name=CONTAINER["pytorchjob"], image=spec.image, command=spec.command(), args=list(spec.argv),
        env=[k.V1EnvVar(name=n, value=v) for n, v in spec.all_env().items()],
        resources=k.V1ResourceRequirements(limits=res.get("limits"), requests=res.get("requests")),
        volume_mounts=mounts,
        security_context=k.V1SecurityContext(allow_privilege_escalation=False, run_as_non_root=True,
                                             capabilities=k.V1Capabilities(drop=["ALL"])))
    pod = k.V1PodTemplateSpec(
        metadata=k.V1ObjectMeta(labels=_labels(spec)),
        spec=k.V1PodSpec(containers=[container], volumes=volumes, node_selector=spec.node_selector or None,
                         tolerations=[k.V1Toleration(**_snake(t)) for t in spec.tolerations] or None,
                         security_context=k.V1PodSecurityContext(run_as_non_root=True, run_as_user=RUN_AS,
                                                                 run_as_group=RUN_AS, fs_group=RUN_AS)))
    replicas = {"Master": m.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure", template=pod)}
    if spec.nodes > 1:
        replicas["Worker"] = m.KubeflowOrgV1ReplicaSpec(replicas=spec.nodes - 1, restart_policy="OnFailure",
                                                        template=pod)
    job = m.KubeflowOrgV1PyTorchJob(
        api_version=f"{PYTORCHJOB['group']}/{PYTORCHJOB['version']}", kind=PYTORCHJOB["kind"],
        metadata=k.V1ObjectMeta(name=spec.name, namespace=spec.namespace, labels=_job_labels(spec)),
        spec=m.KubeflowOrgV1PyTorchJobSpec(nproc_per_node=str(spec.nproc), pytorch_replica_specs=replicas,
                                           run_policy=m.KubeflowOrgV1RunPolicy(
                                               clean_pod_policy="None", backoff_limit=2,
                                               scheduling_policy=m.KubeflowOrgV1SchedulingPolicy(
                                                   min_available=spec.nodes) if spec.gang else None)))
    return ApiClient().sanitize_for_serialization(job)


def _snake(d: dict) -> dict:
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): v for key, v in d.items()}


BUILDERS = {"trainer": build_trainjob, "pytorchjob": build_pytorchjob}


def job_state(api: str, obj: dict) -> tuple[str, str]:
    """('running' | 'succeeded' | 'failed', reason) from the job's status conditions."""
    conds = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    done, failed = ("Complete", "Failed") if api == "trainer" else ("Succeeded", "Failed")
    if failed in conds:
        return "failed", conds[failed].get("message") or conds[failed].get("reason") or "failed"
    if done in conds:
        return "succeeded", conds[done].get("message") or ""
    return "running", ""


def leader_selector(api: str, name: str) -> str:
    """Label selector of the pod whose log we stream: node 0 of the TrainJob, the PyTorchJob master."""
    if api == "trainer":
        return (f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=node,"
                "jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0")
    return f"training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master"


def copy_path(src: str, dst: str) -> None:
    """Copy a file or a directory tree (replacing dst)."""
    s, d = Path(src), Path(dst)
    if not s.exists():
        raise FileNotFoundError(f"stage path {src} does not exist")
    d.parent.mkdir(parents=True, exist_ok=True)
    if s.is_dir():
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(s, d)
    else:
        shutil.copyfile(s, d)


class Launcher:
    """Create/attach, stream logs, wait: the cluster side of one job (kubernetes client)."""

    def __init__(self, api: str, namespace: str, poll_s: float = 10.0):
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.api, self.ns, self.poll_s = api, namespace, poll_s
        self.res = APIS[api]
        self.custom = client.CustomObjectsApi()
        self.core = client.CoreV1Api()

    def _get(self, name: str) -> dict:
        r = self.res
        return self.custom.get_namespaced_custom_object(r["group"], r["version"], self.ns, r["plural"], name)

    def submit(self, body: dict) -> None:
        """Create the job; a job of the same name (a retried task) is reattached, or replaced if it failed."""
        from kubernetes.client.rest import ApiException

        r, name = self.res, body["metadata"]["name"]
        try:
            self.custom.create_namespaced_custom_object(r["group"], r["version"], self.ns, r["plural"], body)
            print(f"created {r['kind']} {self.ns}/{name}", flush=True)
            return
        except ApiException as e:
            if e.status != 409:
                raise
        state, _ = job_state(self.api, self._get(name))
        if state != "failed":
            print(f"attached to existing {r['kind']} {self.ns}/{name} ({state})", flush=True)
            return
        print(f"replacing failed {r['kind']} {self.ns}/{name}", flush=True)
        self.custom.delete_namespaced_custom_object(r["group"], r["version"], self.ns, r["plural"], name,
                                                    propagation_policy="Foreground")
        while True:
            try:
                self._get(name)
                time.sleep(self.poll_s)
            except ApiException as e:
                if e.status == 404:
                    break
                raise
        self.custom.create_namespaced_custom_object(r["group"], r["version"], self.ns, r["plural"], body)

    def _stream(self, pod: str) -> None:
        container = CONTAINER[self.api]
        resp = self.core.read_namespaced_pod_log(pod, self.ns, container=container, follow=True,
                                                 _preload_content=False)
        for chunk in resp.stream():
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()

    def wait(self, name: str, timeout_s: float | None = None) -> None:
        """Stream the leader's log until the job ends; raise JobFailed if it failed."""
        start, streamed = time.monotonic(), set()
        while True:
            state, reason = job_state(self.api, self._get(name))
            if state == "succeeded":
                print(f"{self.res['kind']} {name} succeeded", flush=True)
                return
            if state == "failed":
                raise JobFailed(f"{self.res['kind']} {self.ns}/{name} failed: {reason}")
            if timeout_s and time.monotonic() - start > timeout_s:
                raise JobFailed(f"{self.res['kind']} {self.ns}/{name} did not finish within {timeout_s:.0f}s")
            pods = self.core.list_namespaced_pod(self.ns, label_selector=leader_selector(self.api, name)).items
            for p in pods:
                if p.metadata.name not in streamed and p.status.phase in ("Running", "Succeeded", "Failed"):
                    streamed.add(p.metadata.name)
                    try:
                        self._stream(p.metadata.name)
                    except Exception as e:  # a log hiccup must not fail the training
                        print(f"(log stream of {p.metadata.name} ended: {e})", flush=True)
            time.sleep(self.poll_s)


def current_namespace() -> str:
    f = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return f.read_text().strip() if f.exists() else "default"


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for it in items:
        if "=" not in it:
            raise SystemExit(f"{what} {it!r}: expected SRC=DST")
        out.append(tuple(it.split("=", 1)))
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bridgerl.launch.k8s", description=__doc__.splitlines()[0])
    ap.add_argument("--api", choices=sorted(APIS), default="trainer", help="trainer: TrainJob; pytorchjob: PyTorchJob")
    ap.add_argument("--name", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--gpus", type=int, default=1, help="GPUs (= processes) per node")
    ap.add_argument("--gpu-resource", default="nvidia.com/gpu")
    ap.add_argument("--cpu", default="")
    ap.add_argument("--memory", default="")
    ap.add_argument("--pvc", default="", help="PVC mounted at --mount in the job's pods")
    ap.add_argument("--mount", default="/mnt/checkpoints")
    ap.add_argument("--node-selector", default="{}", help="JSON object")
    ap.add_argument("--tolerations", default="[]", help="JSON list of tolerations")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--namespace", default=None, help="default: this pod's namespace")
    ap.add_argument("--runtime", default=RUNTIME, help="TrainingRuntime the TrainJob refers to")
    ap.add_argument("--queue", default="", help="Kueue LocalQueue (label kueue.x-k8s.io/queue-name): gang admission")
    ap.add_argument("--gang", action="store_true",
                    help="PyTorchJob: a pod group of all nodes (schedulingPolicy.minAvailable); TrainJob: use a "
                         "--runtime with podGroupPolicy instead")
    ap.add_argument("--stage-in", action="append", default=[], metavar="SRC=DST", help="copied before the job")
    ap.add_argument("--stage-out", action="append", default=[], metavar="SRC=DST", help="copied after success")
    ap.add_argument("--timeout", type=float, default=None, help="seconds")
    ap.add_argument("--dry-run", action="store_true", help="print the job object and exit")
    ap.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the bridgerl arguments, e.g. -- train -P ...")
    return ap


def spec_from_args(a: argparse.Namespace) -> JobSpec:
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        raise SystemExit("no bridgerl arguments after --")
    return JobSpec(name=a.name, image=a.image, argv=argv, nodes=a.nodes, gpus=a.gpus,
                   namespace=a.namespace or current_namespace(), gpu_resource=a.gpu_resource, cpu=a.cpu,
                   memory=a.memory, pvc=a.pvc, mount=a.mount, node_selector=json.loads(a.node_selector or "{}"),
                   tolerations=json.loads(a.tolerations or "[]"), env=dict(_pairs(a.env, "--env")),
                   runtime=a.runtime, queue=a.queue, gang=a.gang)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    spec = spec_from_args(a)
    if spec.gang and a.api == "trainer":
        raise SystemExit("--gang: a TrainJob's pod group policy is set on its TrainingRuntime (podGroupPolicy); "
                         "pass --runtime with one, or --queue for Kueue")
    body = BUILDERS[a.api](spec)
    if a.dry_run:
        print(json.dumps(body, indent=2))
        return 0
    for src, dst in _pairs(a.stage_in, "--stage-in"):
        copy_path(src, dst)
    launcher = Launcher(a.api, spec.namespace)
    launcher.submit(body)
    try:
        launcher.wait(spec.name, a.timeout)
    except JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for src, dst in _pairs(a.stage_out, "--stage-out"):
        copy_path(src, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
