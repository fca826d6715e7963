"""The MLflow registry on both stores users have: the default local SQLite file (no server; MLflow
answers alias versions as ints there) and a real `mlflow server` on 127.0.0.1 over REST (strings).

The `server` fixture runs each registry test against both; tests that stop the server use the REST
one only. One server per module (started and stopped by the `mlflow_server` fixture). Each test uses
its own registered model name and registers the tiny project's base model with a hand-written eval
metrics file (recording that model's hash, as `bridgerl evaluate` does), so the promotion gate sees
the metric values the test chooses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import FAST, REPO, MlflowServer, _free_port, make_cfg, path_overrides, run_cli

from bridgerl.stages import register
from bridgerl.tracking import registry


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    yield server
    server.stop()


class SqliteStore:
    """The default store: a SQLite file, no server (`tracking.uri` unset gives the same, in the project)."""

    def __init__(self, root: Path):
        self.root, self.uri = root, f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    return SqliteStore(tmp_path_factory.mktemp("sqlite_store"))


@pytest.fixture
def rest_server(mlflow_server):
    """The module's server, restarted first if an earlier test stopped it."""
    if mlflow_server.proc is None or mlflow_server.proc.poll() is not None:
        mlflow_server.start()
    return mlflow_server


@pytest.fixture(params=["sqlite", "rest"])
def server(request):
    """Each registry test on both stores."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_store")
    return request.getfixturevalue("rest_server")


def registry_overrides(server: MlflowServer, name: str) -> list[str]:
    return ["tracking.enabled=true", f"tracking.uri={server.uri}", f"registry.model_name={name}",
            "registry.max_retries=1", "registry.backoff_s=0.1", "registry.timeout_s=20"]


def cfg_with_metric(project: Path, server: MlflowServer, name: str, accuracy: float, *extra: str):
    """A config for model `name` whose eval metrics file says `accuracy` (an evaluation of models/base)."""
    cfg = make_cfg(project, *registry_overrides(server, name), *extra)
    path = Path(cfg.eval.metrics_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {"benchmarks": {"synthetic": {"accuracy": accuracy, "n": 24}}, "avg_accuracy": accuracy,
               "model_sha256": register.model_digest(project / "models" / "base")}
    path.write_text(json.dumps(metrics))
    return cfg


def versions(server: MlflowServer, name: str) -> dict[str, object]:
    from mlflow import MlflowClient

    return {str(mv.version): mv for mv in MlflowClient(server.uri).search_model_versions(f"name = '{name}'")}


def aliases(server: MlflowServer, name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return {a: str(v) for a, v in MlflowClient(server.uri).get_registered_model(name).aliases.items()}


@pytest.fixture
def in_project(project, monkeypatch):
    """cwd = the project (dvc.lock is read from there) with a fixed git commit for provenance."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("BRIDGERL_GIT_COMMIT", "0123abcd")
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    return project


