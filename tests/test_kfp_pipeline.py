"""The Kubeflow pipelines: compiled YAML is current, the training task is placed as configured, and the
whole chain runs locally with kfp.local (subprocess runner, this interpreter, no installs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FAST, REPO

PIPELINES = REPO / "pipelines"


def _compile(out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("BRIDGERL_CPU_IMAGE", "BRIDGERL_GPU_IMAGE")}
    subprocess.run([sys.executable, str(PIPELINES / "compile.py"), "--out", str(out)], check=True, env=env,
                   capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    _compile(out)
    return out


def _docs(path: Path) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def _stale(fresh: Path, checked_in: Path) -> bool:
    sys.path.insert(0, str(PIPELINES))
    try:
        from compile import stale
    finally:
        sys.path.remove(str(PIPELINES))
    return stale(fresh, checked_in)


@pytest.mark.parametrize("name", ["bridge_pipeline", "compare_pipeline"])
def test_checked_in_yaml_is_current(compiled, name):
    assert not _stale(compiled / f"{name}.yaml", PIPELINES / f"{name}.yaml"), \
        f"pipelines/{name}.yaml is stale: run `python pipelines/compile.py` and commit it"


def test_sdk_version_stamp_alone_is_not_staleness(compiled, tmp_path):
    """A kfp patch release changes only `sdkVersion`: the checked-in files stay current."""
    fresh = compiled / "bridge_pipeline.yaml"
    text = fresh.read_text()
    assert "\nsdkVersion: kfp-" in text
    other = tmp_path / "other_sdk.yaml"
    other.write_text(text.replace("\nsdkVersion: kfp-", "\nsdkVersion: kfp-0.0.0-"))
    assert other.read_text() != text and not _stale(fresh, other)


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["component", "parameter"])
def test_uncompiled_change_is_stale(tmp_path, edit):
    """Changing a component or a pipeline parameter without recompiling is caught."""
    import shutil

    for d in ("pipelines", "components"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    params = (REPO / "params.yaml").read_text()
    if edit == "component":
        src = tmp_path / "components" / "prepare" / "component.py"
        src.write_text(src.read_text().replace('f"data.out_dir={dataset.path}"', 'f"data.out_dir={dataset.path}/x"'))
    else:
        params = params.replace("seed: 0", "seed: 1", 1)
    (tmp_path / "params.yaml").write_text(params)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("BRIDGERL_CPU_IMAGE", "BRIDGERL_GPU_IMAGE")}
    subprocess.run([sys.executable, str(tmp_path / "pipelines" / "compile.py"), "--out", str(out)], check=True,
                   env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert _stale(out / "bridge_pipeline.yaml", PIPELINES / "bridge_pipeline.yaml")
    check = subprocess.run([sys.executable, str(tmp_path / "pipelines" / "compile.py"), "--check"], env=env,
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert check.returncode == 1 and "bridge_pipeline.yaml is stale" in check.stderr  # the copy's YAML is main's


def test_parameters_mirror_params_yaml(compiled):
    spec, _ = _docs(compiled / "bridge_pipeline.yaml")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["params_yaml"]["defaultValue"] == (REPO / "params.yaml").read_text()
    assert params["overrides"]["parameterType"] == "LIST"
    # every stage receives the params content and the overrides
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare", "init-model", "build-demos", "train", "evaluate", "register"}
    for name, t in tasks.items():
        p = t["inputs"]["parameters"]
        assert p["params"]["componentInputParameter"] == "params_yaml", name
        assert p["overrides"]["componentInputParameter"] == "overrides", name


@pytest.mark.parametrize("name", ["bridge_pipeline", "compare_pipeline"])
def test_training_task_placement(compiled, name):
    spec, platform = _docs(compiled / f"{name}.yaml")
    res = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert "train_gpus" in res["accelerator"]["resourceCount"]
    assert "train_accelerator" in res["accelerator"]["resourceType"]
    assert "train_cpu" in res["resourceCpuLimit"] and "train_memory" in res["resourceMemoryLimit"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("train_node_selector")
    assert k8s["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("train_tolerations")
    assert k8s["pvcMount"][0]["pvcNameParameter"]["componentInputParameter"].endswith("checkpoint_pvc")
    assert k8s["pvcMount"][0]["mountPath"] == "/mnt/checkpoints"
    shm = k8s["emptyDirMounts"][0]
    assert (shm["mountPath"], shm["medium"]) == ("/dev/shm", "Memory")
    dag = spec["root"]["dag"]["tasks"]
    loops = [t["componentRef"]["name"] for t in dag.values() if "parameterIterator" in t]
    if loops:  # the comparison trains inside its ParallelFor
        dag = spec["components"][loops[0]]["dag"]["tasks"]
    assert dag["train"]["cachingOptions"].get("enableCache") is not True
    assert dag["train"]["retryPolicy"]["maxRetryCount"] >= 1


def test_compare_fans_out_and_collects(compiled):
    spec, _ = _docs(compiled / "compare_pipeline.yaml")
    tasks = spec["root"]["dag"]["tasks"]
    [(loop_name, loop)] = [(n, t) for n, t in tasks.items() if "parameterIterator" in t]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--methods"
    assert set(spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]) == {"train", "evaluate"}
    assert tasks["report"]["inputs"]["artifacts"]["metrics"]["taskOutputArtifact"]["producerTask"] == loop_name
    from bridgerl.train.methods import METHOD_NAMES  # every method of the one table, bridge_frozen_w included

    assert spec["root"]["inputDefinitions"]["parameters"]["methods"]["defaultValue"] == list(METHOD_NAMES)


@pytest.fixture
def local_kfp(tmp_path, monkeypatch):
    """kfp.local on this interpreter; component subprocesses import this checkout's src."""
    import kfp.local

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    sys.path.insert(0, str(REPO))
    yield tmp_path
    sys.path.remove(str(REPO))


