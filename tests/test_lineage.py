"""MLflow lineage of a real train → register on the tiny project (SQLite store, no server):
the version's source run is the train run, datasets are run inputs with digests, the parent run
holds the configuration and data hashes, the model card, system metrics, and a portable model
(requirements without local version labels; sampling params in the signature and honoured)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
from conftest import make_cfg

from bridgerl.core.io import digest
from bridgerl.stages import register, train


@pytest.fixture
def registered(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv("BRIDGERL_GIT_COMMIT", "0123abcd")
    uri = f"sqlite:///{project / 'lineage.db'}"
    cfg = make_cfg(project, "tracking.enabled=true", f"tracking.uri={uri}", "registry.model_name=lineage",
                   "tracking.system_metrics_interval_s=0.2", "train.steps=6")
    train.run(cfg, progress=False)
    m = Path(cfg.eval.metrics_file)
    m.parent.mkdir(parents=True, exist_ok=True)
    m.write_text(json.dumps({"benchmarks": {"synthetic": {"accuracy": 0.25, "n": 24}}, "avg_accuracy": 0.25,
                             "model_sha256": register.model_digest(Path(cfg.train.out_dir))}))  # as evaluate records
    res = register.run(cfg)
    from mlflow import MlflowClient

    return cfg, res, MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def test_version_links_to_train_run_with_data_and_card(registered):
    cfg, res, mlc, _ = registered
    exp = mlc.get_experiment_by_name(cfg.tracking.experiment)
    (train_run,) = mlc.search_runs([exp.experiment_id], "tags.`bridgerl.stage` = 'train'")
    mv = mlc.get_model_version("lineage", res["version"])
    assert mv.run_id == train_run.info.run_id, "the version's source run must be the run that trained it"
    model_id = mv.source.removeprefix("models:/")  # the logged model (the SQL registry keeps it as the source)
    assert mlc.get_logged_model(model_id).source_run_id == train_run.info.run_id
    assert [o.model_id for o in train_run.outputs.model_outputs] == [model_id]

    # datasets the train run read, as inputs with content digests
    inputs = {d.dataset.name: d for d in train_run.inputs.dataset_inputs}
    assert set(inputs) == {"rl_train", "rl_val", "demos"}
    rl_train = Path(cfg.data.out_dir) / "rl_train.jsonl"
    assert inputs["rl_train"].dataset.digest == digest(rl_train)[:16]
    assert {t.value for t in inputs["demos"].tags if t.key == "mlflow.data.context"} == {"demos"}

    # the version carries the artifacts' own hashes (no dvc.lock here) and the train run id
    assert mv.tags["data.prepared_data"] == digest(cfg.data.out_dir)
    assert mv.tags["data.base_model"] == digest(cfg.model.out_dir)
    assert mv.tags["train_run_id"] == train_run.info.run_id
    assert "bridge" in mv.description and "embedded" in mv.description and "avg_accuracy = 0.2500" in mv.description
    assert "model card" in mlc.get_registered_model("lineage").description

    # the parent pipeline run: resolved configuration and the hashes of what the stages wrote
    parent = mlc.get_run(train_run.data.tags["mlflow.parentRunId"])
    assert parent.data.params["train.method"] == "bridge" and parent.data.params["train.steps"] == "6"
    assert parent.data.tags["data.trained_model"] == register.model_digest(Path(cfg.train.out_dir))
    cfg_json = json.loads(Path(mlc.download_artifacts(parent.info.run_id, "config.json")).read_text())
    assert cfg_json["train"]["bridge"]["lam"] == cfg.train.bridge.lam

    # system metrics sampled during training
    assert any(k.startswith("system/cpu_utilization") for k in train_run.data.metrics), train_run.data.metrics


def test_portable_model_requirements_and_sampling_params(registered):
    import mlflow
    from packaging.requirements import Requirement

    cfg, res, mlc, uri = registered
    mlflow.set_tracking_uri(uri)
    model_uri = f"models:/lineage/{res['version']}"
    reqs = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().split()
    assert reqs and not [r for r in reqs if "+" in r], f"local version labels no index serves: {reqs}"
    for line in reqs:  # resolvable offline against what is installed (torch 2.13.0+cpu satisfies torch==2.13.0)
        req = Requirement(line)
        assert req.specifier.contains(metadata.version(req.name), prereleases=True), line

    info = mlflow.models.get_model_info(model_uri)
    params = {p.name: p.default for p in info.signature.params}
    assert {"temperature", "top_p", "do_sample", "max_new_tokens"} <= set(params)
    model = mlflow.pyfunc.load_model(model_uri)
    prompt = [register.INPUT_EXAMPLE]
    greedy = model.predict(prompt)
    assert greedy == model.predict(prompt), "greedy serving must be deterministic"
    outs = {model.predict(prompt, params={"do_sample": True, "temperature": 5.0, "top_p": 1.0})[0] for _ in range(4)}
    assert len(outs) > 1, "temperature/top_p sent as params must reach generation"


def test_mlflow_models_serve_answers_with_sampling_params(registered, tmp_path):
    """`mlflow models serve` of the registered version (in this environment, which satisfies the logged
    requirements as the previous test checks) answers /invocations, greedy and with temperature/top_p."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    cfg, res, _, uri = registered
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/lineage/{res['version']}",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server not up:\n" + (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)

        def ask(params=None):
            body = {"inputs": [register.INPUT_EXAMPLE], **({"params": params} if params else {})}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())["predictions"]

        greedy = ask()
        assert len(greedy) == 1 and isinstance(greedy[0], str)
        sampled = {ask({"do_sample": True, "temperature": 5.0, "top_p": 1.0})[0] for _ in range(4)}
        assert len(sampled) > 1, "sampling params sent to the server must reach generation"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