def test_register_logs_model_with_provenance_and_is_idempotent(in_project, server, monkeypatch):
    import mlflow

    (in_project / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: bridgerl prepare\n    outs:\n"
        "    - path: data/prepared\n      md5: aaaa1111.dir\n  build-demos:\n    cmd: bridgerl build-demos\n"
        "    outs:\n    - path: data/demos\n      md5: bbbb2222.dir\n")
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-42")
    cfg = cfg_with_metric(in_project, server, "prov", 0.5)
    # outside DVC the committed lock describes other outputs (issue 24: a real model tagged with the toy's
    # hashes): no dvc.* tags
    assert not any(k.startswith("dvc.") for k in register.provenance(cfg, {"avg_accuracy": 0.5}))
    monkeypatch.setenv("DVC_STAGE", "register")  # what `dvc repro` sets for each stage's command
    res = register.run(cfg, model_dir=str(in_project / "models" / "base"))

    tags = versions(server, "prov")[res["version"]].tags
    assert tags["git_commit"] == "0123abcd" and tags["kubeflow_run_id"] == "kfp-run-42"
    assert tags["dvc.prepare.data/prepared"] == "aaaa1111.dir" and tags["dvc.build-demos.data/demos"] == "bbbb2222.dir"
    assert tags["params_hash"] == cfg.digest() and tags["method"] == cfg.train.method
    assert tags["base_model"] == "embedded"
    assert float(tags["metric.avg_accuracy"]) == 0.5 and float(tags["metric.synthetic_accuracy"]) == 0.5
    assert tags[registry.STATE_TAG] == registry.COMPLETE
    assert aliases(server, "prov") == {"challenger": res["version"]}
    assert json.loads(Path(cfg.registry.out_file).read_text())["version"] == res["version"]

    mlflow.set_tracking_uri(server.uri)
    info = mlflow.models.get_model_info(f"models:/prov/{res['version']}")
    assert info.signature.inputs.input_types()[0].name == "string"
    assert {p.name for p in info.signature.params} >= {"max_new_tokens", "do_sample"}
    assert info.saved_input_example_info is not None
    assert info.flavors["transformers"]["task"] == "text-generation"

    again = register.run(cfg, model_dir=str(in_project / "models" / "base"))
    assert again["version"] == res["version"] and again["resumed"]
    assert list(versions(server, "prov")) == [res["version"]], "a rerun registered the same model twice"

    # what `dvc repro` does after a registration: dvc.lock now records register's own output, and the
    # commit moved on; the model and its evaluation did not change, so neither does the version
    with open(in_project / "dvc.lock", "a") as f:
        f.write("  register:\n    cmd: bridgerl register\n    outs:\n    - path: metrics/register.json\n"
                "      md5: cccc3333\n")
    monkeypatch.setenv("BRIDGERL_GIT_COMMIT", "4567cdef")
    third = register.run(cfg, model_dir=str(in_project / "models" / "base"))
    assert third["version"] == res["version"] and third["resumed"]
    assert list(versions(server, "prov")) == [res["version"]], "a plain rerun of register added a version"


def test_gate_force_rollback_and_serve_champion(in_project, server):
    import mlflow

    name = "gate"
    model = str(in_project / "models" / "base")
    cfg1 = cfg_with_metric(in_project, server, name, 0.50, "registry.auto_promote=true")
    v1 = register.run(cfg1, model_dir=model)
    assert v1["promotion"]["promoted"], "the first passing version becomes champion"
    assert aliases(server, name) == {"challenger": v1["version"], "champion": v1["version"]}
    again = registry.promote(cfg1, version=v1["version"])
    assert again["reason"] == "already champion"
    assert len(registry.history(cfg1)) == 1, "promoting the champion again recorded a spurious event"

    cfg2 = cfg_with_metric(in_project, server, name, 0.40)
    v2 = register.run(cfg2, model_dir=model)["version"]
    with pytest.raises(registry.PromotionRefused) as refused:
        registry.promote(cfg2)
    assert "0.4000" in str(refused.value) and "0.5000" in str(refused.value)
    assert aliases(server, name)["champion"] == v1["version"]

    overrides = FAST + path_overrides(in_project) + registry_overrides(server, name)
    p = run_cli("promote", "-P", str(REPO / "params.yaml"), *[a for o in overrides for a in ("-S", o)],
                cwd=in_project, check=False)
    assert p.returncode == 1, p.stderr
    assert "refused" in p.stderr and "0.4000" in p.stderr and "0.5000" in p.stderr

    forced = registry.promote(cfg2, force=True)
    assert forced["promoted"] and forced["forced"] and aliases(server, name)["champion"] == v2
    assert registry.history(cfg2)[-1]["forced"] is True
    assert "bridgerl.forced_promotion" in versions(server, name)[v2].tags

    cfg3 = cfg_with_metric(in_project, server, name, 0.45, "registry.margin=0.1")
    v3 = register.run(cfg3, model_dir=model)["version"]
    with pytest.raises(registry.PromotionRefused, match="0.4500.*0.4000"):
        registry.promote(cfg3)  # better than 0.40, but not by the margin
    cfg3 = cfg_with_metric(in_project, server, name, 0.45, "registry.margin=0.05")
    assert registry.promote(cfg3, version=v3)["champion"] == v3

    assert registry.rollback(cfg3)["champion"] == v2
    assert registry.rollback(cfg3)["champion"] == v1["version"]
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        registry.rollback(cfg3)
    assert aliases(server, name)["champion"] == v1["version"]
    assert [e["action"] for e in registry.history(cfg3)] == ["promote", "promote", "promote", "rollback", "rollback"]

    mlflow.set_tracking_uri(server.uri)
    champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = champion.predict([register.INPUT_EXAMPLE, "Bo has 7 pens. Bo gives away 2 pens. How many pens does Bo have?"])
    assert len(out) == 2 and all(isinstance(t, str) and t.strip() for t in out), out


