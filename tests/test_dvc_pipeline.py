"""`dvc repro` end to end in a temporary git repo: outputs, MLflow runs, no-op rerun, partial rerun,
push/pull through a local-folder DVC remote, a config typo that deletes nothing, outputs restored by
`dvc checkout`, and a local data file as a dependency of prepare."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FAST, REPO

from bridgerl.config import apply_override, parse_override

pytestmark = pytest.mark.slow

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def fast_params(extra: list[str] = ()) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for o in FAST + ["tracking.enabled=true", "train.eval_every=2", "train.steps=4", *extra]:
        apply_override(raw, *parse_override(o))
    return raw


def md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def make_repo(root: Path, params: dict) -> Path:
    """This checkout's tracked files (no tests, results or dvc.lock) in a fresh git repo."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith(("tests/", "docs/results/")) or f in ("dvc.lock",):
            continue
        src = REPO / f
        if not src.is_file():
            continue
        dst = root / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], root)
    sh(["dvc", "config", "core.analytics", "false"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "init"], root)
    return root


def status_stages(out: str) -> set[str]:
    """Stage names `dvc status` reports as changed."""
    return {line[:-1] for line in out.splitlines() if line.endswith(":") and not line[:1].isspace()}


def ran_stages(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = make_repo(tmp_path_factory.mktemp("dvc") / "repo", fast_params())
    sh(["dvc", "repro"], root)
    return root


def test_outputs_and_tracking(repo):
    import json

    import mlflow
    from transformers import AutoModelForCausalLM

    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert 0.0 <= ev["avg_accuracy"] <= 1.0 and ev["benchmarks"]["synthetic"]["n"] > 0
    tr = json.loads((repo / "metrics/train.json").read_text())
    assert tr["steps"] == 4 and tr["method"] == "bridge"
    model = AutoModelForCausalLM.from_pretrained(repo / "models/trained")
    assert not [k for k in model.state_dict() if "lora" in k]
    assert (repo / "dvc.lock").exists()

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["bridgerl"], output_format="list")
    stages = {r.data.tags.get("bridgerl.stage"): r for r in runs}
    assert {"pipeline", "prepare", "init-model", "build-demos", "train", "evaluate", "register"} <= set(stages)
    parent = stages["pipeline"].info.run_id
    for s in ("prepare", "train", "evaluate", "register"):
        assert stages[s].data.tags["mlflow.parentRunId"] == parent
        assert len(stages[s].data.tags["mlflow.source.git.commit"]) == 40
    client = mlflow.MlflowClient()
    hist = client.get_metric_history(stages["train"].info.run_id, "reward_mean")
    assert [m.step for m in hist] == [1, 2, 3, 4]
    assert stages["train"].data.params["train.method"] == "bridge"


def test_second_repro_is_noop(repo):
    """Only resolve-config runs (always: it reads local files DVC cannot list); its slices are unchanged."""
    out = sh(["dvc", "repro"], repo).stdout
    assert ran_stages(out) == {"resolve-config"}, out
    st = sh(["dvc", "status"], repo).stdout
    assert status_stages(st) <= {"resolve-config"}, st


def test_config_typo_deletes_no_output(repo):
    """A typo fails in resolve-config, before DVC removes any stage's outputs."""
    watched = ["metrics/train.json", "metrics/eval.json", "metrics/register.json", "plots/train_curve.csv",
               "models/trained/config.json", "data/prepared/rl_train.jsonl"]
    before = {p: md5(repo / p) for p in watched}
    good = (repo / "params.yaml").read_text()
    raw = fast_params()
    raw["train"]["stpes"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    (repo / "params.yaml").write_text(good)
    assert p.returncode != 0
    assert "train.stpes = 5: unknown key" in p.stdout + p.stderr
    assert ran_stages(p.stdout) == {"resolve-config"}, p.stdout
    assert {q: md5(repo / q) for q in watched} == before
    # the failed stage's own outputs (the slices) come back from the cache
    sh(["dvc", "checkout"], repo)
    assert (repo / "resolved" / "train.json").exists()


def test_metrics_and_plots_restored_by_checkout(repo):
    files = ["metrics/train.json", "metrics/eval.json", "metrics/register.json", "plots/train_curve.csv",
             "resolved/train.json"]
    before = {p: md5(repo / p) for p in files}
    for p in files:
        (repo / p).unlink()
    sh(["dvc", "checkout"], repo)
    assert {p: md5(repo / p) for p in files} == before


def test_train_param_change_reruns_only_downstream(repo):
    (repo / "params.yaml").write_text(yaml.safe_dump(fast_params(["train.steps=2"]), sort_keys=False))
    out = sh(["dvc", "repro"], repo).stdout
    assert ran_stages(out) == {"resolve-config", "train", "evaluate", "register"}, out


def test_push_pull_local_remote(repo, tmp_path):
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-f", "-d", "local", str(remote)], repo)
    sh(["dvc", "push"], repo)
    weights = next((repo / "models/trained").glob("*.safetensors"))
    before = md5(weights)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "models")
    shutil.rmtree(repo / "data")
    sh(["dvc", "pull"], repo)
    assert md5(weights) == before
    assert (repo / "data/prepared/rl_train.jsonl").exists() and (repo / "data/demos/demos.jsonl").exists()


