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
from bridgerl.core.io import tree_digest

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


# lineage key of each directory the pipeline passes between stages, by the configuration key holding it;
# which stage reads and writes which comes from the stage table (bridgerl.stages.contracts)
LINEAGE_KEYS = {"data.out_dir": "prepared_data", "demos.out_dir": "demos", "model.out_dir": "base_model",
                "train.out_dir": "trained_model", "eval.out_dir": "eval_outputs"}


def stage_artifacts(stage: str) -> tuple[dict[str, str], dict[str, str]]:
    """(lineage key → config key) of the directories `stage` reads and of those it writes."""
    from bridgerl.stages.contracts import STAGES

    s = STAGES.get(stage)
    if s is None:
        return {}, {}
    pick = lambda ios: {LINEAGE_KEYS[x.key]: x.key for x in ios if x.key in LINEAGE_KEYS}  # noqa: E731
    return pick(s.inputs), pick(s.outputs)


def _path(cfg: Config, key: str) -> Path:
    from bridgerl.stages.contracts import lookup_attr

    return Path(lookup_attr(cfg, key))


def datasets(cfg: Config, stage: str) -> list[tuple[Path, str]]:
    """(file, context) of the data files a stage reads, for `mlflow.log_input`."""
    if stage not in ("train", "build-demos", "evaluate"):  # (reads only the paths this stage's contract has)
        return []
    data = Path(cfg.data.out_dir)
    if stage == "train":
        demos = Path(cfg.demos.out_dir)
        files = [(data / "rl_train.jsonl", "training"), (data / "rl_val.jsonl", "validation"),
                 (demos / "demos.jsonl", "demos")]
    elif stage == "build-demos":
        files = [(data / "rl_train.jsonl", "training")]
    else:
        files = [(p, "evaluation") for p in sorted((data / "eval").glob("*.jsonl"))]
    return [(p, ctx) for p, ctx in files if p.is_file()]


def log_inputs(mlflow, cfg: Config, stage: str) -> dict[str, str]:
    """Log a stage's data files as dataset inputs and its input directories' hashes as tags."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    for path, context in datasets(cfg, stage):
        ds = MetaDataset(LocalArtifactDatasetSource(str(path.resolve())), name=path.stem, digest=digest(path)[:16])
        mlflow.log_input(ds, context=context)
    tags = {}
    for key, cfg_key in stage_artifacts(stage)[0].items():
        if _path(cfg, cfg_key).exists():
            tags[INPUT_TAG + key] = digest(_path(cfg, cfg_key))
    if tags:
        mlflow.set_tags(tags)
    return tags


def log_outputs(mlflow, client, cfg: Config, stage: str, parent_run_id: str | None) -> dict[str, str]:
    """Tag the stage run (and the parent pipeline run) with the hashes of what the stage wrote."""
    hashes = {key: digest(_path(cfg, cfg_key)) for key, cfg_key in stage_artifacts(stage)[1].items()
              if _path(cfg, cfg_key).exists()}
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
