"""The whole chain on Kubeflow: resolve-config → prepare → init-model → build-demos → train → evaluate → register.

Configuration, in order of precedence (later wins):
- `params_yaml`: the params file's content (default: this checkout's params.yaml at compile time;
  paste your own in the UI);
- the typed run parameters below (empty / unset: `params_yaml` and its preset decide);
- `overrides`: free `-S key=value` items for everything else, e.g. ["train.grpo.kl_coef=0"].

The first task, resolve-config, validates the result and gives every other task only the
configuration its stage reads (the stage table, bridgerl.core.stage_table), so KFP's cache reuses
prepare, init-model and build-demos (and evaluate) while only training settings change. The run id
reaches each task from its pod's label, not as an input, so it does not break the cache either.
"""


import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kfp import dsl  # noqa: E402
from kfp.dsl import Artifact, Metrics, Model  # noqa: E402

from components.build_demos.component import build_demos  # noqa: E402
from components.common import GPU_IMAGE  # noqa: E402
from components.evaluate.component import evaluate  # noqa: E402
from components.init_model.component import init_model  # noqa: E402
from components.prepare.component import prepare  # noqa: E402
from components.register.component import register  # noqa: E402
from components.resolve_config.component import resolve_config  # noqa: E402
from components.train.component import train  # noqa: E402
from pipelines.placement import CHECKPOINT_MOUNT, PLACEMENT, mount_checkpoints, place, use_run_id, use_secrets  # noqa: E402

PARAMS_YAML = (ROOT / "params.yaml").read_text()
MLFLOW_URI = "http://mlflow:5000"  # the tracking Service of k8s/ in the run's namespace
HUB_TOKEN_SECRET = "hf-token"  # a Kubernetes secret with key `token` (optional)
TEACHER_KEY_SECRET = "teacher-api-key"  # a Kubernetes secret with key `api_key` (optional)
UNSET = -1  # a numeric run parameter at -1 is not set: params_yaml (and its preset) decide


@dsl.pipeline(name="bridgerl", description="BRIDGE (cooperative SFT + RL) training: data, demos, train, "
              "evaluate, register in MLflow.")
