"""`bridgerl train` as a Kubeflow component: data + demos + base Model → trained Model + Metrics.

One node: the stage runs in this pod, under torchrun over all its GPUs (`--nproc`) when it has more
than one. Several nodes: `python -m bridgerl.launch.k8s` stages the inputs on the checkpoint PVC,
creates a Kubeflow Trainer TrainJob (or a PyTorchJob), streams its logs, waits, copies the outputs
back and fails this task when the job fails.

Besides the model and metrics it returns the training curve as a CSV and as an HTML page of charts
(`curve_html`, shown in the Kubeflow UI).
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.common import GPU_IMAGE, bridgerl_cli


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False, additional_funcs=[bridgerl_cli])
def train(config: str, dataset: Input[Dataset], demos: Input[Dataset], base_model: Input[Model],
          model: Output[Model], metrics: Output[Metrics], curve: Output[Dataset], curve_html: Output[HTML],
          tracking_uri: str = "", label: str = "train", method: str = "", gpus: int = 0, nodes: int = 1,
          node_gpus: int = 0, checkpoint_root: str = "", job_api: str = "trainer",
          job_image: str = "", job_cpu: str = "", job_memory: str = "", gpu_resource: str = "nvidia.com/gpu",
          checkpoint_pvc: str = "", node_selector: dict = {}, tolerations: list = []):
    """Train with train.method (or `method`, set by the comparison's loop); checkpoints go to
    `<checkpoint_root>/<run id>/<label>`, so a retried task resumes from them (`--resume`). The run id
    is the pod's `KFP_RUN_ID` (from its `pipeline/runid` label), `local` outside Kubernetes.
    `gpus`: this pod's GPUs (one-node training); `node_gpus`: per node of a multi-node job."""
    import json
    import os
    import sys
    import tempfile

    run_id = os.environ.get("KFP_RUN_ID") or "local"
    root = checkpoint_root or tempfile.mkdtemp(prefix="bridgerl-ckpt-")
    work = os.path.join(root, run_id, label)
    io = {"dataset": dataset.path, "demos": demos.path, "base_model": base_model.path,
          "model": model.path, "metrics": metrics.path, "curve": curve.path}
    launcher, stage = [], {}
    if nodes > 1:  # the job's pods see the PVC, not this pod's artifact paths: stage through it
        stage = {k: os.path.join(work, "io", k) for k in io}
        launcher = [sys.executable, "-m", "bridgerl.launch.k8s", "--api", job_api, "--name", f"{label}-{run_id}",
                    "--image", job_image, "--nodes", str(nodes), "--gpus", str(node_gpus or gpus),
                    "--gpu-resource", gpu_resource,
                    "--cpu", job_cpu, "--memory", job_memory, "--pvc", checkpoint_pvc, "--mount", root,
                    "--node-selector", json.dumps(node_selector), "--tolerations", json.dumps(tolerations),
                    "--env", f"BRIDGERL_PIPELINE_ID={run_id}", "--env", f"KFP_RUN_ID={run_id}"]
        launcher += [a for k in ("dataset", "demos", "base_model") for a in ("--stage-in", f"{io[k]}={stage[k]}")]
        launcher += [a for k in ("model", "metrics", "curve") for a in ("--stage-out", f"{stage[k]}={io[k]}")]
        launcher += ["--"]
    sets = [f"train.checkpoint_dir={os.path.join(work, 'checkpoints')}",
            *([f"train.method={method}"] if method else [])]
    args = ["--resume"] + (["--nproc", str(gpus)] if nodes == 1 and gpus > 1 else [])
    bridgerl_cli("train", config, {**io, **stage}, sets=sets, args=args, tracking_uri=tracking_uri, workdir=work,
                 launcher=launcher)
    from bridgerl.train.curve_html import render

    render(curve.path, curve_html.path, title=f"Training curve: {label}")
    with open(metrics.path) as f:
        final = json.load(f)
    for k, v in final.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics.log_metric(k, v)
