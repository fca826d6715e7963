"""MLflow tracking for every stage: where the store is, one run per stage grouped under a pipeline run.

No server is needed: unless `tracking.uri` or `$MLFLOW_TRACKING_URI` is set, runs go to a SQLite
store `tracking.local_db` (default `mlruns.db`, git-ignored) resolved from the project root, not the
working directory: `$DVC_ROOT` (DVC sets it to the real repository for `dvc exp run --temp/--queue`,
which run in a throw-away copy), else the nearest directory above holding dvc.yaml or params.yaml.
Each stage run is tagged with the git commit and the stage name and is nested under a parent run
for the pipeline, found by the tag `bridgerl.pipeline_id`: `$BRIDGERL_PIPELINE_ID` when an
orchestrator sets it (Kubeflow passes its run id), else a hash of the git commit and the resolved
configuration (one `dvc repro`). The parent run carries the resolved configuration (params and
`config.json` from the stage that created it, `config/<stage>.json` from each stage) and the hashes
of the artifacts the stages wrote (bridgerl.tracking.lineage); the train run logs MLflow system metrics
(CPU/GPU, memory) when `tracking.system_metrics` is on.
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


def project_root(start: Path | None = None) -> Path:
    """$DVC_ROOT, else the nearest directory (from `start`, default the working directory) holding
    dvc.yaml or params.yaml, else the working directory."""
    env = os.environ.get("DVC_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists() or (d / "params.yaml").exists():
            return d
    return here


def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = Path(cfg.tracking.local_db).expanduser()
    return f"sqlite:///{db if db.is_absolute() else project_root() / db}"


def pipeline_id(cfg: Config) -> str:
    env = os.environ.get("BRIDGERL_PIPELINE_ID")
    if env:
        return env
    return hashlib.sha256(f"{git_commit()}:{cfg.digest()}".encode()).hexdigest()[:16]


def _parent_run(client, experiment_id: str, pid: str, cfg: Config) -> str:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`bridgerl.pipeline_id` = '{pid}' "
                              f"and tags.`bridgerl.stage` = 'pipeline'", max_results=1)
    if runs:
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"pipeline-{pid[:8]}",
                            tags={"bridgerl.pipeline_id": pid, "bridgerl.stage": "pipeline",
                                  "mlflow.source.git.commit": git_commit()})
    from mlflow.entities import Param

    rid = run.info.run_id
    params = [Param(k, ("" if v is None else str(v))[:6000]) for k, v in cfg.flat().items()]
    for i in range(0, len(params), 100):  # the REST API takes at most 100 params per batch
        client.log_batch(rid, params=params[i:i + 100])
    client.log_dict(rid, cfg.loggable(), "config.json")
    client.set_tag(rid, "bridgerl.config_digest", cfg.digest())
    client.set_terminated(rid)
    return rid


class _NoRun:
    """Stand-in when tracking is disabled: every logging call is a no-op."""

    run_id = None

    def __getattr__(self, name):
        return lambda *a, **k: None


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, run_id: str | None = None, log_params: bool = True,
              enabled: bool = True, tags: dict[str, str] | None = None) -> Iterator:
    """Start (or, with run_id, resume) the MLflow run of one stage; yields the `mlflow` module, or a
    stand-in whose logging calls do nothing when tracking is off or `enabled` is False (e.g. on the
    ranks other than 0 of a data-parallel job). `tags` are set when the run is created (a run killed at
    once still has them)."""
    if not (enabled and cfg.tracking.enabled):
        yield _NoRun()
        return
    import mlflow

    init_local_store(cfg)
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(cfg))  # (also exports MLFLOW_TRACKING_URI: restored below)
    try:
        with _stage_run(cfg, stage, run_id, log_params, tags or {}) as m:
            yield m
    finally:
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


@contextlib.contextmanager
def _stage_run(cfg: Config, stage: str, run_id: str | None, log_params: bool, extra_tags: dict[str, str]) -> Iterator:
    import mlflow
    from mlflow.tracking import MlflowClient

    from bridgerl.tracking import lineage

    exp = mlflow.set_experiment(cfg.tracking.experiment)
    pid = pipeline_id(cfg)
    client = MlflowClient()
    system_metrics = stage == "train" and cfg.tracking.system_metrics
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(cfg.tracking.system_metrics_interval_s)
        mlflow.set_system_metrics_samples_before_logging(1)
    parent = None
    if run_id is None:
        parent = _parent_run(client, exp.experiment_id, pid, cfg)
        tags = {"bridgerl.stage": stage, "bridgerl.pipeline_id": pid, "mlflow.parentRunId": parent,
                "mlflow.source.git.commit": git_commit(), "bridgerl.config_digest": cfg.digest(), **extra_tags}
        kfp_run = os.environ.get("KFP_RUN_ID")
        if kfp_run:
            tags["kubeflow.run_id"] = kfp_run
        if os.environ.get("DVC_EXP_NAME"):  # `dvc exp run`
            tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
        client.log_dict(parent, cfg.loggable(), f"config/{stage}.json")
        ctx = mlflow.start_run(run_name=stage, tags=tags, log_system_metrics=system_metrics or None)
    else:
        ctx = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics or None)
    with ctx as active:
        if log_params and run_id is None:
            params = {k: ("" if v is None else str(v))[:6000] for k, v in cfg.flat().items()}
            mlflow.log_params(params)
        if run_id is None:
            lineage.log_inputs(mlflow, cfg, stage)
        yield mlflow
        lineage.log_outputs(mlflow, client, cfg, stage,
                            parent or active.data.tags.get("mlflow.parentRunId"))


def init_local_store(cfg: Config) -> None:
    """Create the local SQLite store (when it is the one in use and does not exist yet) atomically.

    MLflow builds its tables through a series of schema migrations; a process killed between two leaves
    a database that no later run can open (`table _alembic_tmp_... already exists`). So the store is
    built under a temporary name and linked into place only when complete (a link, not a rename: a
    concurrent first run that got there first keeps its database).
    """
    uri = tracking_uri(cfg)
    if not cfg.tracking.enabled or not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if path.exists():
        return
    from mlflow.tracking._tracking_service.utils import _get_store

    from bridgerl.core.io import _publish_mode, _tmp_sibling

    tmp = _tmp_sibling(path, is_dir=False)
    try:
        store = _get_store(store_uri=f"sqlite:///{tmp}")
        store.engine.dispose()
        _publish_mode(tmp, is_dir=False)  # the umask's modes, as every output (tempfile's are 0600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
