"""`bridgerl init-model` as a Kubeflow component: the base model directory → a Model artifact."""

from kfp import dsl
from kfp.dsl import Model, Output

from components.common import CPU_IMAGE, bridgerl_cli


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False, additional_funcs=[bridgerl_cli])
def init_model(config: str, base_model: Output[Model], tracking_uri: str = ""):
    """The base model (`model.base`: embedded tiny LM, hub id or directory) written into `base_model`."""
    bridgerl_cli("init-model", config, {"base_model": base_model.path}, tracking_uri=tracking_uri)