def test_server_stopped_midway_then_rerun_completes(in_project, rest_server):
    server = rest_server
    name = "midway"
    cfg = cfg_with_metric(in_project, server, name, 0.6)
    model = str(in_project / "models" / "base")
    with pytest.raises(registry.RegistryUnavailable) as err:
        register.run(cfg, model_dir=model, on_registered=lambda mv: server.stop())
    msg = str(err.value)
    assert server.uri in msg and "2 attempt(s)" in msg and "registry.max_retries=1" in msg

    server.start()
    (half,) = versions(server, name).values()
    assert half.tags[registry.STATE_TAG] == registry.PENDING and "challenger" not in aliases(server, name)
    with pytest.raises(registry.RegistryError, match="half-registered"):
        registry.promote(cfg, version=half.version)

    res = register.run(cfg, model_dir=model)
    assert res["resumed"] and res["version"] == half.version
    (done,) = versions(server, name).values()
    assert done.tags[registry.STATE_TAG] == registry.COMPLETE and float(done.tags["metric.avg_accuracy"]) == 0.6
    assert aliases(server, name) == {"challenger": half.version}


def test_abandoned_pending_version_is_cleaned_up(in_project, server):
    name = "abandoned"
    model = str(in_project / "models" / "base")

    class Killed(Exception):
        pass

    def crash(mv):
        raise Killed("killed between creating and completing the version")

    with pytest.raises(Killed):
        register.run(cfg_with_metric(in_project, server, name, 0.3), model_dir=model, on_registered=crash)
    (stale,) = versions(server, name)
    # the model was re-evaluated meanwhile: a different registration, which removes the abandoned one
    res = register.run(cfg_with_metric(in_project, server, name, 0.35, "registry.pending_grace_s=0"), model_dir=model)
    assert res["deleted_stale"] == [stale] and not res["resumed"]
    assert list(versions(server, name)) == [res["version"]]
    assert aliases(server, name) == {"challenger": res["version"]}


def test_register_refuses_metrics_not_produced_from_its_model(in_project):
    """Metrics scored from predictions, or of another model, never get a model registered."""
    model = in_project / "models" / "base"
    metrics = in_project / "metrics" / "eval.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    common = [a for o in FAST + path_overrides(in_project) + ["tracking.enabled=true"] for a in ("-S", o)]
    for content, why in [
        ({"benchmarks": {"synthetic": {"accuracy": 1.0}}, "avg_accuracy": 1.0, "backend": "predictions",
          "model_sha256": None}, "scored from predictions"),
        ({"benchmarks": {"synthetic": {"accuracy": 1.0}}, "avg_accuracy": 1.0, "model": "models/other",
          "model_sha256": "0" * 64}, "produced from model 'models/other'"),
    ]:
        metrics.write_text(json.dumps(content))
        p = run_cli("register", "--model", str(model), "-P", str(REPO / "params.yaml"), *common, cwd=in_project,
                    check=False)
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        (line,) = p.stderr.strip().splitlines()
        assert f"{metrics}: these metrics are not an evaluation of {model}" in line and why in line
        assert not (in_project / "mlruns.db").exists() and not (in_project / "metrics" / "register.json").exists()


def test_dead_server_gives_clear_error_after_bounded_retries(in_project):
    dead = f"http://127.0.0.1:{_free_port()}"
    p = run_cli("promote", "-S", f"tracking.uri={dead}", "-S", "registry.max_retries=2", "-S", "registry.backoff_s=0.1",
                cwd=in_project, check=False)
    assert p.returncode == 3, p.stderr
    assert f"MLflow tracking server {dead} is unavailable (connection refused)" in p.stderr
    assert "after 3 attempt(s)" in p.stderr
    assert p.stderr.count("retry ") == 2