def test_readme_recovery_recipe_after_dvc_is_killed_during_training(repo):
    """Kill `dvc repro` during training: its `bridgerl train` child stops too (instead of running on
    unseen); then the README's recovery commands, run as written, finish the pipeline."""
    import re
    import signal
    import time

    from bridgerl.core import locks

    (repo / "params.yaml").write_text(yaml.safe_dump(fast_params(["train.steps=40", "train.save_every=1"]),
                                                     sort_keys=False))
    env = {**os.environ, **GIT_ENV, "PYTHONPATH": str(REPO / "src")}
    with open(repo.parent / "killed-repro.log", "w") as log:
        dvc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    lock = locks.lock_path(repo / "models" / "trained")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list((repo / "checkpoints" / "train").glob("step-*"))) < 2:
        assert dvc.poll() is None, (repo.parent / "killed-repro.log").read_text()[-3000:]
        time.sleep(0.2)
    train_pid = int(lock.read_text().split()[1])
    os.kill(dvc.pid, signal.SIGKILL)  # the dvc process only, as a closed terminal or an OOM kill would
    dvc.wait()
    def running(pid: int) -> bool:  # (an exited child of the killed dvc may stay a zombie: not running)
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and running(train_pid):
        time.sleep(0.2)
    stopped = not running(train_pid)
    if not stopped:
        os.killpg(dvc.pid, signal.SIGKILL)
    assert stopped, "bridgerl train kept running after dvc was killed"

    readme = (REPO / "README.md").read_text()
    block = re.search(r"If a `dvc repro` is stopped during training.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands[0].startswith("bridgerl train --resume") and commands[1] == "dvc commit -f train"
    outputs = [subprocess.run(c, shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL) for c in commands]
    for c, p in zip(commands, outputs):
        assert p.returncode == 0, f"{c}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "resumed from step" in outputs[0].stderr
    import json

    assert json.loads((repo / "metrics/train.json").read_text())["steps"] == 40
    assert status_stages(sh(["dvc", "status"], repo).stdout) <= {"resolve-config"}  # always runs


def test_local_data_file_is_a_dependency_of_prepare(tmp_path):
    """A changed local file named in data.rl_sources shows prepare changed and reruns it (only it)."""
    src = tmp_path / "repo" / "mydata" / "mine.jsonl"
    src.parent.mkdir(parents=True)

    def write(k: int) -> None:
        rows = [{"id": f"q{i}", "problem": f"What is {i} + {k}?", "answer": str(i + k)} for i in range(20)]
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(1)
    params = fast_params(["data.rl_sources=[{name: mine, kind: local, path: mydata/mine.jsonl}]"])
    root = make_repo(tmp_path / "repo", params)
    sh([sys.executable, "-m", "bridgerl", "generate"], root)  # lists the file among prepare's deps
    assert "mydata/mine.jsonl" in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["prepare"]["deps"]
    assert ran_stages(sh(["dvc", "repro", "prepare"], root).stdout) == {"resolve-config", "prepare"}
    assert "prepare" not in status_stages(sh(["dvc", "status", "prepare"], root).stdout)
    write(2)
    st = sh(["dvc", "status", "prepare"], root).stdout
    assert "mydata/mine.jsonl" in st and "prepare" in status_stages(st), st
    rows = (root / "data/prepared/rl_train.jsonl").read_text()
    out = sh(["dvc", "repro", "prepare"], root).stdout
    assert ran_stages(out) == {"resolve-config", "prepare"}, out
    assert (root / "data/prepared/rl_train.jsonl").read_text() != rows
    # without the listing (dvc.yaml not regenerated), the fingerprint in resolved/prepare.json still reruns it
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    dvc["stages"]["prepare"]["deps"].remove("mydata/mine.jsonl")
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    assert "mydata/mine.jsonl is not listed in dvc.yaml's prepare deps" in sh(["dvc", "repro", "prepare"], root).stderr
    write(3)
    assert ran_stages(sh(["dvc", "repro", "prepare"], root).stdout) == {"resolve-config", "prepare"}


def test_a_reward_file_is_a_dependency_of_the_stages_that_score(repo):
    """A user's reward term in params.yaml: `bridgerl generate` lists its file among the deps of build-demos,
    train and evaluate; editing the file reruns them (and register), nothing upstream."""
    (repo / "my_rewards.py").write_text("def fmt(output, answer, row):\n    return 1.0 if '\\\\boxed{' in output else 0.0\n")
    terms = ("rewards.terms=[{name: correct, function: by_data_source, correctness: true}, "
             "{name: fmt, function: 'my_rewards.py:fmt', weight: 0.1}]")
    (repo / "params.yaml").write_text(yaml.safe_dump(fast_params([terms]), sort_keys=False))
    sh([sys.executable, "-m", "bridgerl", "generate"], repo)
    deps = {name: s.get("deps", []) for name, s in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].items()}
    assert {n for n, d in deps.items() if "my_rewards.py" in d} == {"build-demos", "train", "evaluate"}
    out = sh(["dvc", "repro"], repo).stdout
    assert ran_stages(out) == {"resolve-config", "build-demos", "train", "evaluate", "register"}, out
    assert "reward/fmt" in (repo / "plots/train_curve.csv").read_text().splitlines()[0]
    (repo / "my_rewards.py").write_text("def fmt(output, answer, row):\n    return 0.5\n")
    st = sh(["dvc", "status"], repo).stdout
    assert "my_rewards.py" in st and {"build-demos", "train", "evaluate"} <= status_stages(st), st
    out = sh(["dvc", "repro"], repo).stdout  # (a constant term shifts every reward alike: register may see no change)
    assert {"resolve-config", "build-demos", "train", "evaluate"} <= ran_stages(out), out
    assert json.loads((repo / "metrics/train.json").read_text())["reward/fmt_last10"] == 0.5
