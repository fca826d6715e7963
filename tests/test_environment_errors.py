"""Environment failures (issue 27 item 6): a volume that takes no more bytes while a checkpoint is written
is one line naming the checkpoint and the cause, exit 3, no traceback (unless --debug), the partial
checkpoint removed and no output published. The full volume is a real one for the process: a file-size
limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past it fails with EFBIG as one past a full
disk fails with ENOSPC)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

from conftest import FAST, REPO, path_overrides

LIMIT = 64 * 1024  # bytes per file: data and metrics fit, a checkpoint of the tiny model does not


def _run(command: str, overrides: list[str], *extra: str, limit: int = LIMIT) -> subprocess.CompletedProcess:
    over = [a for o in overrides for a in ("-S", o)]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "bridgerl", command, "-P", str(REPO / "params.yaml"), *over, *extra],
                          env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))


def _train(project) -> subprocess.CompletedProcess:
    return _run("train", [*FAST, *path_overrides(project), "train.save_every=1"])


def test_full_volume_while_checkpointing_is_one_line_and_exit_3(project):
    p = _train(project)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.count("bridgerl train: error: ") == 1, p.stderr[-3000:]
    line = p.stderr.split("bridgerl train: error: ")[1].splitlines()[0]  # (after the interrupted progress bar)
    # torch's writer reports no errno ("unexpected pos ..."): the volume is not full, so EIO, naming the path
    assert "checkpoints/train/step-000001: " in line and ("Input/output error" in line or "File too large" in line)
    assert line.endswith("--debug for the traceback)"), line
    ckpt = project / "checkpoints" / "train"
    assert not [x for x in ckpt.rglob("*") if ".tmp-" in x.name], "the partial checkpoint must be removed"
    assert not (project / "models" / "trained").exists()



def test_full_volume_in_prepare_names_the_file_and_debug_shows_the_traceback(project, tmp_path):
    out = tmp_path / "prepared"
    args = [*FAST, *path_overrides(project), f"data.out_dir={out}"]
    p = _run("prepare", args, limit=2048)
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr[-2000:]
    line = p.stderr.split("bridgerl prepare: error: ")[1].splitlines()[0]
    assert f"{out}/" in line and "File too large" in line, line
    assert not out.exists() or not [x for x in out.rglob("*") if x.is_file() and ".tmp-" not in x.name]
    debug = _run("prepare", args, "--debug", limit=2048)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "File too large" in debug.stderr