def test_silent_server_times_out_with_clear_error(project):
    """A server that accepts connections but never answers: each request ends at registry.timeout_s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        accepted = []
        stop = threading.Event()

        def accept():
            s.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(s.accept()[0])
                except OSError:
                    pass

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        cfg = make_cfg(project, "tracking.enabled=true", f"tracking.uri=http://127.0.0.1:{s.getsockname()[1]}",
                       "registry.max_retries=1", "registry.backoff_s=0.1", "registry.timeout_s=1")
        try:
            with pytest.raises(registry.RegistryUnavailable, match=r"no answer within registry.timeout_s=1s"):
                registry.rollback(cfg)
        finally:
            stop.set()
            t.join()
            for c in accepted:
                c.close()
        assert len(accepted) == 2  # one request per attempt, then it gave up


def test_racing_registrations_leave_challenger_on_one_complete_version(in_project, server):
    """Two registrations of different evaluations at once (threads, one process): both versions end
    complete and `challenger` points at one of them."""
    name = "race"
    cfgs = [cfg_with_metric(in_project, server, name, acc, f"eval.metrics_file={in_project}/metrics/eval_{i}.json",
                            f"registry.out_file={in_project}/metrics/register_{i}.json")
            for i, acc in enumerate((0.55, 0.65))]
    start, results, errors = threading.Barrier(2), {}, []

    def go(i):
        try:
            start.wait()
            results[i] = register.run(cfgs[i], model_dir=str(in_project / "models" / "base"))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    registered = {r["version"] for r in results.values()}
    vs = versions(server, name)
    assert len(registered) == 2 and set(vs) == registered
    assert all(mv.tags[registry.STATE_TAG] == registry.COMPLETE for mv in vs.values())
    assert {float(vs[r["version"]].tags["metric.avg_accuracy"]) for r in results.values()} == {0.55, 0.65}
    assert len({mv.run_id for mv in vs.values()}) == 2, "both registrations logged into one run"
    assert aliases(server, name)["challenger"] in registered


def test_readme_serving_snippet_works_as_written(in_project):
    """The README's serving snippet, run as written from a project whose default local store holds a
    champion: it answers, and leaves no stray `mlflow.db` (MLflow 3's own default store)."""
    import re

    snippet = re.search(r"```python\n(import mlflow\n.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    name = re.search(r"models:/([\w-]+)@champion", snippet).group(1)
    cfg = make_cfg(in_project, "tracking.enabled=true", f"registry.model_name={name}", "registry.auto_promote=true")
    path = Path(cfg.eval.metrics_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmarks": {"synthetic": {"accuracy": 0.5}}, "avg_accuracy": 0.5,
                                "model_sha256": register.model_digest(in_project / "models" / "base")}))
    assert register.run(cfg, model_dir=str(in_project / "models" / "base"))["promotion"]["promoted"]
    assert Path(cfg.tracking.local_db) == in_project / "mlruns.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.run([sys.executable, "-c", snippet], cwd=in_project, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().startswith("[") and len(p.stdout.strip()) > 2, p.stdout
    assert not (in_project / "mlflow.db").exists()


def test_same_registration_at_once_makes_one_version(in_project, server):
    """Two registers of the same model and evaluation at once (issue 27: lookup-then-create made two
    complete versions with one registration key): they settle on one version, and a rerun removes a
    duplicate that older code left."""
    from mlflow import MlflowClient

    name = "twice"
    cfgs = [cfg_with_metric(in_project, server, name, 0.5, f"registry.out_file={in_project}/metrics/register_{i}.json")
            for i in (0, 1)]
    start, results, errors = threading.Barrier(2), {}, []

    def go(i):
        try:
            start.wait()
            results[i] = register.run(cfgs[i], model_dir=str(in_project / "models" / "base"))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    (only,) = versions(server, name)
    assert {r["version"] for r in results.values()} == {only}
    assert versions(server, name)[only].tags[registry.STATE_TAG] == registry.COMPLETE
    assert aliases(server, name) == {"challenger": only}

    # a duplicate as the old lookup-then-create left it: another complete version with the same key
    mlc = MlflowClient(server.uri)
    mv = versions(server, name)[only]
    dup = mlc.create_model_version(name, source=mv.source, run_id=mv.run_id, model_id=registry.model_id(mv),
                                   tags=dict(mv.tags))
    assert len(versions(server, name)) == 2
    again = register.run(cfgs[0], model_dir=str(in_project / "models" / "base"))
    assert again["version"] == only and again["deleted_stale"] == [str(dup.version)]
    assert list(versions(server, name)) == [only]
    exp = mlc.get_experiment_by_name(cfgs[0].tracking.experiment).experiment_id
    assert registry.model_id(versions(server, name)[only]) in {m.model_id for m in mlc.search_logged_models([exp])}


KILL_IN_CREATE_VERSION = (
    "import os, signal, sys\n"
    "from mlflow import MlflowClient\n"
    "MlflowClient.create_model_version = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
    "from bridgerl import cli\n"
    "raise SystemExit(cli.main(sys.argv[1:]))\n")


def test_killed_register_is_repaired(in_project, server):
    """A register SIGKILLed between logging the model and creating its version leaves its run RUNNING and
    a logged model no version uses (issue 27); `register --repair` cleans both, and so does a plain rerun
    (the killed process is gone: no need to wait for registry.pending_grace_s)."""
    from mlflow import MlflowClient

    name = "killed"
    cfg = cfg_with_metric(in_project, server, name, 0.5)
    args = ["register", "--model", str(in_project / "models" / "base"), "-P", str(REPO / "params.yaml"),
            *[a for o in FAST + path_overrides(in_project) + registry_overrides(server, name) for a in ("-S", o)]]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    mlc = MlflowClient(server.uri)

    def kill_once() -> tuple[str, str]:
        p = subprocess.run([sys.executable, "-c", KILL_IN_CREATE_VERSION, *args], cwd=in_project, env=env,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == -9, p.stderr[-3000:]
        exp = mlc.get_experiment_by_name(cfg.tracking.experiment).experiment_id
        (run,) = mlc.search_runs([exp], f"tags.`{registry.REGISTERED_TAG}` = '{name}' and attributes.status = 'RUNNING'")
        models = [m for m in mlc.search_logged_models([exp], filter_string=f"tags.`{registry.REGISTERED_TAG}` = '{name}'")]
        assert len(models) == 1 and not versions(server, name)
        return run.info.run_id, models[0].model_id

    run_id, model_id = kill_once()
    p = run_cli(*args, "--repair", cwd=in_project)
    out = json.loads(p.stdout)
    assert out["killed_runs"] == [run_id] and out["deleted_models"] == [model_id], out
    assert mlc.get_run(run_id).info.status == "KILLED"
    assert not [m for m in mlc.search_logged_models([mlc.get_run(run_id).info.experiment_id],
                                                    filter_string=f"tags.`{registry.REGISTERED_TAG}` = '{name}'")]
    assert not Path(cfg.registry.out_file).exists(), "--repair registered something"

    run_id, model_id = kill_once()
    res = run_cli(*args, cwd=in_project)
    res = json.loads(res.stdout)
    assert res["killed_runs"] == [run_id] and res["deleted_models"] == [model_id], res
    assert mlc.get_run(run_id).info.status == "KILLED"
    (only,) = versions(server, name)
    assert res["version"] == only and versions(server, name)[only].tags[registry.STATE_TAG] == registry.COMPLETE
    exp = mlc.get_run(run_id).info.experiment_id
    assert not mlc.search_runs([exp], f"tags.`{registry.REGISTERED_TAG}` = '{name}' and attributes.status = 'RUNNING'")
    # the registered version's own logged model is kept (its process is gone too, but a version uses it)
    kept = registry.model_id(versions(server, name)[only])
    assert kept and kept in {m.model_id for m in mlc.search_logged_models([exp])}
    assert json.loads(run_cli(*args, "--repair", cwd=in_project).stdout)["deleted_models"] == []
