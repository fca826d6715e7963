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


def _train(project, *extra: str) -> subprocess.CompletedProcess:
    over = [a for o in [*FAST, *path_overrides(project), "train.save_every=1"] for a in ("-S", o)]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "bridgerl", "train", "-P", str(REPO / "params.yaml"), *over, *extra],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT)))


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

    debug = _train(project, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
