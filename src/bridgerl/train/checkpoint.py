"""Training checkpoints: `checkpoint_dir/step-000010/{state.pt,manifest.json}`, written atomically, the newest K kept.

A checkpoint records the resume key (a digest of everything that shapes the run except its length)
so `--resume` never continues a run with a different configuration.

Integrity: `state.pt` holds only plain tensors, dicts, lists, tuples and numbers, and is read with
`torch.load(weights_only=True)`, so a crafted pickle cannot run code. `manifest.json` (written in the
same temporary directory, so it appears with the checkpoint or not at all) records the sha256 of every
file and the resume key. On resume a checkpoint whose files do not match it, or that does not load, is
skipped for the newest intact one (one line on stderr names the skipped file); none intact is an error.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from bridgerl.config import Config
from bridgerl.core.io import DataError, atomic_dir, digest, read_json, write_json, writing

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"

_LENGTH_KEYS = ("steps", "save_every", "keep_checkpoints", "eval_every", "eval_items", "out_dir",
                "checkpoint_dir", "metrics_file", "plots_file")


class CheckpointError(DataError):
    """A checkpoint that cannot be resumed from (corrupt, truncated, unsafe, missing); names the file."""


def resume_key(cfg: Config) -> str:
    d = cfg.model_dump(mode="json")
    train = {k: v for k, v in d["train"].items() if k not in _LENGTH_KEYS}
    strip = lambda sec: {k: v for k, v in d[sec].items() if k not in ("out_dir", "journal_dir")}  # noqa: E731
    blob = {"seed": d["seed"], "train": train, "model": strip("model"), "data": strip("data"), "demos": strip("demos")}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def write_manifest(ckpt: str | Path, key: str, step: int, name: str = MANIFEST_FILE, **extra) -> None:
    """`name` (manifest.json) in checkpoint directory `ckpt`, written atomically: the sha256 of each file
    in it, the resume key, the step and `extra`."""
    ckpt = Path(ckpt)
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != name)
    sums = {str(p.relative_to(ckpt)): digest(p) for p in files}
    write_json(ckpt / name, {**extra, "resume_key": key, "step": step, "sha256": sums})


def verify(ckpt: str | Path, name: str = MANIFEST_FILE) -> dict:
    """The manifest of checkpoint directory `ckpt` once every file it lists matches its sha256;
    CheckpointError naming the first file that is missing or differs."""
    ckpt = Path(ckpt)
    man = ckpt / name
    if not man.is_file():
        raise CheckpointError(f"{man}: missing (an interrupted save, or a checkpoint of an older bridgerl)")
    try:
        manifest = read_json(man)
        sums = manifest["sha256"]
    except (DataError, KeyError, TypeError) as e:
        raise CheckpointError(f"{man}: unreadable ({e})") from None
    for rel, want in sorted(sums.items()):
        p = ckpt / rel
        if not p.is_file():
            raise CheckpointError(f"{p}: missing (listed in {man})")
        if digest(p) != want:
            raise CheckpointError(f"{p}: sha256 does not match {man} (truncated or corrupted)")
    return manifest


def safe_load(path: str | Path, **kw) -> dict:
    """`torch.load(weights_only=True)`: plain tensors and containers only; anything else (a pickle that
    would import or call code) is a CheckpointError naming the file, and nothing of it runs."""
    try:
        return torch.load(path, **{"map_location": "cpu", **kw}, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        first = str(e).strip().splitlines()
        why = next((ln.strip() for ln in first if "Unsupported global" in ln), first[0] if first else type(e).__name__)
        raise CheckpointError(f"{path}: cannot be loaded as plain tensors ({why[:300]})") from None


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    root = Path(ckpt_dir)
    if not root.exists():
        return []
    return sorted((p for p in root.glob("step-*") if (p / STATE_FILE).exists()), key=lambda p: int(p.name[5:]))


def save(ckpt_dir: str | Path, step: int, state: dict, key: str, keep: int) -> Path:
    path = Path(ckpt_dir) / f"step-{step:06d}"
    with atomic_dir(path) as tmp, writing(path):
        torch.save({"resume_key": key, **state}, tmp / STATE_FILE)
        write_manifest(tmp, key, step)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def newest_intact(ckpt_dir: str | Path, load: bool = False) -> tuple[Path, dict, list[str]] | None:
    """(checkpoint directory, its manifest or with `load` its state, why each newer one was skipped) for the
    newest checkpoint that verifies (and loads); None when there is none at all; CheckpointError naming
    the newest one's problem when none is intact."""
    ckpts = list_checkpoints(ckpt_dir)
    if not ckpts:
        return None
    skipped: list[str] = []
    for ckpt in reversed(ckpts):
        try:
            got = verify(ckpt)
            if load:
                got = safe_load(ckpt / STATE_FILE)
            return ckpt, got, skipped
        except CheckpointError as e:
            skipped.append(str(e))
    raise CheckpointError(f"no intact checkpoint in {ckpt_dir} to resume from: {skipped[0]}"
                          + (f" (and {len(skipped) - 1} older)" if len(skipped) > 1 else "")
                          + "; remove it, or train without --resume to start over")


def check_key(ckpt: Path, got: str | None, key: str) -> None:
    if got != key:
        raise CheckpointError(f"{ckpt / STATE_FILE}: checkpoint was written by a different configuration "
                              f"(resume key {got} != {key}); remove {ckpt.parent} or run without --resume")


def load_latest(ckpt_dir: str | Path, key: str) -> dict | None:
    """The state of the newest intact checkpoint (None when there is none); a newer corrupt one is
    skipped with one line on stderr naming it."""
    found = newest_intact(ckpt_dir, load=True)
    if found is None:
        return None
    ckpt, state, skipped = found
    if skipped:
        print(f"bridgerl train: warning: {skipped[0]}; resuming from the older {ckpt / STATE_FILE}"
              + (f" ({len(skipped) - 1} more skipped)" if len(skipped) > 1 else ""), file=sys.stderr, flush=True)
    check_key(ckpt, state.get("resume_key"), key)
    return state


def clear(ckpt_dir: str | Path) -> None:
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def rng_state() -> dict:
    """The RNG states as plain tensors, lists and numbers (a checkpoint is read with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    s = {"torch": torch.get_rng_state(), "python": random.getstate(),
         "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    version, internal, gauss_next = s["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
