"""Training: one Trainer (trainer.py) over an engine (engines.py: plain torch or DeepSpeed ZeRO), the
table of methods (methods.py), their update rules (updates.py), losses, batches, models, data
parallelism (parallel.py) and checkpoints."""
