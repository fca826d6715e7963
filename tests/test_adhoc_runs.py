"""Ad-hoc commands (a smoke `train --max-steps`, `compare`) get their own run directory under runs/
and leave the pipeline's DVC-tracked outputs alone (issue 15)."""

from __future__ import annotations

import json
import re

from conftest import FAST, REPO, path_overrides, run_cli


def _args(project, *extra):
    return ["-P", str(REPO / "params.yaml"), *[a for o in FAST + path_overrides(project) + list(extra)
                                               for a in ("-S", o)]]


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_smoke_train_and_its_resume_use_a_run_directory(project):
    # what `dvc repro` left: a trained model, its checkpoints and metrics
    for d in ("models/trained", "checkpoints/train", "metrics"):
        (project / d).mkdir(parents=True, exist_ok=True)
    (project / "models/trained/config.json").write_text("{}")
    (project / "checkpoints/train/marker").write_text("full run")
    (project / "metrics/train.json").write_text('{"steps": 300}')
    pipeline = {d: _snapshot(project / d) for d in ("models/trained", "checkpoints/train", "metrics")}

    p = run_cli("train", "--max-steps", "2", *_args(project), cwd=project)
    run = re.search(r"ad-hoc run '(train-[\d-]+)': outputs in runs/\1/", p.stderr).group(1)
    assert json.loads(p.stdout)["steps"] == 2, "stdout holds the JSON result and nothing else"
    assert "FutureWarning" not in p.stderr, "a known-harmless warning was not silenced"
    root = project / "runs" / run
    assert (root / "model" / "config.json").is_file() and json.loads((root / "train.json").read_text())["steps"] == 2
    assert [c.name for c in (root / "checkpoints").glob("step-*")] == ["step-000002"]

    p = run_cli("train", "--resume", "--run", run, *_args(project), cwd=project)
    assert "resumed from step 2" in p.stderr and json.loads(p.stdout)["steps"] == 3
    assert json.loads((root / "train.json").read_text())["steps"] == 3
    assert {d: _snapshot(project / d) for d in pipeline} == pipeline, "an ad-hoc run changed the pipeline's outputs"


def test_compare_writes_a_new_run_directory_not_the_committed_report(project):
    p = run_cli("compare", "--methods", "sft", "--seeds", "0", *_args(project, "train.eval_every=1"), cwd=project)
    m = re.fullmatch(r"report: (runs/compare-[\d-]+)/report.md\n", p.stdout)
    assert m, p.stdout
    assert (project / m.group(1) / "report.md").is_file() and (project / m.group(1) / "results.json").is_file()
    assert not (project / "docs").exists()
