"""`bridgerl evaluate` as a Kubeflow component: a Model artifact → per-item predictions + Metrics."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.common import GPU_IMAGE, bridgerl_cli


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False, additional_funcs=[bridgerl_cli])
def evaluate(config: str, dataset: Input[Dataset], model: Input[Model], metrics: Output[Metrics],
             predictions: Output[Dataset], tracking_uri: str = "", label: str = "", gpus: int = 1, cpu: str = "",
             memory: str = ""):
    """Accuracy of `model` on eval.benchmarks; `metrics` holds metrics/eval.json, its metadata the scalars.

    `label` (e.g. the method in a comparison) is recorded in the metadata so a report can name it.
    `gpus` is what the task was given (its accelerator limit): with 0 it evaluates with transformers on CPU.
    `cpu` / `memory` (its limits) are logged with `gpus`; passing them as inputs also carries them into a
    ParallelFor, where the KFP compiler drops parameters used only for resources.
    """
    import json

    print(f"evaluate: gpus={gpus} cpu={cpu or '-'} memory={memory or '-'}", flush=True)
    bridgerl_cli("evaluate", config, {"dataset": dataset.path, "model": model.path, "predictions": predictions.path,
                                      "metrics": metrics.path},
                 sets=[] if gpus else ["eval.backend=hf"], tracking_uri=tracking_uri)
    with open(metrics.path) as f:
        summary = json.load(f)
    metrics.log_metric("avg_accuracy", summary["avg_accuracy"])
    for name, m in summary["benchmarks"].items():
        metrics.log_metric(f"{name}_accuracy", m["accuracy"])
    if label:
        metrics.metadata["label"] = label
