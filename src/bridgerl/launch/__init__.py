"""Starting training on more than one process: torchrun on this node (local), Kubeflow Trainer TrainJobs and
PyTorchJobs on several nodes (k8s)."""
