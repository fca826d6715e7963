"""Fault campaign: SIGKILL pipeline stages at seeded random points, rerun, check nothing was lost.

    python tests/fault_campaign.py --trials 24 --seed 0 [--keep DIR]

Builds the pipeline twice in temporary projects with the tiny (tests/conftest.py FAST) settings and
the default local MLflow store: once uninterrupted (the reference), once stage by stage with SIGKILLs
(each stage is killed `trials / 6` times, then run to completion: `train` with --resume, as the README's
recovery recipe does).

Half of train's and register's kills (rounded up) land in their checkpoint and registration writes
(`TARGETS`), the rest anywhere. Kill points are steps of the stage's own work, not times, so that every
kill lands inside the stage whatever the machine's speed: the stage counts its file-system writes (audit
events in its main thread: files opened for writing, renames, removals, directories made or removed,
database connections), and is killed at the k-th one. k is drawn uniformly from the writes the stage
makes *from the project's state at that trial* (a resumed stage does less work than a fresh one), counted
by a probe: the stage is run to completion on a snapshot of the project, which is then put back. Stages
are seeded and run on CPU, so the trial makes the same writes as its probe and is killed at the k-th.
After every kill and every completion it checks:

- no half-written output: each output of the killed stage is absent or byte-identical to the
  reference (never partial), and no temporary sibling survives a completed rerun;
- the completed stage's outputs equal the uninterrupted run's, byte for byte (CPU, seeded);
- the registry holds exactly one version of the model, complete, with `challenger` on it, no register run
  is left RUNNING and no logged model is without a version (the rerun repaired what the kills left);
- the demos journal only grows: every record present after a kill is still there after the rerun.

Stages run as forked children of this process (which imports the libraries once and never computes
with torch, so forking is safe): what a kill interrupts is the stage's own work, not interpreter
start-up. Prints one JSON line {trials, failures, ...}; exit 1 if any check failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true",
                  TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", BRIDGERL_GIT_COMMIT="campaign")
os.environ.pop("MLFLOW_TRACKING_URI", None)

from conftest import FAST  # noqa: E402 (after the environment above)

STAGES = ["prepare", "init-model", "build-demos", "train", "evaluate", "register"]
OUTPUTS = {  # relative to the project (params.yaml's own paths)
    "prepare": ["data/prepared"], "init-model": ["models/base"], "build-demos": ["data/demos"],
    "train": ["models/trained", "metrics/train.json"], "evaluate": ["eval", "metrics/eval.json"],
    "register": ["metrics/register.json"],
}
# outputs whose content holds wall times or run ids: compared without those fields
VOLATILE = {"metrics/train.json": ("wall_time_s", "peak_memory_mb", "state_memory_mb"),
            "metrics/register.json": ("run_id", "tracking_uri", "resumed", "deleted_stale", "promotion",
                                      "killed_runs", "deleted_models")}
OVERRIDES = [*FAST, "tracking.enabled=true", "train.steps=6", "train.save_every=1", "registry.pending_grace_s=0",
             "registry.max_retries=2", "registry.backoff_s=0.2"]
JOURNAL = "data/demos.partial"


def _preload() -> None:
    import mlflow  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from bridgerl import cli  # noqa: F401
    from bridgerl.stages import build_demos, evaluate, init_model, prepare, register, train  # noqa: F401


def _argv(stage: str) -> list[str]:
    args = [stage, "-P", str(REPO / "params.yaml"), *[a for o in OVERRIDES for a in ("-S", o)]]
    return args + (["--resume"] if stage == "train" else [])


# audit events that change the file system (or open the MLflow store): the steps a kill can land at
WRITE_EVENTS = {"os.rename", "os.replace", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.link",
                "os.symlink", "shutil.rmtree", "shutil.move", "shutil.copyfile", "shutil.copytree", "sqlite3.connect"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _is_write(event: str, args: tuple) -> bool:
    if event == "open":  # builtins.open / io.open (mode string) and os.open (flags)
        mode, flags = (args[1], args[2]) if len(args) >= 3 else (None, 0)
        return (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (mode is None and isinstance(flags, int) and bool(flags & _WRITE_FLAGS))
    return event in WRITE_EVENTS


# writes of the work each stage must survive being killed in: train's checkpoint saves (a temporary
# checkpoint directory, the state, its manifest, the rename into place; torch writes state.pt's bytes in C++,
# unseen, between the open of the directory and the manifest) and register's MLflow writes (the store, the
# logged model's artifacts, the version and its tags), as opposed to its result file
TARGETS = {"train": "checkpoint", "register": "registration"}


def _label(stage: str, event: str, args: tuple) -> str:
    where = str(args[0]) if args else ""
    if stage == "train" and "checkpoints" in where:
        return "checkpoint"
    if stage == "register" and (event == "sqlite3.connect" or "mlruns" in where):
        return "registration"
    return "other"


def _count_writes(kill_at: int | None, stage: str = "") -> dict:
    """In the stage's process: count its main thread's writes (and label each); SIGKILL itself at the
    `kill_at`-th."""
    import threading

    main, seen = threading.get_ident(), {"n": 0, "labels": []}

    def hook(event: str, args: tuple) -> None:
        if threading.get_ident() == main and _is_write(event, args):
            seen["n"] += 1
            seen["labels"].append(_label(stage, event, args))
            if seen["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    return seen


def start(project: Path, stage: str, log: Path, kill_at: int | None = None, count_to: Path | None = None) -> int:
    """Fork the stage; `kill_at`: it kills itself at that write; `count_to`: it writes its write count there."""
    pid = os.fork()
    if pid == 0:  # the child: run the stage as `bridgerl <stage>` would, then leave without cleanup
        rc = 70
        try:
            os.chdir(project)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            from bridgerl import cli

            seen = _count_writes(kill_at, stage)
            rc = cli.main(_argv(stage))
            if count_to is not None:
                count_to.write_text(json.dumps(seen["labels"]))
        except BaseException:  # noqa: BLE001 - reported through the exit status and the log
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc or 0)
    return pid


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run(project: Path, stage: str, log: Path) -> float:
    t0 = time.monotonic()
    rc = wait(start(project, stage, log))
    if rc != 0:
        raise RuntimeError(f"{stage} failed ({rc}) in {project}:\n{log.read_text()[-3000:]}")
    return time.monotonic() - t0


def probe(project: Path, stage: str, log: Path) -> list[str]:
    """The writes `stage` makes from the project's present state (a label each): run it to completion, then
    put the project back as it was (a snapshot at the same path, so that everything it records is unchanged)."""
    snap, count = project.with_name(project.name + ".snapshot"), project.with_name("writes.count")
    shutil.copytree(project, snap, symlinks=True)
    try:
        rc = wait(start(project, stage, log, count_to=count))
        if rc != 0:
            raise RuntimeError(f"{stage} failed ({rc}) in its probe run:\n{log.read_text()[-3000:]}")
        return json.loads(count.read_text())
    finally:
        shutil.rmtree(project)
        os.rename(snap, project)
        count.unlink(missing_ok=True)


def digest(path: Path, rel: str) -> str | None:
    """Content hash of an output (a file or a whole directory), None when absent."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        data = p.read_bytes()
        if rel in VOLATILE:
            obj = json.loads(data)
            data = json.dumps({k: v for k, v in obj.items() if k not in VOLATILE[rel]}, sort_keys=True).encode()
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode() + b"\0" + data)
    return h.hexdigest()


