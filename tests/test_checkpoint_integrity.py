"""Checkpoint integrity (issue 27): every checkpoint carries a sha256 manifest and is read with
`torch.load(weights_only=True)`; a truncated or corrupted newest checkpoint falls back to the newest
intact one (one stderr line naming it), none intact is an error naming the path, a crafted pickle
runs no code, and `train --resume --run NAME` without a checkpoint of NAME is exit 2, not a fresh run."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile

import pytest
import torch
from conftest import FAST, REPO, make_cfg, path_overrides, run_cli

from bridgerl.core.io import DataError, digest
from bridgerl.stages import train
from bridgerl.train import checkpoint

OVER = ("train.method=mixed", "train.steps=3", "train.save_every=1", "train.keep_checkpoints=3")


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(next(path.glob("*.safetensors"))))


def _stopped_at(tiny_project, root, steps: int = 2):
    """A copy of the tiny project trained `steps` of 3 steps, a checkpoint after each."""
    shutil.copytree(tiny_project, root)
    train.run(make_cfg(root, *OVER), max_steps=steps, progress=False)
    return root


def _largest_member_offset(path) -> tuple[int, int]:
    """(file offset, size) of the data of the largest member of a torch zip checkpoint (a tensor's bytes)."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_a_checkpoint_has_a_manifest_and_loads_as_plain_tensors(tiny_project, tmp_path):
    root = _stopped_at(tiny_project, tmp_path / "p", steps=1)
    ckpt = root / "checkpoints/train/step-000001"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["step"] == 1 and manifest["resume_key"] == checkpoint.resume_key(make_cfg(root, *OVER))
    assert manifest["sha256"] == {"state.pt": digest(ckpt / "state.pt")}
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)  # RNG states included
    assert state["step"] == 1 and isinstance(state["rng"]["numpy"][1], torch.Tensor)


def test_a_truncated_newest_checkpoint_falls_back_to_the_older_one(tiny_project, tmp_path, capsys):
    a = tmp_path / "a"
    shutil.copytree(tiny_project, a)
    train.run(make_cfg(a, *OVER), progress=False)  # straight through
    b = _stopped_at(tiny_project, tmp_path / "b")
    newest = b / "checkpoints/train/step-000002/state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capsys.readouterr()
    train.run(make_cfg(b, *OVER), resume=True, progress=False)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(lines) == 1 and str(newest) in lines[0] and "step-000001" in lines[0], err
    assert "resumed from step 1" in out + err
    wa, wb = _weights(a / "models/trained"), _weights(b / "models/trained")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resuming from the older checkpoint is still exact"


def test_flipped_bytes_in_a_tensor_are_caught_by_the_checksum(tiny_project, tmp_path):
    root = _stopped_at(tiny_project, tmp_path / "p", steps=1)
    ckpt_dir = root / "checkpoints/train"
    state = ckpt_dir / "step-000001/state.pt"
    offset, size = _largest_member_offset(state)
    data = bytearray(state.read_bytes())
    for i in range(offset + size // 2, offset + size // 2 + 8):
        data[i] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=r"state\.pt: sha256 does not match"):
        checkpoint.verify(state.parent)
    key = checkpoint.resume_key(make_cfg(root, *OVER))
    with pytest.raises(DataError, match=f"no intact checkpoint in {ckpt_dir}.*{state}"):
        checkpoint.load_latest(ckpt_dir, key)
    # through the command: exit 2, one line naming the file
    args = ["-P", str(REPO / "params.yaml"), *[a for o in FAST + path_overrides(root) + list(OVER) for a in ("-S", o)]]
    p = run_cli("train", "--resume", *args, cwd=root, check=False)
    assert p.returncode == 2 and str(state) in p.stderr, p.stderr[-3000:]
    assert json.loads((root / "metrics/train.json").read_text())["steps"] == 1, "it trained anyway"


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling it would create the marker file


def test_a_crafted_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    ckpt_dir = tmp_path / "checkpoints"
    ckpt = ckpt_dir / "step-000005"
    ckpt.mkdir(parents=True)
    torch.save({"resume_key": "k", "step": 5, "payload": _Evil(marker)}, ckpt / "state.pt")
    checkpoint.write_manifest(ckpt, "k", 5)  # a forged manifest matches: only weights_only protects
    assert not marker.exists()
    with pytest.raises(checkpoint.CheckpointError, match="state.pt: cannot be loaded as plain tensors"):
        checkpoint.load_latest(ckpt_dir, "k")
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.safe_load(ckpt / "state.pt")
    assert not marker.exists(), "unpickling the checkpoint ran code"


def test_resume_of_a_run_without_checkpoint_exits_2(project):
    args = ["-P", str(REPO / "params.yaml"), *[a for o in FAST + path_overrides(project) for a in ("-S", o)]]
    p = run_cli("train", "--resume", "--run", "no-such-run", *args, cwd=project, check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "runs/no-such-run/checkpoints" in lines[0] and "no checkpoint" in lines[0], p.stderr
    assert not (project / "runs/no-such-run/model").exists(), "it trained from scratch"


def test_deepspeed_checkpoints_fall_back_to_the_newest_intact_tag(tmp_path, capsys):
    """The ZeRO engine's choice of checkpoint (rank 0 verifies each tag's sha256, newest first), without DeepSpeed."""
    from types import SimpleNamespace

    from bridgerl.train.engines import DS_MARKER, DeepSpeedEngine

    root = tmp_path / "ckpt"
    for step in (1, 2):
        tag = root / f"step-{step:06d}"
        (tag / "global_step").mkdir(parents=True)
        (tag / "global_step" / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * step)
        checkpoint.write_manifest(tag, "k", step, name=DS_MARKER, world_size=1, strategy="zero2")
    (root / "latest").write_text("step-000002")
    engine = SimpleNamespace(env=SimpleNamespace(is_main=True, world_size=1))
    assert DeepSpeedEngine._intact_tag(engine, root)[0] == "step-000002"
    bad = root / "step-000002" / "global_step" / "mp_rank_00_model_states.pt"
    bad.write_bytes(bad.read_bytes()[:100])
    capsys.readouterr()
    tag, meta = DeepSpeedEngine._intact_tag(engine, root)
    assert tag == "step-000001" and meta["step"] == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "step-000001" in err[0], err
    (root / "step-000001" / DS_MARKER).unlink()
    found = DeepSpeedEngine._intact_tag(engine, root)
    assert isinstance(found, str) and f"no intact checkpoint in {root}" in found and str(bad) in found
