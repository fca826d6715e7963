"""`bridgerl resolve-config`: the first stage. Validates the configuration and writes what each stage reads.

It runs before any other stage (each depends on its file here), so a typo in params.yaml fails here,
with the usual one-line error, before DVC removes any stage's previous outputs. Writes, atomically:
- `resolved/config.json`: the whole resolved configuration (params.yaml ← preset ← `-S` overrides);
- `resolved/<stage>.task.json`: the configuration a Kubeflow task of that stage receives
  (`contracts.task_config`: its slice and the run-level `tracking` section);
- `resolved/<stage>.json`: that stage's fingerprint (`contracts.fingerprint`): the resolved values of
  the keys it reads and the digests of the local data files it reads. DVC compares these files, so a
  stage reruns when something it reads changes (a value, a preset, a schema default, a local file)
  and for nothing else.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bridgerl.config import Config
from bridgerl.core.io import write_json
from bridgerl.stages.contracts import RESOLVED_DIR, STAGES, fingerprint, local_files, task_config


def unlisted_files(cfg: Config, dvc_yaml: Path = Path("dvc.yaml")) -> list[tuple[str, str]]:
    """(stage, file) for local data files the configuration names but dvc.yaml does not list as deps."""
    if not dvc_yaml.exists():
        return []
    import yaml

    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    return [(name, f) for name, stage in STAGES.items() for f in local_files(cfg, stage)
            if name in stages and f not in (stages[name].get("deps") or [])]


def run(cfg: Config, out_dir: str | Path = RESOLVED_DIR, tasks: bool = False) -> dict[str, str]:
    """Write the resolved configuration and every stage's fingerprint (and, with `tasks`, every
    Kubeflow task's configuration); returns the paths written."""
    out = Path(out_dir)
    for stage, f in unlisted_files(cfg):  # still a dependency through the fingerprint; only `dvc status` misses it
        print(f"bridgerl resolve-config: note: {f} is not listed in dvc.yaml's {stage} deps, so `dvc status` "
              "shows its changes only after this stage ran; run `bridgerl generate` to list it", file=sys.stderr)
    prints = {name: fingerprint(cfg, stage) for name, stage in STAGES.items()}  # reads every file first
    written = {"config": out / "config.json"}
    write_json(written["config"], cfg.model_dump(mode="json"))
    for name, fp in prints.items():
        written[name] = out / f"{name}.json"
        write_json(written[name], fp)
        if tasks:
            written[f"{name}.task"] = out / f"{name}.task.json"
            write_json(written[f"{name}.task"], task_config(cfg, STAGES[name]))
    return {k: str(v) for k, v in written.items()}
