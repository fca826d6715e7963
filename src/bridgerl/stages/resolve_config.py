"""`bridgerl resolve-config`: the first stage. Validates the configuration and writes what each stage reads.

It runs before any other stage (each depends on its file here), so a typo in params.yaml fails here,
with the usual one-line error, before DVC removes any stage's previous outputs. Writes, atomically:
- `resolved/config.json`: the whole resolved configuration (params.yaml ← preset ← `-S` overrides);
- `resolved/<stage>.json`: that stage's fingerprint (`contracts.fingerprint`): the resolved values of
  the keys it reads and the digests of the local data files it reads. DVC compares these files, so a
  stage reruns when something it reads changes (a value, a preset, a schema default, a local file)
  and for nothing else.
"""

from __future__ import annotations

from pathlib import Path

from bridgerl.config import Config
from bridgerl.io import write_json
from bridgerl.stages.contracts import RESOLVED_DIR, STAGES, fingerprint


def run(cfg: Config, out_dir: str | Path = RESOLVED_DIR) -> dict[str, str]:
    out = Path(out_dir)
    prints = {name: fingerprint(cfg, stage) for name, stage in STAGES.items()}  # reads every file first
    write_json(out / "config.json", cfg.model_dump(mode="json"))
    for name, fp in prints.items():
        write_json(out / f"{name}.json", fp)
    return {"config": str(out / "config.json"), **{n: str(out / f"{n}.json") for n in prints}}
