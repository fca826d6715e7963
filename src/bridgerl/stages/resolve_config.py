"""`bridgerl resolve-config`: the first stage. Validates the configuration and writes what each stage reads.

It runs before any other stage (each depends on its file here), so a typo in params.yaml fails here,
with the usual one-line error, before DVC removes any stage's previous outputs. Writes, atomically:
- `resolved/config.json`: the whole resolved configuration (params.yaml ← preset ← `-S` overrides);
- `resolved/<stage>.task.json`: the configuration a Kubeflow task of that stage receives
  (`task_config`: its slice and the run-level `tracking` section);
- `resolved/<stage>.json`: that stage's fingerprint (`fingerprint`): the resolved values of
  the keys it reads and the digests of the local data files it reads. DVC compares these files, so a
  stage reruns when something it reads changes (a value, a preset, a schema default, a local file)
  and for nothing else.

This module also owns the local files a configuration names (`local_inputs`): `check_paths` checks
they exist before any stage starts, `local_files` says which are a stage's dependencies.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from bridgerl.config import Config, ConfigError
from bridgerl.core import keys
from bridgerl.core.io import digest, write_json
from bridgerl.core.stage_table import RESOLVED_DIR, RUN_LEVEL, STAGES, Stage


# --------------------------------------------------------------------------------------------
# configuration slices
# --------------------------------------------------------------------------------------------
def config_slice(cfg: Config, stage: Stage) -> dict:
    """The resolved values of the keys `stage` reads (its `params`), as a nested mapping that validates
    as a configuration on its own (paths and run-level settings are set by whoever runs the stage)."""
    full = cfg.model_dump(mode="json")
    out: dict = {}
    for key in stage.params:
        keys.put(out, key, keys.get(full, key))
    return out


def task_config(cfg: Config, stage: Stage) -> dict:
    """What a Kubeflow task receives as its whole configuration: its slice plus the run-level
    sections (where to log). Nothing else reaches it, so its cache key changes only with these."""
    out = config_slice(cfg, stage)
    full = cfg.model_dump(mode="json")
    for key in RUN_LEVEL:
        keys.put(out, key, keys.get(full, key))
    return out


# --------------------------------------------------------------------------------------------
# local files the configuration names
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalInput:
    """A local path the configuration names: the key naming it, the path, the stage that reads it, and
    whether it must be there before any stage starts."""

    key: str
    path: str
    stage: str
    required: bool = True


def local_inputs(cfg: Config) -> list[LocalInput]:
    """Every local data path the configuration names (sources, a demonstration dataset, a model file)."""
    out = [LocalInput(f"data.rl_sources.{i}.path", str(s.path), "prepare")
           for i, s in enumerate(cfg.data.rl_sources) if s.kind == "local"]
    out += [LocalInput(f"eval.sources.{name}.path", str(s.path), "prepare")
            for name, s in cfg.eval.sources.items() if s.kind == "local"]
    d = cfg.demos.dataset
    if cfg.demos.source == "dataset" and d is not None and d.kind == "local":
        out.append(LocalInput("demos.dataset.path", str(d.path), "build-demos"))
    mb = cfg.model.base
    if mb != "embedded" and not mb.startswith("package:"):
        p = str(Path(mb) / cfg.model.gguf_file if cfg.model.gguf_file else Path(mb))
        out.append(LocalInput("model.base", p, "init-model", required=mb.startswith(("/", "./", "../"))))
    return out


def check_paths(cfg: Config, *, base: Path = Path(".")) -> None:
    """Local files named by the configuration must exist (checked before a stage does any work)."""
    if cfg.demos.source == "dataset" and cfg.demos.dataset is None:
        raise ConfigError("demos.dataset = None: demos.source=dataset needs a dataset")
    for x in local_inputs(cfg):
        if x.key == "model.base":
            if x.required and not Path(cfg.model.base).exists():
                raise ConfigError(f"model.base = {cfg.model.base!r}: directory not found")
        elif not (base / x.path).exists():
            raise ConfigError(f"{x.key} = {x.path!r}: file not found")
    mb = cfg.model.base
    if mb != "embedded" and (mb.startswith("package:") or mb.endswith(".gguf") or cfg.model.gguf_file):
        from bridgerl.model import source

        source.resolve(cfg.model)  # the package is installed and the file is there


def local_files(cfg: Config, stage: Stage) -> list[str]:
    """Local files this stage reads, its dependencies by content: the paths of `local_inputs` it reads (a model
    path only when it is there: a hub id is not a file), and for the stages that score, the source files of user
    reward terms (`RewardTerm.source_file`)."""
    if not stage.local_files:
        return []
    found: set[str] = set()
    if "rewards" in stage.params:
        found.update(f for t in cfg.rewards.terms if (f := t.source_file()))
    for x in local_inputs(cfg):
        if x.stage == stage.name and (x.key != "model.base" or Path(x.path).exists()):
            found.add(x.path)
    return sorted(found)


def fingerprint(cfg: Config, stage: Stage, base: Path = Path(".")) -> dict:
    """What a stage's DVC dependency file holds: its configuration slice and the digests of the local
    data files it reads, so a changed value, preset, default or file reruns it (and nothing else does)."""
    return {"stage": stage.name, "config": config_slice(cfg, stage),
            "files": {p: digest(base / p) for p in local_files(cfg, stage)}}


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------
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
