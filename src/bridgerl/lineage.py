"""Lineage in MLflow from the artifacts' own content hashes (no dvc.lock needed, so it works the same
under `dvc repro` and under Kubeflow).

- `digest(path)`: sha256 of a file, or of a directory (relative paths and contents of every file).
- Each stage run logs the data files it reads as MLflow dataset inputs (`mlflow.log_input`, a
  `MetaDataset` whose digest is the file's sha256; context training / validation / demos /
  evaluation) and the sha256 of every input and output directory as tags `bridgerl.input.<key>` /
  `bridgerl.output.<key>`; the output hashes also go on the parent pipeline run as `data.<key>`.
- The train run is tagged `bridgerl.output.trained_model` with the trained model's hash, which is how
  `bridgerl register` finds the run that trained the model it registers (`train_run_for`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from bridgerl.config import Config
from bridgerl.io import tree_digest

log = logging.getLogger(__name__)

INPUT_TAG = "bridgerl.input."
OUTPUT_TAG = "bridgerl.output."
PARENT_TAG = "data."


def digest(path: str | Path) -> str:
    """sha256 of a file, or of a directory's relative paths and contents (`io.tree_digest`, the model hash
    `evaluate` records and `register` checks)."""
    path = Path(path)
    if path.is_dir():
        return tree_digest(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def directories(cfg: Config) -> dict[str, str]:
    """Lineage key → directory of each artifact the pipeline passes between stages."""
    return {"prepared_data": cfg.data.out_dir, "demos": cfg.demos.out_dir, "base_model": cfg.model.out_dir,
            "trained_model": cfg.train.out_dir, "eval_outputs": cfg.eval.out_dir}


# stage → (artifacts it reads, artifacts it writes), as lineage keys of `directories`
STAGE_ARTIFACTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prepare": ((), ("prepared_data",)),
    "init-model": ((), ("base_model",)),
    "build-demos": (("prepared_data",), ("demos",)),
    "train": (("prepared_data", "demos", "base_model"), ("trained_model",)),
    "evaluate": (("trained_model", "prepared_data"), ("eval_outputs",)),
    "register": (("trained_model",), ()),
}


def datasets(cfg: Config, stage: str) -> list[tuple[Path, str]]:
    """(file, context) of the data files a stage reads, for `mlflow.log_input`."""
    data, demos = Path(cfg.data.out_dir), Path(cfg.demos.out_dir)
    files = {"train": [(data / "rl_train.jsonl", "training"), (data / "rl_val.jsonl", "validation"),
                       (demos / "demos.jsonl", "demos")],
             "build-demos": [(data / "rl_train.jsonl", "training")],
             "evaluate": [(p, "evaluation") for p in sorted((data / "eval").glob("*.jsonl"))]}.get(stage, [])
    return [(p, ctx) for p, ctx in files if p.is_file()]


def log_inputs(mlflow, cfg: Config, stage: str) -> dict[str, str]:
    """Log a stage's data files as dataset inputs and its input directories' hashes as tags."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    for path, context in datasets(cfg, stage):
        ds = MetaDataset(LocalArtifactDatasetSource(str(path.resolve())), name=path.stem, digest=digest(path)[:16])
        mlflow.log_input(ds, context=context)
    tags = {}
    dirs = directories(cfg)
    for key in STAGE_ARTIFACTS.get(stage, ((), ()))[0]:
        if Path(dirs[key]).exists():
            tags[INPUT_TAG + key] = digest(dirs[key])
    if tags:
        mlflow.set_tags(tags)
    return tags


def log_outputs(mlflow, client, cfg: Config, stage: str, parent_run_id: str | None) -> dict[str, str]:
    """Tag the stage run (and the parent pipeline run) with the hashes of what the stage wrote."""
    dirs = directories(cfg)
    hashes = {key: digest(dirs[key]) for key in STAGE_ARTIFACTS.get(stage, ((), ()))[1] if Path(dirs[key]).exists()}
    if hashes:
        mlflow.set_tags({OUTPUT_TAG + k: v for k, v in hashes.items()})
        if parent_run_id:
            for k, v in hashes.items():
                client.set_tag(parent_run_id, PARENT_TAG + k, v)
    return hashes


def train_run_for(client, experiment_ids: list[str], model_sha256: str):
    """The most recent finished train run whose output is this model, or None."""
    runs = client.search_runs(experiment_ids, filter_string=f"tags.`{OUTPUT_TAG}trained_model` = '{model_sha256}' "
                              f"and tags.`bridgerl.stage` = 'train'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0] if runs else None
