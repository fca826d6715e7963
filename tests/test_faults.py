"""Faults around a stage (issue 15): a dead or silent tracking server, a second process on the same
outputs, the process that started a stage dying. Real `bridgerl` processes on the tiny project."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FAST, REPO, path_overrides, run_cli

from bridgerl.core import locks

STAGES = ["prepare", "init-model", "build-demos", "train", "evaluate", "register"]


def _args(project: Path, *extra: str) -> list[str]:
    return ["-P", str(REPO / "params.yaml"),
            *[a for o in FAST + path_overrides(project) + list(extra) for a in ("-S", o)]]


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".bridgerl.lock")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def _accept(self):
        while not self.stop.is_set():
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                pass

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


# every stage against a dead port; a silent server (each attempt waits registry.timeout_s) on two of them
@pytest.mark.parametrize("stage, server", [(s, "dead") for s in STAGES] + [("prepare", "silent"), ("train", "silent")])
def test_unreachable_tracking_server_fails_the_stage_before_it_writes(project, stage, server):
    (project / "metrics").mkdir(exist_ok=True)
    (project / "metrics" / "eval.json").write_text('{"benchmarks": {}, "avg_accuracy": 0.0}')
    (project / "models" / "trained").mkdir(parents=True, exist_ok=True)
    before = _files(project)
    with SilentServer() if server == "silent" else _Dead() as s:
        p = run_cli(stage, *_args(project, "tracking.enabled=true", f"tracking.uri={s.uri}", "registry.max_retries=1",
                                  "registry.backoff_s=0.1", "registry.timeout_s=1"),
                    cwd=project, check=False, timeout=120)
    assert p.returncode == 3, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    why = "connection refused" if server == "dead" else "no answer within registry.timeout_s=1s"
    assert last.startswith(f"bridgerl {stage}: error: MLflow tracking server {s.uri} is unavailable ({why})"), p.stderr
    assert "after 2 attempt(s)" in last and "Traceback" not in p.stderr
    assert _files(project) == before, "the stage wrote before finding the server dead"


class _Dead:
    def __enter__(self):
        self.uri = f"http://127.0.0.1:{_free_port()}"
        return self

    def __exit__(self, *exc):
        pass


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


def _wait_for_lock(output: Path, pid: int | None = None, timeout: float = 120) -> str:
    """The holder line once a live process (`pid`, if given) holds the lock on `output`: until then the file
    may still name an earlier holder of the session's shared project that was killed."""
    lp = locks.lock_path(output)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = lp.read_text().strip() if lp.exists() else ""
        if line.startswith("pid ") and _running(int(line.split()[1])) and pid in (None, int(line.split()[1])):
            return line
        time.sleep(0.2)
    raise AssertionError(f"no live process (pid {pid}) took {lp}: {lp.read_text() if lp.exists() else 'no file'}")


def _train_cmd(project: Path) -> list[str]:
    return [sys.executable, "-m", "bridgerl", "train", *_args(project, "train.steps=400", "train.save_every=1")]


def test_second_train_on_the_same_outputs_fails_at_once(project):
    first = subprocess.Popen(_train_cmd(project), cwd=project, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        holder = _wait_for_lock(project / "checkpoints" / "train", first.pid)
        assert "`bridgerl train`" in holder
        p = run_cli("train", *_args(project, "train.steps=400"), cwd=project, check=False)
        assert p.returncode == 2, p.stderr
        (line,) = p.stderr.strip().splitlines()
        assert line.startswith("bridgerl train: error: ") and "in use by pid" in line and f"pid {first.pid}" in line
        assert first.poll() is None, "the second run disturbed the first"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the kernel dropped the killed run's lock: the next run may start (it fails later, on purpose, at config)
    p = run_cli("train", *_args(project, "train.prompt_batch=100000"), cwd=project, check=False)
    assert p.returncode == 2 and "in use" not in p.stderr and "train.prompt_batch" in p.stderr


PARENT = """
import subprocess, sys, time
cmd = sys.argv[2:]
if sys.argv[1] == "shell":
    import shlex
    cmd = ["sh", "-c", " ".join(map(shlex.quote, cmd))]   # how DVC runs a stage's cmd
child = subprocess.Popen(cmd, stderr=open("child.err", "w"), stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize("how", ["direct", "shell"])
def test_stage_stops_when_its_parent_dies(project, how):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, how, *_train_cmd(project)], cwd=project, env=_env(),
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        holder = _wait_for_lock(project / "models" / "trained")
        pid = int(holder.split()[1])
        time.sleep(2)  # well into training
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.2)
        assert not _running(pid), "the stage kept running after its parent died"
    finally:
        with_group = [parent.pid]
        for g in with_group:
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass
    err = (project / "child.err").read_text()
    assert "exited; stopping" in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    leftovers = [p.name for p in (project / "models").iterdir() if ".tmp-" in p.name]
    assert not leftovers, "an interrupted stage left a temporary output"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
