"""`bridgerl register` as a Kubeflow component: log the Model to MLflow, register it with alias challenger."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.common import CPU_IMAGE, bridgerl_cli


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False, additional_funcs=[bridgerl_cli])
def register(config: str, model: Input[Model], eval_metrics: Input[Metrics], registration: Output[Artifact],
             tracking_uri: str = ""):
    """A new version of registry.model_name (alias `challenger`); `registration` holds its name/version/run."""
    import json

    bridgerl_cli("register", config, {"model": model.path, "eval_metrics": eval_metrics.path,
                                      "registration": registration.path}, tracking_uri=tracking_uri)
    with open(registration.path) as f:
        reg = json.load(f)
    registration.metadata.update({k: str(reg[k]) for k in ("name", "version", "run_id")})
