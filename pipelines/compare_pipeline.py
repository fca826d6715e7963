"""Every method on the same data, base model, demos and budget, in parallel; then a comparison report.

resolve-config → prepare → init-model → build-demos once; for each of `methods` (ParallelFor, at
most `PARALLELISM` training pods at once): resolve-config with that method → train → evaluate;
then `bridgerl report` over the per-method eval Metrics (a Markdown and an HTML artifact).
Parameters are those of the bridge pipeline (pipelines/bridge_pipeline.py documents them) without
`method`.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kfp import dsl  # noqa: E402

from components.build_demos.component import build_demos  # noqa: E402
from components.common import GPU_IMAGE  # noqa: E402
from components.evaluate.component import evaluate  # noqa: E402
from components.init_model.component import init_model  # noqa: E402
from components.prepare.component import prepare  # noqa: E402
from components.report.component import report  # noqa: E402
from components.resolve_config.component import resolve_config  # noqa: E402
from components.train.component import train  # noqa: E402
from pipelines.bridge_pipeline import HUB_TOKEN_SECRET, MLFLOW_URI, PARAMS_YAML, TEACHER_KEY_SECRET, UNSET  # noqa: E402
from pipelines.placement import CHECKPOINT_MOUNT, PLACEMENT, mount_checkpoints, place, use_run_id, use_secrets  # noqa: E402

if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
from bridgerl.core.methods import METHOD_NAMES  # noqa: E402  (the one table of methods)

METHODS = list(METHOD_NAMES)
PARALLELISM = 3  # training pods of the comparison at once (a compile-time setting of KFP's ParallelFor)


@dsl.pipeline(name="bridgerl-compare", description="BRIDGE against the baselines on one budget, with a report.")
def compare_pipeline(
    params_yaml: str = PARAMS_YAML,
    overrides: list = [],
    methods: list = METHODS,
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
):
    """`methods` run side by side (each its own training pod, at most PARALLELISM at once); the run
    parameters and `overrides` apply to all of them. The rest as in the bridge pipeline."""
    rc = resolve_config(params=params_yaml, overrides=overrides, preset=preset, base_model=base_model,
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
        use_run_id(t)
    use_secrets(demos, teacher_api_key_secret=teacher_api_key_secret)
    with dsl.ParallelFor(methods, parallelism=PARALLELISM) as method:
        # each method's own train/evaluate configuration (train.method set); cached, so it costs nothing twice
        mrc = resolve_config(params=params_yaml, overrides=overrides, method=method, preset=preset,
                             base_model=base_model, lr_theta=lr_theta, lr_w=lr_w, lam=lam, steps=steps, epochs=epochs,
                             seed=seed, benchmarks=benchmarks).set_display_name("resolve-config")
        tr = train(config=mrc.outputs["train"], dataset=prep.outputs["dataset"], demos=demos.outputs["demos"],
                   base_model=base.outputs["base_model"], label=method, gpus=train_gpus,
                   nodes=train_nodes, node_gpus=train_node_gpus, checkpoint_root=checkpoint_root,
                   job_api=train_job_api, job_image=train_image, job_cpu=train_cpu, job_memory=train_memory,
                   gpu_resource=gpu_accelerator, checkpoint_pvc=checkpoint_pvc, node_selector=gpu_node_selector,
                   tolerations=gpu_tolerations, **uri).set_display_name("train")
        place(tr, accelerator=gpu_accelerator, gpus=train_gpus, cpu=train_cpu, memory=train_memory,
              node_selector=gpu_node_selector, tolerations=gpu_tolerations)
        mount_checkpoints(tr, checkpoint_pvc).set_caching_options(enable_caching=False)
        ev = evaluate(config=mrc.outputs["evaluate"], dataset=prep.outputs["dataset"], model=tr.outputs["model"],
                      label=method, gpus=eval_gpus, cpu=eval_cpu, memory=eval_memory,
                      **uri).set_display_name("evaluate")
        place(ev, accelerator=gpu_accelerator, gpus=eval_gpus, cpu=eval_cpu, memory=eval_memory,
              node_selector=gpu_node_selector, tolerations=gpu_tolerations)
        mount_checkpoints(ev, checkpoint_pvc)  # a user's reward file can live there (README, Your own task)
        for t in (tr, ev):
            use_run_id(t)
    report(metrics=dsl.Collected(ev.outputs["metrics"])).set_display_name("report")
