"""Everything that talks to MLflow: the retrying client (client), a stage's run and its parent pipeline
run (runs), lineage tags from content hashes (lineage), and the model registry with its promotion gate
(registry)."""