def leftovers(project: Path) -> list[str]:
    return sorted(str(p.relative_to(project)) for p in project.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def registry_state(project: Path) -> dict:
    db = project / "mlruns.db"
    if not db.exists():
        return {"versions": []}
    con = sqlite3.connect(db)
    try:
        rows = con.execute("select version from model_versions where current_stage != 'Deleted_Internal'").fetchall()
        tags = {(v, k): val for v, k, val in con.execute("select version, key, value from model_version_tags")}
        alias = dict(con.execute("select alias, version from registered_model_aliases").fetchall())
        # what a killed register leaves unless a rerun repairs it: its run RUNNING, a logged model no version uses
        running = [r for (r,) in con.execute(
            "select runs.run_uuid from runs join tags on tags.run_uuid = runs.run_uuid where runs.status = 'RUNNING'"
            " and runs.lifecycle_stage = 'active' and tags.key = 'bridgerl.stage' and tags.value = 'register'")]
        used = {src for (src,) in con.execute(
            "select source from model_versions where current_stage != 'Deleted_Internal'")}
        models = [m for (m,) in con.execute("select model_id from logged_models where lifecycle_stage = 'active'")]
    finally:
        con.close()
    versions = sorted(int(v) for (v,) in rows)
    return {"versions": versions, "states": [tags.get((v, "bridgerl.state")) for v in versions], "aliases": alias,
            "running_register_runs": running, "unused_models": [m for m in models if f"models:/{m}" not in used]}


def journal_records(project: Path) -> set[str]:
    out = set()
    for f in (project / JOURNAL).glob("*.jsonl"):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from the kill
            out.add(json.dumps(r, sort_keys=True))
    return out


def campaign(trials: int, seed: int, root: Path) -> dict:
    rng = random.Random(seed)
    ref, work = root / "reference", root / "killed"
    ref.mkdir()
    work.mkdir()
    durations, reference = {}, {}
    for stage in STAGES:
        durations[stage] = run(ref, stage, root / "reference.log")
        for rel in OUTPUTS[stage]:
            reference[rel] = digest(ref / rel, rel)
    failures: list[str] = []
    kills = {s: trials // len(STAGES) + (1 if i < trials % len(STAGES) else 0) for i, s in enumerate(STAGES)}
    done, log = 0, []
    for stage in STAGES:
        for i in range(kills[stage]):
            labels = probe(work, stage, root / "probe.log")
            writes = len(labels)
            # the first kills of train and register land in their checkpoint / registration writes, the rest anywhere
            target = TARGETS.get(stage) if i < (kills[stage] + 1) // 2 else None
            pool = [k + 1 for k, lab in enumerate(labels) if lab == target] if target else []
            at = rng.choice(pool) if pool else rng.randint(1, writes)
            before_journal = journal_records(work)
            rc = wait(start(work, stage, root / "killed.log", kill_at=at))
            done += 1
            log.append([stage, at, writes, rc, labels[at - 1]])
            where = f"trial {done}: {stage} killed at write {at} of {writes} ({labels[at - 1]}; rc {rc})"
            for rel in OUTPUTS[stage]:
                got = digest(work / rel, rel)
                if got not in (None, reference[rel]):
                    failures.append(f"{where}: {rel} is half-written (neither absent nor complete)")
            after = journal_records(work)
            if not before_journal <= after:
                failures.append(f"{where}: the demos journal lost {len(before_journal - after)} record(s)")
        try:
            run(work, stage, root / "killed.log")
        except RuntimeError as e:
            failures.append(f"{stage}: the rerun after the kills failed: {e}")
            break
        for rel in OUTPUTS[stage]:
            if digest(work / rel, rel) != reference[rel]:
                failures.append(f"{stage}: after kills and a rerun, {rel} differs from the uninterrupted run's")
        if leftovers(work):
            failures.append(f"{stage}: temporary outputs left after the rerun: {leftovers(work)}")
    reg = registry_state(work)
    if len(reg["versions"]) != 1 or reg.get("states") != ["complete"] or \
            str(reg.get("aliases", {}).get("challenger")) != str(reg["versions"][0] if reg["versions"] else None):
        failures.append(f"registry: expected one complete version with alias challenger, got {reg}")
    if reg.get("running_register_runs") or reg.get("unused_models"):
        failures.append(f"registry: killed registers left runs RUNNING or logged models no version uses: {reg}")
    if journal_records(work) != journal_records(ref):
        failures.append("demos journal: the killed project's journal differs from the uninterrupted one's")
    return {"trials": done, "interrupted": sum(k[3] == -signal.SIGKILL for k in log), "failures": len(failures),
            "killed_in": {lab: sum(k[4] == lab for k in log) for lab in ("checkpoint", "registration", "other")},
            "details": failures, "seed": seed, "kills": log,
            "kills_per_stage": kills, "reference_s": {s: round(d, 2) for s, d in durations.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="work in this directory and keep it (default: a temporary one)")
    a = ap.parse_args(argv)
    _preload()
    root = Path(a.keep or tempfile.mkdtemp(prefix="bridgerl-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        result = campaign(a.trials, a.seed, root)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
