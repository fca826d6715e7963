"""`bridgerl prepare` as a Kubeflow component: RL prompts + evaluation sets → a Dataset artifact."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from components.common import CPU_IMAGE, bridgerl_cli


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False, additional_funcs=[bridgerl_cli])
def prepare(config: str, dataset: Output[Dataset], data_card: Output[Markdown], tracking_uri: str = ""):
    """Prepared data (rl_train/rl_val/eval JSONL + data card, docs/stages.md) written into `dataset`.
    `config` is this stage's configuration from resolve-config."""
    import shutil

    bridgerl_cli("prepare", config, {"dataset": dataset.path}, tracking_uri=tracking_uri)
    shutil.copyfile(f"{dataset.path}/data_card.md", data_card.path)