def bridge_pipeline(
    params_yaml: str = PARAMS_YAML,
    overrides: list = [],
    method: str = "",
    preset: str = "",
    base_model: str = "",
    lr_theta: float = UNSET,
    lr_w: float = UNSET,
    lam: float = UNSET,
    steps: int = UNSET,
    epochs: int = UNSET,
    seed: int = UNSET,
    benchmarks: list = [],
    mlflow_tracking_uri: str = MLFLOW_URI,
    hub_token_secret: str = HUB_TOKEN_SECRET,
    teacher_api_key_secret: str = TEACHER_KEY_SECRET,
    gpu_accelerator: str = PLACEMENT["gpu_accelerator"],
    gpu_node_selector: dict = PLACEMENT["gpu_node_selector"],
    gpu_tolerations: list = PLACEMENT["gpu_tolerations"],
    train_gpus: int = PLACEMENT["train_gpus"],
    train_cpu: str = PLACEMENT["train_cpu"],
    train_memory: str = PLACEMENT["train_memory"],
    eval_gpus: int = PLACEMENT["eval_gpus"],
    eval_cpu: str = PLACEMENT["eval_cpu"],
    eval_memory: str = PLACEMENT["eval_memory"],
    train_nodes: int = 1,
    train_node_gpus: int = 8,
    train_job_api: str = "trainer",
    train_image: str = GPU_IMAGE,
    checkpoint_pvc: str = "bridgerl-checkpoints",
    checkpoint_root: str = CHECKPOINT_MOUNT,
) -> NamedTuple("Outputs", model=Model, metrics=Metrics, registration=Artifact):
    """Configuration: `params_yaml` the params file's content; `overrides` free `-S key=value` items
    applied last. Run parameters (each sets one key; unset, i.e. empty or -1, leaves it to `params_yaml`
    and its preset):
    `method` train.method (a name in the methods table, src/bridgerl/core/methods.py: bridge, a baseline or an
    ablation);
    `preset` a preset name (src/bridgerl/presets) layered under the YAML; `base_model` model.base
    (`embedded`, a hub id or a directory); `lr_theta` train.lr_theta (α, base weights θ); `lr_w`
    train.lr_w (β, the LoRA adapter w); `lam` train.bridge.lam (λ); `steps` train.steps; `epochs`
    train.epochs (overrides steps); `seed` seed; `benchmarks` eval.benchmarks (e.g. ["math500", "aime24"]).

    Services and secrets: `mlflow_tracking_uri` where results and the registered model land;
    `hub_token_secret` a Kubernetes secret whose `token` becomes HF_TOKEN (prepare, init-model,
    build-demos); `teacher_api_key_secret` one whose `api_key` becomes OPENAI_API_KEY (build-demos'
    endpoint teacher). Both optional: a missing secret leaves the variable unset.

    Placement (shared by train and evaluate, pipelines/placement.py): `gpu_accelerator` the GPU
    resource, `gpu_node_selector` / `gpu_tolerations` the GPU nodes; `train_gpus` / `train_cpu` /
    `train_memory` and `eval_gpus` / `eval_cpu` / `eval_memory` each task's size (0 GPUs: CPU only).
    Both get a memory-backed /dev/shm. `train_nodes` > 1 launches a TrainJob (`train_job_api` = trainer)
    or a PyTorchJob (pytorchjob) of `train_nodes` nodes with `train_node_gpus` GPUs each, in
    `train_image`; the train task then only launches and watches it: set `train_gpus=0`
    (`train_cpu`/`train_memory` size the job's nodes). `checkpoint_pvc` mounted at `checkpoint_root`
    holds training checkpoints and build-demos' journal, so retried tasks resume, and is where the tasks that
    score (build-demos, train, evaluate) can read a user's reward file."""
    rc = resolve_config(params=params_yaml, overrides=overrides, method=method, preset=preset, base_model=base_model,
                        lr_theta=lr_theta, lr_w=lr_w, lam=lam, steps=steps, epochs=epochs, seed=seed,
                        benchmarks=benchmarks).set_display_name("resolve-config")
    cfg = rc.outputs
    uri = dict(tracking_uri=mlflow_tracking_uri)
    prep = prepare(config=cfg["prepare"], **uri).set_display_name("prepare")
    base = init_model(config=cfg["init_model"], **uri).set_display_name("init-model")
    demos = build_demos(config=cfg["build_demos"], dataset=prep.outputs["dataset"], checkpoint_root=checkpoint_root,
                        **uri).set_display_name("build-demos")
    mount_checkpoints(demos, checkpoint_pvc)
    for t in (prep, base, demos):
        use_secrets(t, hub_token_secret=hub_token_secret)
    use_secrets(demos, teacher_api_key_secret=teacher_api_key_secret)
    tr = train(config=cfg["train"], dataset=prep.outputs["dataset"], demos=demos.outputs["demos"],
               base_model=base.outputs["base_model"], gpus=train_gpus, nodes=train_nodes, node_gpus=train_node_gpus,
               checkpoint_root=checkpoint_root, job_api=train_job_api, job_image=train_image, job_cpu=train_cpu,
               job_memory=train_memory, gpu_resource=gpu_accelerator, checkpoint_pvc=checkpoint_pvc,
               node_selector=gpu_node_selector, tolerations=gpu_tolerations, **uri).set_display_name("train")
    place(tr, accelerator=gpu_accelerator, gpus=train_gpus, cpu=train_cpu, memory=train_memory,
          node_selector=gpu_node_selector, tolerations=gpu_tolerations)
    mount_checkpoints(tr, checkpoint_pvc).set_caching_options(enable_caching=False)
    ev = evaluate(config=cfg["evaluate"], dataset=prep.outputs["dataset"], model=tr.outputs["model"], gpus=eval_gpus,
                  cpu=eval_cpu, memory=eval_memory, **uri).set_display_name("evaluate")
    place(ev, accelerator=gpu_accelerator, gpus=eval_gpus, cpu=eval_cpu, memory=eval_memory,
          node_selector=gpu_node_selector, tolerations=gpu_tolerations)
    mount_checkpoints(ev, checkpoint_pvc)  # where a user's reward file can live (README, Your own task and reward)
    reg = register(config=cfg["register"], model=tr.outputs["model"], eval_metrics=ev.outputs["metrics"], **uri)
    reg.set_display_name("register").set_caching_options(enable_caching=False)
    for t in (prep, base, demos, tr, ev, reg):
        use_run_id(t)
    outputs = NamedTuple("Outputs", model=Model, metrics=Metrics, registration=Artifact)
    return outputs(model=tr.outputs["model"], metrics=ev.outputs["metrics"],
                   registration=reg.outputs["registration"])
