"""The local MLflow store is resolved from the project root, not the working directory."""

from __future__ import annotations

from conftest import REPO

from bridgerl.config import load_config
from bridgerl.tracking.runs import project_root, tracking_uri


def test_store_is_at_the_project_root_from_a_subdirectory(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    cfg = load_config(REPO / "params.yaml")
    assert project_root() == tmp_path
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path / 'mlruns.db'}"


def test_dvc_root_wins_over_the_working_copy(tmp_path, monkeypatch):
    """`dvc exp run --temp/--queue` runs in .dvc/tmp/exps/<copy> (which has its own params.yaml) and
    sets $DVC_ROOT to the real repository."""
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmp123"
    copy.mkdir(parents=True)
    (copy / "params.yaml").write_text("seed: 0\n")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri(load_config(copy / "params.yaml")) == f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.delenv("DVC_ROOT")
    assert tracking_uri(load_config(copy / "params.yaml")) == f"sqlite:///{copy / 'mlruns.db'}"
    abs_db = tmp_path / "elsewhere.db"
    assert tracking_uri(load_config(copy / "params.yaml", [f"tracking.local_db={abs_db}"])) == f"sqlite:///{abs_db}"
