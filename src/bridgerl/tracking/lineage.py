"""Lineage in MLflow from the artifacts' own content hashes (no dvc.lock needed, so it works the same
under `dvc repro` and under Kubeflow).

- Hashes are `core.io.digest` (sha256 of a file, or of a directory's relative paths and contents).
- Each stage run logs the data files it reads as MLflow dataset inputs (`mlflow.log_input`, a
  `MetaDataset` whose digest is the file's sha256; context training / validation / demos /
  evaluation) and the sha256 of every input and output directory as tags `bridgerl.input.<key>` /
  `bridgerl.output.<key>`; the output hashes also go on the parent pipeline run as `data.<key>`.
- The train run is tagged `bridgerl.output.trained_model` with the trained model's hash, which is how
  `bridgerl register` finds the run that trained the model it registers (`train_run_for`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from bridgerl.config import Config
from bridgerl.core.io import digest
from bridgerl.core.stage_table import IO, STAGES

log = logging.getLogger(__name__)

INPUT_TAG = "bridgerl.input."
OUTPUT_TAG = "bridgerl.output."
PARENT_TAG = "data."


def _hashes(cfg: Config, ios: tuple[IO, ...]) -> dict[str, str]:
    """Lineage key → sha256 of each passed-between-stages directory among `ios` that is there."""
    return {x.dir.lineage: digest(p) for x in ios if x.dir is not None and (p := x.dir.path(cfg)).exists()}


def datasets(cfg: Config, stage: str) -> list[tuple[Path, str]]:
    """(file, context) of the data files a stage reads (`Stage.reads` in the stage table), for `mlflow.log_input`;
    a folder stands for its `*.jsonl` files."""
    s = STAGES.get(stage)
    if s is None:
        return []
    out = []
    for f in s.reads:
        [where] = [x.dir for x in s.inputs if x.dir is not None and f in x.dir.files]
        p = f.at(where.path(cfg))
        out += [(q, f.context) for q in sorted(p.glob("*.jsonl"))] if p.is_dir() else [(p, f.context)]
    return [(p, ctx) for p, ctx in out if p.is_file()]


def log_inputs(mlflow, cfg: Config, stage: str) -> dict[str, str]:
    """Log a stage's data files as dataset inputs and its input directories' hashes as tags."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    for path, context in datasets(cfg, stage):
        ds = MetaDataset(LocalArtifactDatasetSource(str(path.resolve())), name=path.stem, digest=digest(path)[:16])
        mlflow.log_input(ds, context=context)
    s = STAGES.get(stage)
    tags = {INPUT_TAG + k: v for k, v in _hashes(cfg, s.inputs).items()} if s is not None else {}
    if tags:
        mlflow.set_tags(tags)
    return tags


def log_outputs(mlflow, client, cfg: Config, stage: str, parent_run_id: str | None) -> dict[str, str]:
    """Tag the stage run (and the parent pipeline run) with the hashes of what the stage wrote."""
    s = STAGES.get(stage)
    hashes = _hashes(cfg, s.outputs) if s is not None else {}
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
