"""Where the GPU tasks run: one set of placement parameters and one helper for train and evaluate.

Both pipelines take the same placement parameters (`PLACEMENT` gives their defaults): the GPU
resource name, node selector and tolerations shared by every GPU task (so both schedule on tainted
GPU nodes), and per task its GPU count, CPU and memory. `place()` applies them to a task, with a
memory-backed /dev/shm (NCCL, data loader workers, vLLM). Secrets arrive as environment variables
from Kubernetes secrets named by parameters (`use_secrets`), and every task learns its run id from its
pod (`use_run_id`), not from an input, so the id stays out of KFP's cache key.
"""

from __future__ import annotations

from kfp import dsl, kubernetes

CHECKPOINT_MOUNT = "/mnt/checkpoints"  # where the checkpoint PVC is mounted (train, build-demos)
SHM_SIZE = "16Gi"  # /dev/shm for NCCL and data loader workers

PLACEMENT = {  # parameter → default, the same in every pipeline
    "gpu_accelerator": "nvidia.com/gpu",
    "gpu_node_selector": {},
    "gpu_tolerations": [],
    "train_gpus": 1,
    "train_cpu": "8",
    "train_memory": "64Gi",
    "eval_gpus": 1,
    "eval_cpu": "4",
    "eval_memory": "32Gi",
}

# Kubernetes secret → environment variable; the secret names are pipeline parameters. Optional: a task
# starts without them (the embedded default needs neither).
HUB_TOKEN_KEYS = {"token": "HF_TOKEN"}
TEACHER_KEY_KEYS = {"api_key": "OPENAI_API_KEY"}  # demos.endpoint.api_key_env's default


def place(task: dsl.PipelineTask, *, accelerator, gpus, cpu, memory, node_selector, tolerations,
          shm_size: str = SHM_SIZE) -> dsl.PipelineTask:
    """GPUs, CPU and memory (request = limit), node selector, tolerations and /dev/shm for a GPU task."""
    task.set_accelerator_type(accelerator).set_accelerator_limit(gpus)
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=shm_size)
    return task


def mount_checkpoints(task: dsl.PipelineTask, pvc) -> dsl.PipelineTask:
    """The checkpoint PVC at CHECKPOINT_MOUNT, and retries that resume from it after a preemption."""
    kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=CHECKPOINT_MOUNT)
    task.set_retry(num_retries=2, backoff_duration="60s")
    return task


def use_run_id(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """KFP_RUN_ID from the pod's `pipeline/runid` label (Downward API): not an input, not in the cache key."""
    return kubernetes.use_field_path_as_env(task, env_name="KFP_RUN_ID",
                                            field_path="metadata.labels['pipeline/runid']")


def use_secrets(task: dsl.PipelineTask, *, hub_token_secret=None, teacher_api_key_secret=None) -> dsl.PipelineTask:
    if hub_token_secret is not None:
        kubernetes.use_secret_as_env(task, secret_name=hub_token_secret, secret_key_to_env=HUB_TOKEN_KEYS,
                                     optional=True)
    if teacher_api_key_secret is not None:
        kubernetes.use_secret_as_env(task, secret_name=teacher_api_key_secret, secret_key_to_env=TEACHER_KEY_KEYS,
                                     optional=True)
    return task
