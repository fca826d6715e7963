"""Every method on the same data, base model, demos and budget, in parallel; then a comparison report.

prepare → init-model → build-demos once; for each of `methods` (ParallelFor): train → evaluate;
then `bridgerl report` over the per-method eval Metrics (a Markdown and an HTML artifact).
Parameters are those of the bridge pipeline (params.yaml content, overrides, training placement).
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
from components.train.component import train  # noqa: E402
from pipelines.bridge_pipeline import CHECKPOINT_MOUNT, MLFLOW_URI, PARAMS_YAML, configure_training  # noqa: E402

if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
from bridgerl.train.methods import METHOD_NAMES  # noqa: E402  (the one table of methods)

METHODS = list(METHOD_NAMES)


@dsl.pipeline(name="bridgerl-compare", description="BRIDGE against the baselines on one budget, with a report.")
def compare_pipeline(
    params_yaml: str = PARAMS_YAML,
    overrides: list = [],
    methods: list = METHODS,
    mlflow_tracking_uri: str = MLFLOW_URI,
    train_accelerator: str = "nvidia.com/gpu",
    train_gpus: int = 1,
    train_cpu: str = "8",
    train_memory: str = "64Gi",
    train_node_selector: dict = {},
    train_tolerations: list = [],
    train_nodes: int = 1,
    train_node_gpus: int = 8,
    train_job_api: str = "trainer",
    train_image: str = GPU_IMAGE,
    checkpoint_pvc: str = "bridgerl-checkpoints",
    checkpoint_root: str = CHECKPOINT_MOUNT,
    eval_gpus: int = 1,
):
    """`methods` run side by side (each its own training pod); `overrides` apply to all of them."""
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    common = dict(params=params_yaml, overrides=overrides, run_id=run_id, tracking_uri=mlflow_tracking_uri)
    prep = prepare(**common).set_display_name("prepare")
    base = init_model(**common).set_display_name("init-model")
    demos = build_demos(**common, dataset=prep.outputs["dataset"]).set_display_name("build-demos")
    with dsl.ParallelFor(methods) as method:
        tr = train(**common, dataset=prep.outputs["dataset"], demos=demos.outputs["demos"],
                   base_model=base.outputs["base_model"], label=method, method=method, gpus=train_gpus,
                   nodes=train_nodes, node_gpus=train_node_gpus, checkpoint_root=checkpoint_root,
                   job_api=train_job_api, job_image=train_image,
                   job_cpu=train_cpu, job_memory=train_memory, gpu_resource=train_accelerator,
                   checkpoint_pvc=checkpoint_pvc, node_selector=train_node_selector,
                   tolerations=train_tolerations).set_display_name("train")
        configure_training(tr, accelerator=train_accelerator, gpus=train_gpus, cpu=train_cpu, memory=train_memory,
                           node_selector=train_node_selector, tolerations=train_tolerations,
                           checkpoint_pvc=checkpoint_pvc)
        ev = evaluate(**common, dataset=prep.outputs["dataset"], model=tr.outputs["model"], label=method,
                      gpus=eval_gpus)
        ev.set_display_name("evaluate").set_accelerator_type(train_accelerator).set_accelerator_limit(eval_gpus)
    report(metrics=dsl.Collected(ev.outputs["metrics"])).set_display_name("report")