def _run_overrides(tmp: Path) -> list[str]:
    return FAST + ["tracking.enabled=true", f"tracking.uri=sqlite:///{tmp}/mlruns.db"]


@pytest.mark.slow
def test_bridge_pipeline_runs_locally(local_kfp):
    import mlflow
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM

    from pipelines.bridge_pipeline import bridge_pipeline

    tmp = local_kfp
    run = bridge_pipeline(overrides=_run_overrides(tmp), mlflow_tracking_uri="", checkpoint_root=str(tmp / "ckpt"),
                          train_gpus=0, eval_gpus=0)
    model_dir = Path(run.outputs["model"].path)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not [k for k in model.state_dict() if "lora" in k.lower()]
    metrics = run.outputs["metrics"]
    summary = json.loads(Path(metrics.path).read_text())
    assert set(summary["benchmarks"]) == {"synthetic"}
    assert metrics.metadata["avg_accuracy"] == pytest.approx(summary["avg_accuracy"])
    assert 0.0 <= metrics.metadata["synthetic_accuracy"] <= 1.0
    # a retried training task resumes from checkpoints under <checkpoint_root>/<run id>/<label>
    assert list((tmp / "ckpt").glob("*/train/checkpoints/step-*/state.pt"))
    # results landed in MLflow: the registered challenger and every stage under one pipeline run
    reg = run.outputs["registration"].metadata
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlruns.db")
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(reg["name"], "challenger").version) == reg["version"]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stages = {r.data.tags.get("bridgerl.stage"): r.data.tags.get("bridgerl.pipeline_id") for r in runs}
    assert {"train", "evaluate", "register", "pipeline"} <= set(stages)
    assert len({stages[s] for s in ("train", "evaluate", "register")}) == 1
    # lineage under Kubeflow (no dvc.lock): the version's source run is the train run, data hashes from
    # the artifacts themselves (bridgerl.lineage)
    mv = client.get_model_version(reg["name"], reg["version"])
    [train_run] = [r for r in runs if r.data.tags.get("bridgerl.stage") == "train"]
    assert mv.run_id == train_run.info.run_id and mv.tags["train_run_id"] == train_run.info.run_id
    assert len(mv.tags["data.prepared_data"]) == len(mv.tags["data.demos"]) == 64


def _has_report_command() -> bool:
    p = subprocess.run([sys.executable, "-m", "bridgerl", "report", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return p.returncode == 0


@pytest.mark.slow
def test_compare_pipeline_runs_locally(local_kfp):
    if not _has_report_command():
        pytest.skip("`bridgerl report` is not in this checkout yet (comparison report stage)")
    from pipelines.compare_pipeline import compare_pipeline

    tmp = local_kfp
    compare_pipeline(overrides=FAST, methods=["sft", "bridge"], mlflow_tracking_uri="",
                     checkpoint_root=str(tmp / "ckpt"), train_gpus=0, eval_gpus=0)
    reports = list((tmp / "kfp").glob("*/report/report_md"))
    assert len(reports) == 1
    md = reports[0].read_text()
    assert "sft" in md and "bridge" in md
    html = next((tmp / "kfp").glob("*/report/report_html")).read_text()
    assert html.startswith("<!doctype html>")
    assert {p.parent.name for p in (tmp / "ckpt").glob("*/*/checkpoints")} == {"sft", "bridge"}
