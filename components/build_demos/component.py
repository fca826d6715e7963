"""`bridgerl build-demos` as a Kubeflow component: verified SFT demonstrations → a Dataset artifact.

The teacher's samples are journaled on the checkpoint volume, under a key made from this task's
configuration, so a retried (preempted) task, or a later run with the same settings, resumes from
the samples already paid for instead of asking the teacher again.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components.common import CPU_IMAGE, bridgerl_cli


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False, additional_funcs=[bridgerl_cli])
def build_demos(config: str, dataset: Input[Dataset], demos: Output[Dataset], demo_card: Output[Markdown],
                checkpoint_root: str = "", tracking_uri: str = ""):
    """Demonstrations for the prepared RL prompts (decontaminated against the eval sets) into `demos`;
    the journal lives in `<checkpoint_root>/demos-journal/<config digest>` (a temporary folder when empty)."""
    import hashlib
    import os
    import shutil

    sets = []
    if checkpoint_root:
        key = hashlib.sha256(config.encode()).hexdigest()[:16]
        sets.append(f"demos.journal_dir={os.path.join(checkpoint_root, 'demos-journal', key)}")
    bridgerl_cli("build-demos", config, {"dataset": dataset.path, "demos": demos.path}, sets=sets,
                 tracking_uri=tracking_uri)
    shutil.copyfile(f"{demos.path}/demo_card.md", demo_card.path)
