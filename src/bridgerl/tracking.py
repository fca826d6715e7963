"""MLflow tracking for every stage: where the store is, one run per stage grouped under a pipeline run.

No server is needed: unless `tracking.uri` or `$MLFLOW_TRACKING_URI` is set, runs go to a SQLite
store `mlruns.db` in the working directory (git-ignored). Each stage run is tagged with the git
commit and the stage name and is nested under a parent run for the pipeline, found by the tag
`bridgerl.pipeline_id`: `$BRIDGERL_PIPELINE_ID` when an orchestrator sets it (Kubeflow passes its
run id), else a hash of the git commit and the resolved configuration (one `dvc repro`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

from bridgerl.config import Config

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def git_commit() -> str:
    env = os.environ.get("BRIDGERL_GIT_COMMIT")
    if env:
        return env
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except Exception:
        return "unknown"


def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(cfg.tracking.local_db).resolve()}"


def pipeline_id(cfg: Config) -> str:
    env = os.environ.get("BRIDGERL_PIPELINE_ID")
    if env:
        return env
    return hashlib.sha256(f"{git_commit()}:{cfg.digest()}".encode()).hexdigest()[:16]


def _parent_run(client, experiment_id: str, pid: str) -> str:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`bridgerl.pipeline_id` = '{pid}' "
                              f"and tags.`bridgerl.stage` = 'pipeline'", max_results=1)
    if runs:
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"pipeline-{pid[:8]}",
                            tags={"bridgerl.pipeline_id": pid, "bridgerl.stage": "pipeline",
                                  "mlflow.source.git.commit": git_commit()})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


class _NoRun:
    """Stand-in when tracking is disabled: every logging call is a no-op."""

    run_id = None

    def __getattr__(self, name):
        return lambda *a, **k: None


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, run_id: str | None = None, log_params: bool = True,
              enabled: bool = True) -> Iterator:
    """Start (or, with run_id, resume) the MLflow run of one stage; yields the `mlflow` module, or a
    stand-in whose logging calls do nothing when tracking is off or `enabled` is False (e.g. on the
    ranks other than 0 of a data-parallel job)."""
    if not (enabled and cfg.tracking.enabled):
        yield _NoRun()
        return
    import mlflow

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(cfg))  # (also exports MLFLOW_TRACKING_URI: restored below)
    try:
        with _stage_run(cfg, stage, run_id, log_params) as m:
            yield m
    finally:
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


@contextlib.contextmanager
def _stage_run(cfg: Config, stage: str, run_id: str | None, log_params: bool) -> Iterator:
    import mlflow
    from mlflow.tracking import MlflowClient

    exp = mlflow.set_experiment(cfg.tracking.experiment)
    pid = pipeline_id(cfg)
    if run_id is None:
        parent = _parent_run(MlflowClient(), exp.experiment_id, pid)
        tags = {"bridgerl.stage": stage, "bridgerl.pipeline_id": pid, "mlflow.parentRunId": parent,
                "mlflow.source.git.commit": git_commit(), "bridgerl.config_digest": cfg.digest()}
        kfp_run = os.environ.get("KFP_RUN_ID")
        if kfp_run:
            tags["kubeflow.run_id"] = kfp_run
        ctx = mlflow.start_run(run_name=stage, tags=tags)
    else:
        ctx = mlflow.start_run(run_id=run_id)
    with ctx:
        if log_params and run_id is None:
            params = {k: ("" if v is None else str(v))[:6000] for k, v in cfg.flat().items()}
            mlflow.log_params(params)
        yield mlflow
