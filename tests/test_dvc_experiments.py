"""DVC experiments in a temporary git repo: `dvc exp run -S` and a queued sweep over λ run the
pipeline, log to the project's MLflow store (not DVC's throw-away copies), and leave the model
registry alone (registry.register = auto), while `dvc repro` on the branch registers."""

from __future__ import annotations

import json

import pytest
import yaml
from test_dvc_pipeline import fast_params, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    import shutil
    import subprocess

    from conftest import REPO

    root = tmp_path_factory.mktemp("dvcexp") / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = REPO / f
        if f.startswith(("tests/", "docs/results/")) or f == "dvc.lock" or not src.is_file():
            continue
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, root / f)
    (root / "params.yaml").write_text(yaml.safe_dump(fast_params(["train.steps=2", "train.eval_every=0"]),
                                                     sort_keys=False))
    sh(["git", "init", "-q"], root)
    sh(["dvc", "config", "core.analytics", "false"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "init"], root)
    sh(["dvc", "repro"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "baseline"], root)
    return root


def _store(root):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlruns.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(root) -> list[str]:
    return sorted(str(v.version) for v in _store(root).search_model_versions("name = 'bridgerl-default'"))


def test_repro_on_the_branch_registers(repo):
    assert _versions(repo) == ["1"]
    assert json.loads((repo / "metrics/register.json").read_text())["registered"] is True


def test_exp_run_and_queued_sweep_leave_the_registry_alone(repo):
    out = sh(["dvc", "exp", "run", "-n", "lam03", "-S", "train.bridge.lam=0.3"], repo)
    assert "Running stage 'train'" in out.stdout, out.stdout
    reg = json.loads((repo / "metrics/register.json").read_text())
    assert reg["registered"] is False and "lam03" in reg["reason"]

    sh(["dvc", "exp", "run", "--queue", "-S", "train.bridge.lam=0.1,0.9"], repo)  # a sweep: two queued experiments
    sh(["dvc", "exp", "run", "--run-all", "-j", "1"], repo)
    show = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    lams = set()
    for rev in show:
        for exp in (rev.get("experiments") or []):
            for r in exp.get("revs", []):
                data = r.get("data") or {}
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                if params:
                    lams.add(params["train"]["bridge"]["lam"])
                    assert "metrics/eval.json" in (data.get("metrics") or {}), r
    assert {0.1, 0.3, 0.9} <= lams, show

    assert _versions(repo) == ["1"], "an experiment created a registry version"
    aliases = _store(repo).get_registered_model("bridgerl-default").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"challenger": "1"}
    # the queued runs ran in DVC's temporary copies, yet logged to this project's store
    mlc = _store(repo)
    exp_id = mlc.get_experiment_by_name("bridgerl").experiment_id
    trains = mlc.search_runs([exp_id], "tags.`bridgerl.stage` = 'train'")
    assert {r.data.params["train.bridge.lam"] for r in trains} >= {"0.1", "0.3", "0.9", "0.5"}
    assert {r.data.tags.get("dvc.exp_name") for r in trains} >= {"lam03"}
    assert not list((repo / ".dvc" / "tmp").rglob("mlruns.db"))
